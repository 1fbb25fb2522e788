"""BackboneFinetuneCallback: supervised fine-tuning of the backbone under the policy's routes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_net
from stable_baselines3 import PPO

from dyncnn_gym import callbacks
from dyncnn_gym.callbacks import BackboneFinetuneCallback, routed_logits
from dyncnn_gym.envs.core import RoutingCore
from dyncnn_gym.pretraining import pretrain
from dyncnn_gym.sb3 import make_vec_env


@pytest.fixture(scope="module")
def weak_backbone():
    return pretrain("vgg", "digits", epochs=1, progress=False, allow_chance=True, cache=False)


def test_finetuning_changes_the_backbone_and_lowers_the_routed_loss(weak_backbone):
    net = copy.deepcopy(weak_backbone)
    vec = make_vec_env("DynChannel-v0", n_envs=16, seed=0, dataset="digits", backbone=net)
    model = PPO("MlpPolicy", vec, n_steps=10, batch_size=80, n_epochs=1, seed=0)
    cb = BackboneFinetuneCallback(schedule="joint", backbone_steps=15, lr=3e-3, batch_size=64)
    core = vec.core
    x = torch.as_tensor(core.data.train.images[:256])
    y = torch.as_tensor(core.data.train.labels[:256])
    with torch.no_grad():
        before_loss = F.cross_entropy(routed_logits(core, model, x)[0], y).item()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model.learn(160 * 2, callback=cb)
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)
    # batch-norm running statistics stay frozen by default
    assert not any(k.endswith("running_mean") or k.endswith("running_var") for k in changed)
    with torch.no_grad():
        after_loss = F.cross_entropy(routed_logits(core, model, x)[0], y).item()
    assert after_loss < before_loss
    assert len(cb.history) >= 2 and all(np.isfinite(h["loss"]) for h in cb.history)


def test_alternate_schedule_waits_for_agent_rollouts(weak_backbone):
    net = copy.deepcopy(weak_backbone)
    vec = make_vec_env("DynChannel-v0", n_envs=8, seed=0, dataset="digits", backbone=net)
    model = PPO("MlpPolicy", vec, n_steps=10, batch_size=40, n_epochs=1, seed=0)
    cb = BackboneFinetuneCallback(schedule="alternate", agent_rollouts=3, backbone_steps=2, batch_size=16)
    model.learn(80 * 6, callback=cb)
    assert len(cb.history) == 2  # 6 rollouts / 3


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="schedule='sometimes'"):
        BackboneFinetuneCallback(schedule="sometimes")
    with pytest.raises(ValueError, match="bn='magic'"):
        BackboneFinetuneCallback(bn="magic")
    with pytest.raises(ValueError, match="backbone_steps=0"):
        BackboneFinetuneCallback(backbone_steps=0)
    with pytest.raises(ValueError, match="distill='yes'"):
        BackboneFinetuneCallback(distill="yes")


class _Narrowest:
    """A stand-in policy: always the narrowest width (action 0), so the widest channel group is
    used only by the full network."""

    def predict(self, obs, state=None, episode_start=None, deterministic=True):
        return np.zeros(len(obs), dtype=np.int64), None


def _callback_on(data, data_name: str, **kwargs) -> BackboneFinetuneCallback:
    core = RoutingCore("channel", 1, dataset=data, backbone=make_net("vgg", data_name, cached=False))
    cb = BackboneFinetuneCallback(core=core, batch_size=8, lr=1e-2, **kwargs)
    cb.model = _Narrowest()
    cb._on_training_start()
    return cb


@pytest.mark.parametrize("distill", [False, True])
def test_distillation_trains_the_full_network_on_labels_and_routes_on_its_probabilities(shapes_tiny, monkeypatch, distill):
    targets = []
    real = callbacks.route_loss
    monkeypatch.setattr(callbacks, "route_loss", lambda logits, y, t: targets.append(t) or real(logits, y, t))
    cb = _callback_on(shapes_tiny, "shapes", distill=distill)
    fc = cb.core.net.fc.weight
    widest = fc[:, -fc.shape[1] // 4 :].detach().clone()  # the head's weights on the widest group's channels
    cb.finetune(3)
    assert len(targets) == 3
    # the narrowest route never reads the widest group: only the full network's own loss moves it
    assert (not torch.equal(fc[:, -fc.shape[1] // 4 :], widest)) == distill
    for t in targets:
        if distill:
            assert t is not None and not t.requires_grad
            assert torch.allclose(t.sum(1), torch.ones(len(t)))
        else:
            assert t is None


def test_augmentation_shifts_every_batch_and_needs_images_of_at_least_16x16(shapes_tiny, digits_small, monkeypatch):
    shifted = []
    real = callbacks.shift_images
    monkeypatch.setattr(callbacks, "shift_images", lambda x, gen: shifted.append(x.shape) or real(x, gen))
    _callback_on(shapes_tiny, "shapes").finetune(2)
    assert shifted == []
    _callback_on(shapes_tiny, "shapes", augment=True).finetune(2)
    assert shifted == [(8, 3, 32, 32)] * 2
    with pytest.raises(ValueError, match="augment=True .* 8x8"):
        _callback_on(digits_small, "digits", augment=True)


def test_the_co_training_example_runs_and_refuses_to_shift_8x8_images():
    import subprocess
    import sys

    from conftest import REPO_ROOT

    script = REPO_ROOT / "examples" / "finetune_backbone.py"
    common = [sys.executable, str(script), "--dataset", "digits", "--timesteps", "640", "--compute-weight", "0.002"]
    out = subprocess.run(common + ["--no-augment"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "co-trained: accuracy" in out.stdout and "uniform static widths at the same FLOPs" in out.stdout
    bad = subprocess.run(common, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "augment=True" in bad.stderr and "8x8" in bad.stderr
