"""``dyncnn_gym.export`` (module ``dyncnn_gym.routed``): a trained router and its backbone as one model.

The exported model must route exactly as the env does: the same predictions, actions and FLOPs as
``dyncnn_gym.evaluate(policy, env_id, per_image=True)`` on the same test split, for SB3 models, a
torch module, ``obs="probe"`` and a compute budget; and the same again after save -> load. Tiny data
(user12 1x12x12, digits 1x8x8) and fresh small backbones keep every test quick.
"""

from __future__ import annotations

import copy
import importlib
import json
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from conftest import load_test_data, make_net, run_subprocess
from torch import nn

import dyncnn_gym
from dyncnn_gym.routed import RoutedNet, ScoreHead, export, load
from dyncnn_gym.sb3 import make_vec_env

IDS = ("DynChannel-v0", "DynSkip-v0", "DynRoute-v0")
ARCH = {"DynChannel-v0": "vgg", "DynSkip-v0": "resnet14", "DynRoute-v0": "resnet14"}
CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))
DEVICES = ["cpu", CUDA]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _kwargs(env_id: str, data_name: str = "user12", device: str = "cpu", **kw) -> dict:
    net = make_net(ARCH[env_id], data_name)
    if device != "cpu":
        net = copy.deepcopy(net).to(device)
    return {"dataset": load_test_data(data_name), "backbone": net, "device": device, **kw}


def _obs_dim(env_id: str, **kw) -> tuple[int, int]:
    env = gymnasium.make(env_id, **kw)
    return env.observation_space.shape[0], int(env.action_space.n)


