"""The reference agents (``agents/``, installed as ``dyncnn_gym.agents``), the one-step ``DynBlockDrop-v0`` env, and the sb3-contrib
algorithms not covered in test_sb3.py (RecurrentPPO, QR-DQN).

Every agent smoke-trains for a few seconds on tiny data (digits 1x8x8), saves its policy, and the
loaded policy evaluates to the same accuracy and FLOPs on the whole test split.
"""

from __future__ import annotations

import json
import runpy
import sys
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_test_data, make_net
from gymnasium.utils.env_checker import check_env

import dyncnn_gym
from dyncnn_gym import evaluate
from dyncnn_gym.agents import blockdrop_pg, rnp_dqn, skipnet_hrl
from dyncnn_gym.policies import OneShotHead

SKIP_NET = ("resnet14", "digits")


def _skip_kwargs(**kw) -> dict:
    return {"dataset": load_test_data("digits"), "backbone": make_net(*SKIP_NET), **kw}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


# -- DynBlockDrop-v0 --------------------------------------------------------------------------------
def test_blockdrop_env_passes_check_env_and_is_registered():
    assert "DynBlockDrop-v0" in gymnasium.registry and "DynBlockDrop-v0" in dyncnn_gym.ONE_SHOT_IDS
    env = gymnasium.make("DynBlockDrop-v0", **_skip_kwargs())
    check_env(env.unwrapped, skip_render_check=True)
    T = env.unwrapped.num_decisions
    assert env.action_space == gymnasium.spaces.MultiBinary(T)
    assert "## Episode End" in type(env.unwrapped).__doc__
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs) and "action_mask" not in info
    obs, r, term, trunc, info = env.step(np.zeros(T, dtype=np.int8))
    assert term and not trunc and info["blocks_used"] == 0.0 and info["actions"].tolist() == [0] * T
    assert r == (1.0 if info["correct"] else -1.0)  # 1 - 0**2 or -penalty
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.ones(T, dtype=np.int8))


def test_blockdrop_renders_as_dynskip_does_and_builds_with_sb3s_make_vec_env(capsys):
    from stable_baselines3.common.env_util import make_vec_env

    kw = _skip_kwargs(split="test")
    frames = []
    for env_id in ("DynBlockDrop-v0", "DynSkip-v0"):
        env = gymnasium.make(env_id, render_mode="rgb_array", **kw)
        env.reset(seed=4)
        T = env.unwrapped.num_decisions
        for _ in range(1 if env_id.startswith("DynBlockDrop") else T):
            env.step(np.ones(T, dtype=np.int64) if env_id.startswith("DynBlockDrop") else 1)
        frames.append(env.render())
    assert frames[0].dtype == np.uint8 and frames[0].ndim == 3 and np.array_equal(frames[0], frames[1])
    human = gymnasium.make("DynBlockDrop-v0", render_mode="human", **kw)
    human.reset(seed=0)
    human.step(np.zeros(human.unwrapped.num_decisions, dtype=np.int64))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "blocks [0," in out[1]
    venv = make_vec_env("DynBlockDrop-v0", n_envs=2, env_kwargs=kw)  # SB3 asks for render_mode="rgb_array"
    assert venv.render_mode == "rgb_array" and venv.reset().shape == (2, *venv.observation_space.shape)


@pytest.mark.parametrize("reward", ["flops", "skipnet"])
def test_blockdrop_matches_dynskip_for_the_same_actions(reward):
    kw = _skip_kwargs(split="test", reward=reward, compute_weight=0.3)
    bd = gymnasium.make("DynBlockDrop-v0", **kw)
    sk = gymnasium.make("DynSkip-v0", **kw)
    T = bd.unwrapped.num_decisions
    rng = np.random.default_rng(0)
    o_bd, _ = bd.reset(seed=0)
    o_sk, _ = sk.reset(seed=0)
    for _ in range(6):
        assert np.allclose(o_bd, o_sk, atol=1e-6)  # the first DynSkip observation
        a = rng.integers(0, 2, T)
        _, r_bd, _, _, i_bd = bd.step(a)
        ret = 0.0
        for t in range(T):
            _, r, term, _, i_sk = sk.step(int(a[t]))
            ret += r
        assert term
        for k in ("flops", "prediction", "label", "index"):
            assert i_bd[k] == i_sk[k], k
        assert i_bd["flops"] == bd.unwrapped.core.table.path_flops(a)
        assert np.isclose(r_bd, ret) and np.isclose(i_bd["flops_ratio"], i_sk["flops_ratio"])
        o_bd, _ = bd.reset()
        o_sk, _ = sk.reset()


