"""``dyncnn_gym.policies``: one adapter turns anything into a routing policy, and every face uses it.

Its torch form acts exactly as the SB3 model's own ``predict(deterministic=True)`` (every algorithm
with ``Discrete`` actions), ensembles and cost-biased policies route alike in ``evaluate`` and in an
exported model, a live (uncopied) policy follows its model's training, and the lean calls of the heads
(functional layers, no mask when every action is allowed) give the values of the module calls.
"""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from conftest import load_test_data, make_net
from torch import nn

import dyncnn_gym
from dyncnn_gym.policies import (
    CostBiasedPolicy,
    ModuleHead,
    Policy,
    RecurrentHead,
    ScoreHead,
    _choose,
    _choose_any,
    as_policy,
)
from dyncnn_gym.routed import export
from dyncnn_gym.sb3 import make_vec_env

ENV = "DynChannel-v0"


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _kwargs(**kw) -> dict:
    return {"dataset": load_test_data("user12"), "backbone": make_net("vgg", "user12"), **kw}


def _model(algo_name: str, steps: int = 64, **kw):
    import sb3_contrib
    import stable_baselines3

    algo = getattr(stable_baselines3, algo_name, None) or getattr(sb3_contrib, algo_name)
    venv = make_vec_env(ENV, n_envs=4, seed=0, **_kwargs(**kw))
    if algo_name in ("DQN", "QRDQN"):
        model = algo("MlpPolicy", venv, learning_starts=0, train_freq=4, batch_size=16, device="cpu", seed=0)
    elif algo_name == "A2C":
        model = algo("MlpPolicy", venv, n_steps=8, device="cpu", seed=0)
    elif algo_name == "ARS":
        model = algo("LinearPolicy", venv, n_delta=2, device="cpu", seed=0)
    elif algo_name == "RecurrentPPO":
        model = algo("MlpLstmPolicy", venv, n_steps=16, batch_size=64, n_epochs=1, device="cpu", seed=0)
    else:
        model = algo("MlpPolicy", venv, n_steps=16, batch_size=64, n_epochs=1, device="cpu", seed=0)
    return model.learn(steps)


def _obs(model, n: int = 64, seed: int = 0) -> np.ndarray:
    d = model.observation_space.shape[0]
    return np.random.default_rng(seed).uniform(-1, 1, (n, d)).astype(np.float32)


@pytest.mark.parametrize("algo_name", ["PPO", "A2C", "DQN", "QRDQN", "MaskablePPO", "ARS"])
def test_the_torch_form_acts_as_predict_for_every_algorithm(algo_name):
    model = _model(algo_name, steps=80 if algo_name == "ARS" else 64)
    obs = _obs(model)
    expected = model.predict(obs, deterministic=True)[0]
    for given in (model, model.policy):
        policy = as_policy(given)
        assert policy.exportable and isinstance(policy.head, ScoreHead)
        with torch.no_grad():
            got, _ = policy.act(torch.as_tensor(obs))
            masked, _ = policy.act(torch.as_tensor(obs), torch.ones((len(obs), 4), dtype=torch.bool))
        np.testing.assert_array_equal(got.numpy(), expected)
        np.testing.assert_array_equal(masked.numpy(), expected)
        np.testing.assert_array_equal(policy(obs, np.ones((len(obs), 4), dtype=bool), True), expected)
    assert not [
        m for m in as_policy(model).head.modules() if type(m).__module__.split(".")[0] in ("stable_baselines3", "sb3_contrib")
    ]


def test_a_recurrent_policy_carries_its_state_like_predict():
    model = _model("RecurrentPPO")
    policy = as_policy(model)
    assert policy.recurrent and isinstance(policy.head, RecurrentHead)
    state, sb3_state = policy.initial_state(8), None
    for step in range(3):
        obs = _obs(model, 8, seed=step)
        expected, sb3_state = model.predict(obs, state=sb3_state, episode_start=np.full(8, step == 0), deterministic=True)
        with torch.no_grad():
            got, state = policy.act(torch.as_tensor(obs), None, state)
        np.testing.assert_array_equal(got.numpy(), expected)


def test_torch_modules_callables_and_predict_objects():
    scores = nn.Sequential(nn.Linear(6, 3))
    obs = torch.randn(10, 6)
    p = as_policy(scores)
    assert isinstance(p.head, ModuleHead) and p.exportable
    with torch.no_grad():
        assert torch.equal(p.act(obs)[0], scores(obs).argmax(1))
        mask = torch.tensor([[True, False, True]] * 10)
        assert torch.equal(p.act(obs, mask)[0], scores(obs).masked_fill(~mask, float("-inf")).argmax(1))
    plain = as_policy(lambda o: np.full(len(o), 2))
    assert not plain.exportable and plain.head is None
    assert plain(np.zeros((5, 6), np.float32), np.ones((5, 3), bool), True).tolist() == [2] * 5

    class Stand:
        def predict(self, obs, state=None, episode_start=None, deterministic=True):
            return np.arange(len(obs)) % 2, None

    stand = as_policy(Stand())
    assert not stand.exportable and stand(np.zeros((4, 6), np.float32), np.ones((4, 2), bool), True).tolist() == [0, 1, 0, 1]
    with pytest.raises(TypeError, match="is not a policy; accepted: an SB3"):
        as_policy("ppo")
    with pytest.raises(TypeError, match="is not a list of SB3 models"):
        as_policy([scores])