class Scores(nn.Module):
    """A random MLP ``obs [B, D] -> scores [B, A]``, made very sensitive to its input (``sin`` of
    large multiples) so that routes differ from image to image even on an untrained backbone."""

    def __init__(self, d: int, a: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, a))
        with torch.no_grad():
            self.net[0].weight.mul_(4.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.sin(50.0 * self.net(obs))


class Argmax(nn.Module):
    """``obs -> argmax of another module's scores``: integer actions ``[B]``."""

    def __init__(self, scores: nn.Module) -> None:
        super().__init__()
        self.scores = scores

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.scores(obs).argmax(1)


class IntActions(nn.Module):
    """``obs -> actions [B]``: the largest action everywhere (breaks any tight budget)."""

    def __init__(self, a: int) -> None:
        super().__init__()
        self.a = a
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.full((obs.shape[0],), self.a - 1, dtype=torch.int64, device=obs.device)


def _assert_same(routed, result, full: int) -> None:
    """The exported model's routing equals evaluate's per-image arrays, exactly."""
    im = result["images"]
    np.testing.assert_array_equal(routed.logits.argmax(1).cpu().numpy(), im["prediction"])
    np.testing.assert_array_equal(routed.actions.numpy(), im["actions"])
    np.testing.assert_array_equal(routed.flops.numpy(), im["flops"])
    assert routed.flops.dtype == torch.int64 and routed.actions.dtype == torch.int64
    np.testing.assert_allclose(routed.flops_ratio.numpy(), im["flops"] / full)
    assert result["flops_ratio"] == pytest.approx(float(routed.flops_ratio.mean()))


def _check_against_evaluate(policy, env_id: str, **kw) -> RoutedNet:
    result = dyncnn_gym.evaluate(policy, env_id, per_image=True, **kw)
    rn = export(policy, env_id, **kw)
    images = torch.as_tensor(kw["dataset"].test.images).to(rn.device)
    routed = rn.route(images)
    _assert_same(routed, result, rn.full)
    assert rn.last is routed and torch.equal(rn(images), routed.logits)
    return rn


def _ppo(env_id: str, algo=None, steps: int = 128, **kw):
    from stable_baselines3 import PPO

    algo = algo or PPO
    venv = make_vec_env(env_id, n_envs=4, seed=0, **kw)
    m = algo("MlpPolicy", venv, n_steps=16, batch_size=64, n_epochs=1, device="cpu", seed=0)
    return m.learn(steps)


# -- equivalence with evaluate ------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", IDS)
def test_ppo_export_matches_evaluate_and_predict(env_id):
    kw = _kwargs(env_id, "digits")
    model = _ppo(env_id, **kw)
    rn = _check_against_evaluate(model, env_id, **kw)
    assert "PPO" in rn.info["policy"]
    # the head alone is model.predict(deterministic=True) on any observation
    obs = np.random.default_rng(0).uniform(-1, 1, (64, rn.obs_dim)).astype(np.float32)
    ours = rn.head(torch.as_tensor(obs), torch.ones((64, rn.A), dtype=torch.bool)).numpy()
    np.testing.assert_array_equal(ours, model.predict(obs, deterministic=True)[0])
    # no SB3 object is kept
    assert not [type(m) for m in rn.modules() if type(m).__module__.split(".")[0] in ("stable_baselines3", "sb3_contrib")]


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_torch_module_export_matches_evaluate(env_id, device):
    kw = _kwargs(env_id, "user12", device)
    d, a = _obs_dim(env_id, **kw)
    policy = Scores(d, a).to(device)
    rn = _check_against_evaluate(policy, env_id, **kw)
    assert rn.device.type == device
    assert rn.last.actions.unique(dim=0).shape[0] > 1, "the test policy should route images differently"
    # a module that returns integer actions [B] instead of scores
    as_ints = _check_against_evaluate(Argmax(policy), env_id, **kw)
    assert torch.equal(as_ints.last.actions, rn.last.actions)


@pytest.mark.parametrize("algo_name", ["DQN", "QRDQN", "A2C", "RecurrentPPO"])
def test_other_sb3_algorithms_match_evaluate(algo_name):
    import sb3_contrib
    import stable_baselines3

    algo = getattr(stable_baselines3, algo_name, None) or getattr(sb3_contrib, algo_name)
    env_id = "DynSkip-v0" if algo_name in ("QRDQN", "A2C") else "DynChannel-v0"
    kw = _kwargs(env_id, "user12")
    venv = make_vec_env(env_id, n_envs=4, seed=0, **kw)
    if algo_name in ("DQN", "QRDQN"):
        model = algo("MlpPolicy", venv, learning_starts=0, train_freq=4, batch_size=16, device="cpu", seed=0)
    elif algo_name == "A2C":
        model = algo("MlpPolicy", venv, n_steps=8, device="cpu", seed=0)
    else:
        model = algo("MlpLstmPolicy", venv, n_steps=16, batch_size=64, n_epochs=1, device="cpu", seed=0)
    model.learn(64)
    rn = _check_against_evaluate(model, env_id, **kw)
    assert algo_name in rn.info["policy"]
    assert rn.recurrent == (algo_name == "RecurrentPPO")


@pytest.mark.parametrize("env_id", IDS)
def test_probe_observations_are_the_envs(env_id):
    kw = _kwargs(env_id, "user12", obs="probe")
    d, a = _obs_dim(env_id, **kw)
    rn = _check_against_evaluate(Scores(d, a, seed=1), env_id, **kw)
    assert rn.obs_mode == "probe" and rn.obs_dim == d
    # observation by observation along a mixed route, against the env's own
    from dyncnn_gym.envs.core import RoutingCore
    from dyncnn_gym.envs.routing import mode_of
    from dyncnn_gym.walk import Walk

    core = RoutingCore(mode_of(env_id), 1, **kw)
    x = torch.as_tensor(kw["dataset"].test.images)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        walk = Walk(core.net, core.mode, x)
        while not walk.done:
            np.testing.assert_array_equal(rn.observe(walk).numpy(), core.observe(walk))
            walk.step(rng.integers(0, core.A, len(walk)))


@pytest.mark.parametrize("env_id", IDS)
def test_budget_masks_like_the_env(env_id):
    from sb3_contrib import MaskablePPO

    kw = _kwargs(env_id, "user12")
    free = _check_against_evaluate(Scores(*_obs_dim(env_id, **kw), seed=2), env_id, **kw)
    full = free.last
    cheapest = free.table.path_flops([0] * free.T) / free.full
    budget = max(float(np.quantile(full.flops_ratio.numpy(), 0.3)), cheapest + 1e-6)
    kwb = {**kw, "budget": budget}
    d, a = _obs_dim(env_id, **kwb)
    rn = _check_against_evaluate(Scores(d, a, seed=2), env_id, **kwb)
    assert (rn.last.flops_ratio <= budget + 1e-9).all()
    assert not torch.equal(rn.last.actions, full.actions), "the budget should change some routes"
    model = _ppo(env_id, algo=MaskablePPO, steps=64, **kwb)
    rn = _check_against_evaluate(model, env_id, **kwb)
    assert "maskable" in rn.info["policy"] and (rn.last.flops_ratio <= budget + 1e-9).all()
    # an integer policy that breaks the budget fails like the env does
    greedy = IntActions(a)
    with pytest.raises(ValueError, match="breaks the compute budget"):
        dyncnn_gym.evaluate(greedy, env_id, **kwb)
    with pytest.raises(ValueError, match=r"breaks the compute budget .*valid actions there: \["):
        export(greedy, env_id, **kwb)(torch.as_tensor(kw["dataset"].test.images))


# -- batches, devices, saving --------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", IDS)
def test_batch_of_one_equals_batch(env_id):
    kw = _kwargs(env_id, "user12", obs="probe")
    rn = export(Scores(*_obs_dim(env_id, **kw), seed=3), env_id, **kw)
    x = torch.as_tensor(kw["dataset"].test.images[:9])
    whole = rn.route(x)
    ones = [rn.route(x[i : i + 1]) for i in range(len(x))]
    np.testing.assert_array_equal(torch.cat([o.actions for o in ones]).numpy(), whole.actions.numpy())
    np.testing.assert_array_equal(torch.cat([o.flops for o in ones]).numpy(), whole.flops.numpy())
    torch.testing.assert_close(torch.cat([o.logits for o in ones]), whole.logits, rtol=1e-4, atol=1e-4)
    empty = rn.route(x[:0])
    assert empty.logits.shape == (0, rn.backbone.num_classes) and empty.actions.shape == (0, rn.T)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("env_id", IDS)
def test_save_load_roundtrip(env_id, device, tmp_path):
    from sb3_contrib import MaskablePPO

    kw = _kwargs(env_id, "user12", device, obs="probe", budget=0.7)
    model = _ppo(env_id, algo=MaskablePPO, steps=64, **_kwargs(env_id, "user12", obs="probe", budget=0.7))
    rn = export(model, env_id, **kw)
    x = torch.as_tensor(kw["dataset"].test.images).to(device)
    before = rn.route(x)
    path = rn.save(tmp_path / "router.pt")
    back = load(path, device=device)
    assert isinstance(back, RoutedNet) and back.device.type == device
    after = back.route(x)
    if device == "cpu":
        assert torch.equal(before.logits, after.logits)
    else:  # a rebuilt network may pick other GPU kernels
        torch.testing.assert_close(before.logits, after.logits)
    assert torch.equal(before.actions, after.actions) and torch.equal(before.flops, after.flops)
    assert (back.budget, back.obs_mode, back.env_id, back.info) == (rn.budget, rn.obs_mode, rn.env_id, rn.info)
    assert torch.equal(RoutedNet.load(path, device).route(x).actions, before.actions)


def test_load_needs_neither_sb3_nor_the_data(tmp_path):
    kw = _kwargs("DynSkip-v0", "user12", obs="probe")
    rn = export(_ppo("DynSkip-v0", steps=64, **kw), "DynSkip-v0", **kw)
    x = torch.as_tensor(kw["dataset"].test.images)
    expected = rn.route(x)
    path = rn.save(tmp_path / "r.pt")
    np.save(tmp_path / "x.npy", x.numpy())
    out = run_subprocess(
        "import sys; sys.modules['stable_baselines3'] = None; sys.modules['sb3_contrib'] = None\n"
        "import numpy as np, torch\n"
        "from dyncnn_gym.routed import load\n"
        f"net = load({str(path)!r})\n"
        f"r = net.route(torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r})))\n"
        "import json; print(json.dumps([r.actions.tolist(), r.flops.tolist(), r.logits.argmax(1).tolist()]))\n"
        "print('sb3' if sys.modules.get('stable_baselines3') else 'no-sb3')\n",
        timeout=120,
    )
    lines = out.strip().splitlines()
    actions, flops, preds = json.loads(lines[-2])
    assert actions == expected.actions.tolist() and flops == expected.flops.tolist()
    assert preds == expected.logits.argmax(1).tolist()
    assert lines[-1] == "no-sb3"


def test_export_from_an_env_or_core_and_the_package_attribute():
    kw = _kwargs("DynChannel-v0", "user12")
    policy = Scores(*_obs_dim("DynChannel-v0", **kw), seed=4)
    x = torch.as_tensor(kw["dataset"].test.images)
    a = export(policy, "DynChannel-v0", **kw).route(x)
    venv = make_vec_env("DynChannel-v0", n_envs=2, **kw)
    for env in (gymnasium.make("DynChannel-v0", **kw), venv, venv.core):
        assert torch.equal(export(policy, core=env).route(x).actions, a.actions)
    assert torch.equal(dyncnn_gym.export(policy, "DynChannel-v0", **kw).route(x).actions, a.actions)
    importlib.import_module("dyncnn_gym.routed")  # importing the module must not shadow dyncnn_gym.export

    assert torch.equal(dyncnn_gym.export(policy, core=venv).route(x).flops, a.flops)
    # later changes to the policy do not reach the exported copy
    rn = export(policy, core=venv)
    with torch.no_grad():
        policy.net[2].bias.add_(torch.arange(policy.net[2].bias.shape[0]) * 100.0)
    assert torch.equal(rn.route(x).actions, a.actions)


def test_policy_head_is_scriptable():
    kw = _kwargs("DynChannel-v0", "digits")
    model = _ppo("DynChannel-v0", steps=64, **kw)
    head = export(model, "DynChannel-v0", **kw).head
    assert isinstance(head, ScoreHead)
    try:
        scripted = torch.jit.script(head)
    except Exception as e:  # pragma: no cover - TorchScript removed from torch
        pytest.skip(f"TorchScript unavailable: {e}")
    obs = torch.rand(32, head.body[1][0].in_features) * 2 - 1
    mask = torch.rand(32, 4) > 0.3
    mask[:, 0] = True
    assert torch.equal(scripted(obs, mask), head(obs, mask))


# -- errors ---------------------------------------------------------------------------------------------
def test_bad_inputs_give_clear_errors(tmp_path):
    kw = _kwargs("DynChannel-v0", "user12")
    d, a = _obs_dim("DynChannel-v0", **kw)
    rn = export(Scores(d, a), "DynChannel-v0", **kw)
    x = torch.as_tensor(kw["dataset"].test.images)
    with pytest.raises(ValueError, match=r"shape \(1, 12, 12\); expected \[B, 1, 12, 12\].*images\[None\]"):
        rn(x[0])
    with pytest.raises(ValueError, match=r"shape \(2, 3, 12, 12\); expected \[B, 1, 12, 12\]"):
        rn(torch.zeros(2, 3, 12, 12))
    with pytest.raises(TypeError, match="dtype torch.int64; expected a floating dtype"):
        rn(torch.zeros(2, 1, 12, 12, dtype=torch.int64))
    with pytest.raises(TypeError, match="images must be a torch tensor"):
        rn([[0.0]])
    assert torch.equal(rn(x.numpy()), rn(x))  # NumPy arrays are fine
    with pytest.raises(TypeError, match=r"plain Python callable.*accepted: an SB3"):
        export(lambda obs: np.zeros(len(obs), dtype=np.int64), "DynChannel-v0", **kw)
    with pytest.raises(TypeError, match="cannot be exported; accepted"):
        export("ppo", "DynChannel-v0", **kw)
    with pytest.raises(
        ValueError,
        match=r"env_id='DynFoo-v0'.*choose one of \['DynChannel-v0', 'DynChannel-v1', 'DynExit-v0', 'DynExit-v1', 'DynRoute-v0', 'DynRoute-v1', 'DynSkip-v0', 'DynSkip-v1'",
    ):
        export(Scores(d, a), "DynFoo-v0", **kw)
    with pytest.raises(ValueError, match=r"obs='pixels' is not an observation mode; choose one of \['features', 'probe'\]"):
        export(Scores(d, a), "DynChannel-v0", **{**kw, "obs": "pixels"})
    with pytest.raises(ValueError, match=r"returned scores of shape \(1, 7\); expected \[B, 4\]"):
        export(nn.Linear(d, 7), "DynChannel-v0", **kw)
    with pytest.raises(ValueError, match=rf"does not run on this env's observations \[B, {d}\]"):
        export(nn.Linear(d + 5, a), "DynChannel-v0", **kw)
    model = _ppo("DynChannel-v0", steps=64, **kw)
    with pytest.raises(ValueError, match=rf"observes shape \({d},\) but the env gives \({d + 3},\) \(obs='probe'"):
        export(model, "DynChannel-v0", **{**kw, "obs": "probe"})
    with pytest.raises(ValueError, match="either core= or env arguments"):
        export(model, core=make_vec_env("DynChannel-v0", n_envs=1, **kw), budget=0.5)
    with pytest.raises(ValueError, match="'DynSkip-v0' has 'skip' decisions, but core= routes in 'channel' mode"):
        export(model, "DynSkip-v0", core=make_vec_env("DynChannel-v0", n_envs=1, **kw))
    with pytest.raises(TypeError, match="neither a RoutingCore nor an env"):
        export(model, core=object())
    with pytest.raises(RuntimeError, match="inference-only"):
        rn.train()
    assert rn.eval() is rn and not rn.training
    with pytest.raises(FileNotFoundError, match="no saved routed model"):
        load(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a routed model saved by RoutedNet.save"):
        load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"images are on meta but the model is on cpu"):
        rn(x.to("meta"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            load(rn.save(tmp_path / "r.pt"), device="cuda")


def test_perf_router_exports_like_any_module():
    import argparse

    from dyncnn_gym.benchmark.perf import ConfidenceThresholds, add_arguments, format_export

    for env_id, thresholds in (("DynSkip-v0", (0.5,)), ("DynChannel-v0", (0.6, 0.5, 0.4))):
        kw = _kwargs(env_id, "user12", obs="probe")
        core = gymnasium.make(env_id, **kw).unwrapped.core
        rn = _check_against_evaluate(ConfidenceThresholds(core.feat_dim, core.T, core.A, thresholds), env_id, **kw)
        conf = None  # the rule itself: action = number of thresholds the probe's top probability is below
        with torch.no_grad():
            from dyncnn_gym.walk import Walk

            walk = Walk(rn.backbone, rn.mode, torch.as_tensor(kw["dataset"].test.images))
            conf = rn.observe(walk)[:, core.feat_dim + core.T]
        expect = (conf[:, None] < torch.tensor(thresholds)[None, :]).sum(1)
        assert torch.equal(rn.last.actions[:, 0], expect)
    with pytest.raises(ValueError, match=r"thresholds=\[0.5\] must hold num_actions - 1 = 3 values"):
        ConfidenceThresholds(8, 2, 4, (0.5,))
    assert add_arguments(argparse.ArgumentParser()).parse_args(["--export-only"]).export_only
    row = {
        "env_id": "DynSkip-v0",
        "batch": 1,
        "flops_ratio": 0.5,
        "wall_speedup": 1.5,
        "raw_speedup": 1.6,
        "policy_overhead": 0.1,
        "ms_per_image": {"routed": 1.0, "full": 1.5, "raw": 0.9},
    }
    lines = format_export({"setup": {"router": "r"}, "rows": [row]})
    assert "DynSkip-v0" in lines[-1] and "10.0%" in lines[-1]