@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
def test_blockdrop_vector_env_equals_single_envs(mode):
    n, seed = 3, 11
    kw = _skip_kwargs(usage="flops", penalty=2.0)
    vec = gymnasium.make_vec("DynBlockDrop-v0", num_envs=n, autoreset_mode=mode, **kw)
    singles = [gymnasium.make("DynBlockDrop-v0", **kw) for _ in range(n)]
    obs, info = vec.reset(seed=seed)
    T = vec.single_action_space.n
    rng = np.random.default_rng(2)
    for ep in range(2):
        ref = [env.reset(seed=seed + i) if ep == 0 else env.reset() for i, env in enumerate(singles)]
        assert np.allclose(obs, np.stack([o for o, _ in ref]), atol=1e-6)
        a = rng.integers(0, 2, (n, T))
        obs, rew, term, trunc, info = vec.step(a)
        assert term.all() and not trunc.any()
        final = info if mode == "NextStep" else info["final_info"]
        for i, env in enumerate(singles):
            _, r, _, _, inf = env.step(a[i])
            assert np.isclose(rew[i], r) and final["flops"][i] == inf["flops"] and final["prediction"][i] == inf["prediction"]
            assert r == (1 - inf["flops_ratio"] ** 2 if inf["correct"] else -2.0)
        if mode == "NextStep":
            obs, rew, term, _, info = vec.step(a)  # the reset step
            assert not term.any() and (rew == 0).all()


def test_blockdrop_env_errors():
    kw = _skip_kwargs()
    for bad, match in [
        ({"reward": "bonus"}, "not a DynBlockDrop reward"),
        ({"usage": "time"}, "usage measure"),
        ({"penalty": -1.0}, "penalty=-1.0"),
        ({"compute_weight": 0.5}, "reward='blockdrop'"),
        ({"render_mode": "video"}, "render_mode='video' is not supported"),
    ]:
        with pytest.raises(ValueError, match=match):
            gymnasium.make("DynBlockDrop-v0", **kw, **bad)
    env = gymnasium.make("DynBlockDrop-v0", **kw).unwrapped
    env.reset(seed=0)
    T = env.num_decisions
    with pytest.raises(ValueError, match="shape"):
        env.step(np.ones(T + 1, dtype=np.int64))
    with pytest.raises(ValueError, match="outside"):
        env.step(np.full(T, 2))
    with pytest.raises(TypeError, match="MultiBinary"):
        env.step(np.full(T, 0.5))
    with pytest.raises(ValueError, match="options"):
        gymnasium.make_vec("DynBlockDrop-v0", num_envs=2, **kw).reset(options={"reset_mask": np.ones(2, bool)})


# -- the agents ----------------------------------------------------------------------------------
def _check_saved(out, load, env_id, **env_kwargs):
    """The loaded policy evaluates to the accuracy / FLOPs the run wrote in result.json."""
    saved = json.loads((out / "result.json").read_text())
    res = evaluate(load(out / "policy.pt"), env_id, **env_kwargs)
    assert res["n_images"] == saved["n_images"] > 0
    assert res["accuracy"] == pytest.approx(saved["accuracy"]) and res["flops_ratio"] == pytest.approx(saved["flops_ratio"])
    return saved


def test_rnp_dqn_trains_saves_and_reloads(tmp_path):
    out = tmp_path / "rnp"
    saved = rnp_dqn.main(
        [
            "--dataset",
            "digits",
            "--obs",
            "features",
            "--iterations",
            "12",
            "--num-envs",
            "16",
            "--learning-starts",
            "16",
            "--batch-episodes",
            "16",
            "--target-every",
            "5",
            "--out",
            str(out),
        ]
    )
    assert saved["algorithm"] == "RNP-DQN" and 0 < saved["flops_ratio"] <= 1
    assert "static_front_accuracy_at_same_flops" in saved["static"]
    assert np.isfinite(saved["history"][-1]["loss"])  # Q-learning updates ran
    _check_saved(out, rnp_dqn.load_policy, "DynChannel-v0", dataset="digits", obs="features")