def test_an_ensemble_and_a_cost_bias_route_alike_in_evaluate_and_export():
    models = [_model("PPO"), _model("PPO", steps=128)]
    kw = _kwargs()
    pair = CostBiasedPolicy(models, 0.4)
    obs = _obs(models[0])
    expected = (pair.scores(obs) - 0.4 * pair.cost).argmax(1).numpy()
    np.testing.assert_array_equal(pair.predict(obs)[0], expected)
    np.testing.assert_array_equal(as_policy(pair)(obs, np.ones((len(obs), 4), bool), True), expected)
    np.testing.assert_array_equal(
        as_policy(models)(obs, np.ones((len(obs), 4), bool), True), CostBiasedPolicy(models).predict(obs)[0]
    )
    result = dyncnn_gym.evaluate(pair, ENV, per_image=True, **kw)
    rn = export(pair, ENV, **kw)
    routed = rn.route(torch.as_tensor(kw["dataset"].test.images))
    np.testing.assert_array_equal(routed.actions.numpy(), result["images"]["actions"])
    np.testing.assert_array_equal(routed.flops.numpy(), result["images"]["flops"])
    assert "CostBiasedPolicy(2 models" in rn.info["policy"]
    pair.bias = -50.0  # the exported model holds a copy: unchanged
    assert torch.equal(rn.route(torch.as_tensor(kw["dataset"].test.images)).actions, routed.actions)
    assert dyncnn_gym.evaluate(pair, ENV, **kw)["flops_ratio"] > result["flops_ratio"]


def test_a_live_policy_follows_training_and_a_copy_does_not():
    model = _model("PPO")
    obs = torch.as_tensor(_obs(model))
    live, copied = as_policy(model, copy=False), as_policy(model)
    with torch.no_grad():
        before = copied.act(obs)[0]
        model.policy.action_net.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 100.0]))
        assert (live.act(obs)[0] == 3).all()
        assert torch.equal(copied.act(obs)[0], before)
    torch.manual_seed(5)
    sampled, _ = live.sample(obs.numpy(), True)
    torch.manual_seed(5)
    np.testing.assert_array_equal(sampled, model.predict(obs.numpy(), deterministic=False)[0])


def test_the_lean_head_calls_give_the_module_values():
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Flatten(), nn.Sequential(nn.Linear(7, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU()), nn.Linear(16, 4)
    )
    for kind in ("categorical", "maskable", "argmax"):
        head = ScoreHead(body, kind).eval()
        for n in (1, 33):
            obs = torch.randn(n, 7) * 3
            mask = torch.rand(n, 4) > 0.3
            mask[:, 1] = True
            with torch.no_grad():
                assert torch.equal(head.act(obs), head(obs, torch.ones((n, 4), dtype=torch.bool)))
                assert torch.equal(head.act(obs, mask), head(obs, mask))
        # copies and pickles run their own layers, not the original's
        twin = copy.deepcopy(head)
        with torch.no_grad():
            twin.body[2].bias.copy_(torch.tensor([0.0, 0.0, 1e3, 0.0]))
            assert (twin.act(torch.randn(5, 7)) == 2).all()
            assert (pickle.loads(pickle.dumps(twin)).act(torch.randn(5, 7)) == 2).all()
            assert not (head.act(torch.randn(50, 7)) == 2).all()
    # a head pickled before the cost bias existed (routed models saved by earlier versions) still loads
    old = ScoreHead(body, "categorical")
    del old.biased, old.bias
    del old._buffers["cost"]
    back = pickle.loads(pickle.dumps(old))
    obs = torch.randn(9, 7)
    with torch.no_grad():
        assert torch.equal(back.act(obs), ScoreHead(body, "categorical").act(obs))


def test_one_observation_reads_the_argmax_off_the_scores_only_when_no_rounding_can_flip_it():
    gen = torch.Generator().manual_seed(0)
    for a in (2, 4, 9):
        for scale in (1e-3, 1.0, 1e4):
            for i in range(300):
                s = torch.randn(1, a, generator=gen) * scale
                if i % 2:  # near ties
                    s[0, 1] = s[0, 0] * (1 + 1e-7 * torch.randn(1, generator=gen).item())
                full = _choose(s, torch.ones((1, a), dtype=torch.bool), True, False)
                assert torch.equal(_choose_any(s, None, True, False), full)
    assert isinstance(as_policy(as_policy(nn.Linear(3, 2))), Policy)
