"""Reward shaping with the full-width continuation: a step is charged for what its decision costs
the image at once, and an episode's return moves only by a constant no action can change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_test_data, make_env, make_net, registered_ids

from dyncnn_gym.walk import Walk

IDS = [i for i in registered_ids() if i in ("DynChannel-v0", "DynSkip-v0")]
CHEAP = {"DynChannel-v0": "vgg", "DynSkip-v0": "resnet8"}


@torch.no_grad()
def continuation_term(env, index: int, prefix: list[int], loss: str, lw: float, clip: float = 5.0) -> float:
    """The classification term of image ``index`` after the actions ``prefix``, then the full width everywhere."""
    core = env.unwrapped.core
    walk = Walk(core.net, core.mode, core.images[index : index + 1])
    for a in prefix + [core.A - 1] * (core.T - len(prefix)):
        walk.step([a])
    logits = walk.logits().float()
    label = torch.tensor([int(core.labels[index])])
    if loss == "error":
        return -lw * (1.0 - float(F.softmax(logits, 1)[0, label]))
    return -lw * min(float(F.cross_entropy(logits, label)), clip)


@pytest.mark.parametrize("loss", ["error", "ce"])
@pytest.mark.parametrize("env_id", IDS)
def test_each_step_pays_the_change_of_the_continuation_term_and_the_last_one_closes_it(env_id, loss):
    kw = dict(compute_weight=0.3, loss_weight=2.0, loss=loss)
    plain = make_env(env_id, CHEAP[env_id], "shapes", **kw)
    shaped = make_env(env_id, CHEAP[env_id], "shapes", shaping="continuation", **kw)
    rng = np.random.default_rng(0)
    for seed in range(3):
        plain.reset(seed=seed)
        _, info = shaped.reset(seed=seed)
        index, actions = int(info["index"]), []
        phi = continuation_term(shaped, index, [], loss, 2.0)
        total_plain = total_shaped = 0.0
        while True:
            a = int(rng.integers(plain.action_space.n))
            _, r0, term, _, _ = plain.step(a)
            _, r1, term1, _, info = shaped.step(a)
            actions.append(a)
            assert term == term1
            nxt = 0.0 if term else continuation_term(shaped, index, actions, loss, 2.0)
            assert r1 - r0 == pytest.approx(nxt - phi, abs=1e-5)
            total_plain, total_shaped, phi = total_plain + r0, total_shaped + r1, nxt
            if term:
                break
        # the return moves by -phi(first state) only: the same for every route of this image
        assert total_shaped - total_plain == pytest.approx(-continuation_term(shaped, index, [], loss, 2.0), abs=1e-5)


def test_shaping_needs_a_known_name():
    with pytest.raises(ValueError, match=r"shaping='dense' is not a reward shaping; choose one of \['none', 'continuation'\]"):
        make_env("DynChannel-v0", "vgg", "shapes", shaping="dense")


def test_the_native_vector_envs_shape_like_the_single_env():
    import gymnasium

    data, net = load_test_data("shapes"), make_net("vgg", "shapes", 4)
    kw = dict(dataset=data, backbone=net, groups=4, loss="error", compute_weight=0.2, shaping="continuation")
    vec = gymnasium.make_vec("DynChannel-v0", num_envs=3, **kw)
    singles = [gymnasium.make("DynChannel-v0", **kw) for _ in range(3)]
    vec.reset(seed=5)
    for i, e in enumerate(singles):
        e.reset(seed=5 + i)
    rng = np.random.default_rng(1)
    for _ in range(vec.unwrapped.core.T):
        a = rng.integers(vec.single_action_space.n, size=3)
        _, r, *_ = vec.step(a)
        assert r == pytest.approx([e.step(int(a[i]))[1] for i, e in enumerate(singles)], abs=1e-6)