@pytest.mark.parametrize("agent", ["rnp", "skipnet"])
def test_fine_tuned_backbone_and_policy_files_reproduce_result_json(agent, tmp_path):
    out = tmp_path / agent
    if agent == "rnp":
        saved = rnp_dqn.main(
            [
                "--dataset",
                "digits",
                "--obs",
                "features",
                "--iterations",
                "6",
                "--num-envs",
                "16",
                "--learning-starts",
                "16",
                "--batch-episodes",
                "16",
                "--finetune-every",
                "2",
                "--finetune-steps",
                "2",
                "--finetune-lr",
                "1e-3",
                "--no-compare-static",
                "--out",
                str(out),
            ]
        )
        module, env_id = rnp_dqn, "DynChannel-v0"
    else:
        saved = skipnet_hrl.main(
            [
                "--dataset",
                "digits",
                "--obs",
                "features",
                "--ste-iterations",
                "3",
                "--ste-batch",
                "32",
                "--rl-iterations",
                "3",
                "--num-envs",
                "16",
                "--joint-backbone",
                "--backbone-lr",
                "1e-3",
                "--no-compare-static",
                "--out",
                str(out),
            ]
        )
        module, env_id = skipnet_hrl, "DynSkip-v0"
    assert (out / "backbone.pt").exists()
    _check_saved(out, module.load_policy, env_id, dataset="digits", obs="features", backbone=str(out / "backbone.pt"))
    assert saved["n_images"] > 0


def test_rnp_dqn_finetunes_a_private_copy_of_the_backbone():
    net = make_net("vgg", "digits")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    args = rnp_dqn.Args(
        env="DynChannel-v0",
        num_envs=8,
        iterations=4,
        learning_starts=8,
        batch_episodes=8,
        finetune=True,
        finetune_every=2,
        finetune_steps=2,
        finetune_batch=16,
    )
    qnet, tuned, hist = rnp_dqn.train(
        args, {"dataset": load_test_data("digits"), "backbone": net, "obs": "features"}, log=lambda *a: None
    )
    assert tuned is not net and "finetune" in hist[1] and np.isfinite(hist[1]["finetune"]["loss"])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the shared net is untouched
    assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items())
    # the recurrent module: same actions whether the state is kept inside or passed explicitly
    env = gymnasium.make_vec("DynChannel-v0", num_envs=4, dataset=load_test_data("digits"), backbone=net)
    obs, _ = env.reset(seed=0)
    h = torch.zeros(4, qnet.hidden)
    for _ in range(env.unwrapped.core.T):
        q_state, h = qnet.step(torch.as_tensor(obs), h)
        with torch.no_grad():
            assert torch.allclose(qnet(torch.as_tensor(obs)), q_state)
        obs, *_ = env.step(q_state.argmax(1).numpy())


def test_skipnet_hrl_trains_saves_and_reloads(tmp_path):
    out = tmp_path / "skip"
    saved = skipnet_hrl.main(
        [
            "--dataset",
            "digits",
            "--obs",
            "features",
            "--ste-iterations",
            "6",
            "--ste-batch",
            "32",
            "--rl-iterations",
            "4",
            "--num-envs",
            "16",
            "--no-compare-static",
            "--loss",
            "error",
            "--out",
            str(out),
        ]
    )
    assert saved["algorithm"] == "SkipNet-HRL" and saved["after_stage1"]["flops_ratio"] > 0
    assert saved["env_kwargs"]["loss"] == "error" and saved["args"]["loss"] == "error"
    assert len(saved["history"]["stage1"]) == 6 and len(saved["history"]["stage2"]) == 4
    _check_saved(out, skipnet_hrl.load_policy, "DynSkip-v0", dataset="digits", obs="features")


@pytest.mark.parametrize("obs_mode", ["features", "probe"])
def test_skipnet_soft_pass_matches_the_env(obs_mode):
    """The STE stage's observations are the env's, and its hard forward pass is the walk's."""
    from dyncnn_gym.walk import Walk, run_routes

    env = gymnasium.make("DynSkip-v0", **_skip_kwargs(obs=obs_mode))
    core = env.unwrapped.core
    x = torch.as_tensor(core.data.train.images[:16])
    for seed in range(20):  # random gates until the route is mixed (differs between images and blocks)
        torch.manual_seed(seed)
        policy = skipnet_hrl.GatePolicy(env.observation_space.shape[0], 2, 8, core.feat_dim, core.T)
        with torch.no_grad():
            policy.head.bias.zero_()
            policy.head.weight.normal_(0.0, 3.0)
        logits, ratio, gates = skipnet_hrl.ste_forward(core, policy, x)
        acts = gates.long()
        if 0 < acts.float().mean() < 1:
            break
    assert 0 < acts.float().mean() < 1, acts
    ref_logits, ref_flops = run_routes(core.net, "skip", x, acts)
    assert torch.allclose(logits, ref_logits, atol=1e-4)
    assert torch.allclose(ratio, ref_flops.double().float() / core.full, atol=1e-6)
    walk = Walk(core.net, "skip", x)
    h = core.net.stem(x, "skip")
    for t in range(core.T):
        soft = skipnet_hrl.soft_observation(core, t, h, walk.flops.float())
        assert torch.allclose(soft, torch.as_tensor(core.observe(walk)), atol=1e-4)
        run, skip = core.net.decision("skip", t, h, 1, 1), core.net.decision("skip", t, h, 1, 0)
        h = torch.where(acts[:, t].view(-1, 1, 1, 1).bool(), run, skip)
        with torch.no_grad():
            walk.step(acts[:, t].numpy())


def test_skipnet_ste_stage_lowers_the_routed_loss():
    env = gymnasium.make("DynSkip-v0", **_skip_kwargs())
    core = env.unwrapped.core
    torch.manual_seed(0)
    policy = skipnet_hrl.GatePolicy(env.observation_space.shape[0], 2, 16, core.feat_dim, core.T)
    x, y = torch.as_tensor(core.data.train.images[:128]), torch.as_tensor(core.data.train.labels[:128])
    for p in core.net.parameters():
        p.requires_grad_(False)
    try:
        before, _ = skipnet_hrl.ste_objective(core, policy, x, y, alpha=0.5)
        hist = skipnet_hrl.train_ste(core, policy, 25, 64, 1e-2, 0.5, np.random.default_rng(0), log=lambda *a: None)
        after, stats = skipnet_hrl.ste_objective(core, policy, x, y, alpha=0.5)
    finally:
        for p in core.net.parameters():
            p.requires_grad_(True)
    assert len(hist) == 25
    assert after.item() < before.item() - 0.01, (before.item(), after.item())


def test_blockdrop_pg_trains_saves_and_reloads(tmp_path):
    out = tmp_path / "bd"
    saved = blockdrop_pg.main(
        [
            "--dataset",
            "digits",
            "--obs",
            "features",
            "--iterations",
            "8",
            "--num-envs",
            "16",
            "--lr",
            "0.05",
            "--no-compare-static",
            "--out",
            str(out),
        ]
    )
    assert saved["algorithm"] == "BlockDrop-PG" and saved["history"][0]["blocks_decided"] == 1
    T = gymnasium.make("DynSkip-v0", dataset="digits", obs="features").unwrapped.core.T
    assert saved["history"][-1]["blocks_decided"] == T  # the curriculum reached every block
    assert not saved["finetuned_backbone"] and not (out / "backbone.pt").exists()
    _check_saved(out, blockdrop_pg.load_policy, "DynSkip-v0", dataset="digits", obs="features")
    # the export replays the one-shot decisions: DynBlockDrop-v0 gives the same FLOPs per image
    oneshot = blockdrop_pg.load_policy(out / "policy.pt", raw=True)
    head = blockdrop_pg.load_policy(out / "policy.pt")
    assert isinstance(head, OneShotHead) and head.body.state_dict().keys() == oneshot.state_dict().keys()
    res = evaluate(head, "DynSkip-v0", per_image=True, dataset="digits", obs="features")
    bd = gymnasium.make("DynBlockDrop-v0", dataset="digits", obs="features", split="test")
    obs, info = bd.reset(seed=0)
    for _ in range(5):
        with torch.no_grad():
            a = (oneshot(torch.as_tensor(obs)[None]) > 0).long().numpy()[0]
        _, _, _, _, fin = bd.step(a)
        i = fin["index"]
        assert np.array_equal(res["images"]["actions"][i], a) and res["images"]["flops"][i] == fin["flops"]
        obs, info = bd.reset()


def test_blockdrop_pg_joint_finetuning_lowers_the_routed_loss(tmp_path):
    """--finetune-iterations: a private backbone copy is trained under the policy's drop patterns,
    saved as backbone.pt and used by the test evaluation."""
    import torch.nn.functional as F

    from dyncnn_gym.pretraining import load_checkpoint
    from dyncnn_gym.walk import Walk, run_routes

    core = gymnasium.make("DynSkip-v0", dataset="digits", obs="features").unwrapped.core
    default = core.net  # the process-wide backbone the run starts from
    before = {k: v.clone() for k, v in default.state_dict().items()}
    out = tmp_path / "bdft"
    saved = blockdrop_pg.main(
        [
            "--dataset",
            "digits",
            "--obs",
            "features",
            "--iterations",
            "4",
            "--num-envs",
            "16",
            "--lr",
            "0.05",
            "--finetune-iterations",
            "3",
            "--finetune-lr",
            "1e-3",
            "--finetune-batch",
            "64",
            "--no-compare-static",
            "--out",
            str(out),
        ]
    )
    assert [r["stage"] for r in saved["history"]] == ["rl"] * 4 + ["joint"] * 3
    assert all(r["blocks_decided"] == core.T for r in saved["history"][4:])  # no curriculum: the policy decides all
    ft = saved["finetune"]
    assert saved["finetuned_backbone"] and (ft["iterations"], ft["lr"], ft["batch"]) == (3, 1e-3, 64)
    assert ft["final_loss"] == saved["history"][-1]["finetune"]["loss"] and np.isfinite(ft["final_loss"])
    assert all(torch.equal(before[k], v) for k, v in default.state_dict().items())  # a private copy was trained
    tuned = load_checkpoint(out / "backbone.pt")
    assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items())
    # the routed loss on fixed train images under fixed drop patterns (sampled from the policy) went down
    x, y = torch.as_tensor(core.data.train.images[:256]), torch.as_tensor(core.data.train.labels[:256])
    oneshot = blockdrop_pg.load_policy(out / "policy.pt", raw=True)
    with torch.no_grad():
        p = blockdrop_pg.explore_probs(torch.sigmoid(oneshot(torch.as_tensor(core.observe(Walk(default, "skip", x))))), 0.8)
        keep = torch.bernoulli(p, generator=torch.Generator().manual_seed(0)).long()
        assert 0 < keep.float().mean() < 1
        loss_before = F.cross_entropy(run_routes(default, "skip", x, keep)[0], y).item()
        loss_after = F.cross_entropy(run_routes(tuned, "skip", x, keep)[0], y).item()
    assert loss_after < loss_before - 0.03, (loss_before, loss_after)
    # the test evaluation used the fine-tuned backbone: reloading both files reproduces it exactly
    res = evaluate(
        blockdrop_pg.load_policy(out / "policy.pt"),
        "DynSkip-v0",
        dataset="digits",
        obs="features",
        backbone=str(out / "backbone.pt"),
    )
    assert res["n_images"] == saved["n_images"] > 0
    assert res["accuracy"] == saved["accuracy"] and res["flops_ratio"] == saved["flops_ratio"]


def test_curriculum_schedule():
    T = 8
    js = [blockdrop_pg.curriculum_blocks(it, 100, T, 0.5) for it in range(100)]
    assert js[0] == 1 and js[-1] == T and all(b >= a for a, b in zip(js, js[1:]))
    assert blockdrop_pg.curriculum_blocks(0, 100, T, 0.0) == T


# -- CLI and the bench plug-ins ------------------------------------------------------------------
@pytest.mark.parametrize("module", [rnp_dqn, skipnet_hrl, blockdrop_pg])
def test_agent_help_runs_as_a_script(module, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [module.__file__, "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(module.__file__, run_name="__main__")
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text and "--out" in text and "--seed" in text


@pytest.mark.parametrize(
    "module,argv,match",
    [
        (rnp_dqn, ["--env", "CartPole-v1"], "not a routing env"),
        (rnp_dqn, ["--gamma", "1.5"], "--gamma 1.5 must be in"),
        (rnp_dqn, ["--num-envs", "0"], "--num-envs 0 must be a positive integer"),
        (rnp_dqn, ["--eps-end", "2"], "--eps-end 2.0 must be in"),
        (rnp_dqn, ["--split", "test"], "--split 'test' is not a training split"),
        (rnp_dqn, ["--loss", "hinge"], "--loss 'hinge' is not a classification term; choose one of ['ce', 'error']"),
        (skipnet_hrl, ["--loss", "hinge"], "--loss 'hinge' is not a classification term; choose one of ['ce', 'error']"),
        (skipnet_hrl, ["--rl-sharpness", "0"], "--rl-sharpness 0.0 must be > 0"),
        (skipnet_hrl, ["--env", "DynChannel-v0"], "supports DynSkip only"),
        (skipnet_hrl, ["--split", "test"], "--split 'test' is not a training split"),
        (skipnet_hrl, ["--ste-iterations", "0", "--rl-iterations", "0"], "nothing to train"),
        (blockdrop_pg, ["--reward", "accuracy"], "not supported; choose one of"),
        (blockdrop_pg, ["--explore", "0.2"], "--explore 0.2 must be in"),
        (blockdrop_pg, ["--finetune-iterations", "-1"], "--finetune-iterations -1 must be >= 0"),
        (blockdrop_pg, ["--finetune-lr", "0"], "--finetune-lr 0.0 must be > 0"),
        (blockdrop_pg, ["--finetune-batch", "0"], "--finetune-batch 0 must be a positive integer"),
    ],
)
def test_agent_cli_errors(module, argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        module.parse_args(argv)
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


def test_rnp_finetune_flags():
    assert not rnp_dqn.parse_args([]).finetune
    a = rnp_dqn.parse_args(["--finetune-every", "5"])
    assert a.finetune and a.finetune_every == 5
    assert rnp_dqn.parse_args(["--finetune"]).finetune_every > 0
    assert not rnp_dqn.parse_args(["--no-finetune"]).finetune


@pytest.mark.parametrize(
    "spec,env_id",
    [
        ("rnp", "DynChannel-v0"),
        ("skipnet", "DynSkip-v0"),
        ("blockdrop", "DynSkip-v0"),
    ],
)
def test_bench_plugins_resolve_and_return_evaluable_policies(spec, env_id):
    from dyncnn_gym.benchmark.bench import resolve_agent
    from dyncnn_gym.benchmark.suites import Task

    fn = resolve_agent(spec)
    arch = "vgg" if env_id == "DynChannel-v0" else SKIP_NET[0]
    kw = {
        "dataset": load_test_data("digits"),
        "backbone": make_net(arch, "digits"),
        "groups": 4,
        "reward": "flops",
        "obs": "features",
    }
    before = {k: v.clone() for k, v in kw["backbone"].state_dict().items()}

    def env_fn(n_envs: int = 16):  # the agents build their own envs; only compute_weight is read
        raise AssertionError("not used")

    env_fn.compute_weight = 0.5
    task = Task("t", env_id, kw, 400, (0.5,))
    policy = fn(env_fn, task, 0, 400)
    res = evaluate(policy, env_id, **kw)
    assert res["n_images"] == 40 and 0 < res["flops_ratio"] <= 1
    assert all(torch.equal(before[k], v) for k, v in kw["backbone"].state_dict().items())  # frozen
    if spec.startswith("agents.blockdrop"):
        with pytest.raises(NotImplementedError, match="DynSkip tasks"):
            fn(env_fn, Task("c", "DynChannel-v0", kw, 100, (0.5,)), 0, 100)


# -- sb3-contrib algorithms not in test_sb3.py ---------------------------------------------------
@pytest.mark.parametrize("algo", ["RecurrentPPO", "QRDQN"])
@pytest.mark.parametrize("env_id", ["DynChannel-v0", "DynSkip-v0"])
def test_sb3_contrib_algorithms_train_save_and_reload(env_id, algo, tmp_path):
    import sb3_contrib

    from dyncnn_gym.benchmark.protocol import load_model
    from dyncnn_gym.sb3 import make_vec_env

    arch = "vgg" if env_id == "DynChannel-v0" else SKIP_NET[0]
    kw = {"dataset": load_test_data("digits"), "backbone": make_net(arch, "digits")}
    vec = make_vec_env(env_id, n_envs=8, seed=0, **kw)
    cls = getattr(sb3_contrib, algo)
    extra = (
        {"n_steps": 16, "batch_size": 64, "n_epochs": 1, "policy_kwargs": {"lstm_hidden_size": 16}}
        if algo == "RecurrentPPO"
        else {
            "learning_starts": 32,
            "buffer_size": 1000,
            "train_freq": 4,
            "batch_size": 32,
            "policy_kwargs": {"n_quantiles": 8},
        }
    )
    model = cls("MlpLstmPolicy" if algo == "RecurrentPPO" else "MlpPolicy", vec, gamma=1.0, seed=0, device="cpu", **extra)
    model.learn(256)
    assert model.num_timesteps >= 256 and len(model.ep_info_buffer) > 0
    res = evaluate(model, env_id, **kw)
    model.save(tmp_path / "model.zip")
    loaded = load_model(str(tmp_path / "model.zip"), algorithm=algo)
    assert type(loaded).__name__ == algo
    again = evaluate(loaded, env_id, **kw)
    assert again["accuracy"] == res["accuracy"] and again["flops_ratio"] == res["flops_ratio"]


@pytest.mark.parametrize("algo", ["PPO", "A2C", "DQN", "MaskablePPO", "RecurrentPPO", "QRDQN"])
def test_load_model_detects_the_algorithm(algo, tmp_path):
    import sb3_contrib
    import stable_baselines3

    from dyncnn_gym.benchmark.protocol import load_model
    from dyncnn_gym.sb3 import make_vec_env

    vec = make_vec_env("DynSkip-v0", n_envs=2, **{"dataset": load_test_data("digits"), "backbone": make_net(*SKIP_NET)})
    cls = getattr(stable_baselines3, algo, None) or getattr(sb3_contrib, algo)
    policy = "MlpLstmPolicy" if algo == "RecurrentPPO" else "MlpPolicy"
    kw = {"learning_starts": 0} if "DQN" in algo else {}
    cls(policy, vec, device="cpu", **kw).save(tmp_path / "m.zip")
    assert type(load_model(str(tmp_path / "m.zip"))).__name__ == algo


def test_qrdqn_example_help():
    path = REPO_ROOT / "examples" / "qrdqn_dynskip.py"
    old = sys.argv
    sys.argv = [str(path), "--help"]
    try:
        with pytest.raises(SystemExit) as exc:
            runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = old
    assert exc.value.code == 0


@pytest.mark.parametrize("name,word", [("supervised_router.py", "supervised"), ("route_bandit.py", "bandit")])
def test_research_probe_examples_have_help_and_reject_bad_arguments(name, word):
    import subprocess
    import sys

    script = REPO_ROOT / "examples" / name
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and word in out.stdout
    bad = subprocess.run([sys.executable, str(script), "--n-val", "5"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--n-val 5" in bad.stderr


def test_flops_target_example_has_help_and_rejects_a_target_outside_0_1():
    import subprocess
    import sys

    script = REPO_ROOT / "examples" / "flops_target.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "dual ascent" in out.stdout
    bad = subprocess.run([sys.executable, str(script), "--target", "1.5"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--target 1.5 is not a FLOPs ratio" in bad.stderr


def test_baselines_script_writes_static_random_cascade_and_oracle(tmp_path, capsys, monkeypatch):
    out = tmp_path / "baselines.json"
    script = REPO_ROOT / "agents" / "baselines.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--env", "DynChannel-v0", "--dataset", "digits", "--out", str(out)])
    runpy.run_path(str(script), run_name="__main__")
    res = json.loads(out.read_text())
    assert set(res) >= {"full", "static", "random", "cascade", "oracle"}
    front = res["cascade"]["front"]
    assert front and all(c["cheap"] < c["rich"] and 0 < c["flops_ratio"] <= 1 for c in front)
    assert res["cascade"]["selected_on"] == "train"  # digits has no "val" split
    assert res["oracle"]["accuracy"] >= max(c["accuracy"] for c in front)  # the label-aware bound stays above
    printed = capsys.readouterr().out
    assert all(f"cascade {c['cheap']}->{c['rich']} below top probability {c['threshold']}" in printed for c in front)
