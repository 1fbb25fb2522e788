"""A routed model's router on the host (``dyncnn_gym.host_head``).

For one image on the CPU a routed model chooses each action in float64, in one compiled kernel
(``dyncnn_gym.native_router``, numba) or in NumPy, for a batch in float32 NumPy; when two actions
are too close for that to be sure, the torch head decides. Either way its
actions, predictions and FLOPs are the torch head's: those of ``dyncnn_gym.evaluate``, image by
image and as a batch.
"""

from __future__ import annotations

import importlib.util
import warnings
from unittest import mock

import gymnasium
import numpy as np
import pytest
import torch
from conftest import load_test_data, make_net
from torch import nn

import dyncnn_gym
from dyncnn_gym import native_router
from dyncnn_gym.envs.probes import confidence
from dyncnn_gym.envs.routing import make_core
from dyncnn_gym.host_head import HostHead, HostRouter, confidence_host, confidence_rows
from dyncnn_gym.policies import LogProbabilities, MeanScores, ModuleHead, OneShotHead, ScoreHead, Sine
from dyncnn_gym.routed import export
from dyncnn_gym.walk import Walk

IDS = ("DynChannel-v0", "DynSkip-v0", "DynRoute-v0")
ARCH = {"DynChannel-v0": "vgg", "DynSkip-v0": "resnet14", "DynRoute-v0": "resnet14"}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(params=["compiled", "numpy"])
def host_path(request, monkeypatch) -> str:
    """One image's decisions in the compiled kernel (numba) and, again, in NumPy."""
    if request.param == "compiled":
        pytest.importorskip("numba")
    monkeypatch.setenv(native_router.ENV_VAR, "1" if request.param == "compiled" else "0")
    return request.param


def _head(d: int, a: int, kind: str = "categorical", seed: int = 0, logprob: bool = True, biased: bool = False) -> ScoreHead:
    """A PPO-shaped score head with weights large enough that images get different actions."""
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, a))
    with torch.no_grad():
        body[0].weight.mul_(6.0)
        body[-1].weight.mul_(8.0)
    if logprob:
        body = MeanScores([nn.Sequential(body, LogProbabilities())])
    cost = torch.linspace(0.0, 1.0, a) if biased else None
    return ScoreHead(body, kind, cost=cost, bias=0.3 if biased else 0.0).eval()


def _random_case(kind: str, biased: bool, seed: int, n: int = 2000, d: int = 20, a: int = 4):
    """A test head, its host form, ``n`` random observations and masks (at least one allowed action
    each), and the torch head's actions without and with the masks."""
    head = _head(d, a, kind, logprob=kind != "argmax", biased=biased)
    host = HostHead.of(head)
    assert host is not None and host.num_actions == a
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, d)).astype(np.float32)
    masks = rng.random((n, a)) < 0.7
    masks[np.arange(n), rng.integers(0, a, n)] = True
    with torch.no_grad():
        free = head.act(torch.as_tensor(obs)).numpy()
        masked = head.act(torch.as_tensor(obs), torch.as_tensor(masks)).numpy()
    return host, obs, masks, free, masked


def _tied_head() -> ScoreHead:
    """A head whose first two actions lead by 1e-5 whatever the observation (6 features, 3 actions)."""
    head = _head(6, 3, logprob=False)
    with torch.no_grad():
        head.body[-1].weight.zero_()
        head.body[-1].bias.copy_(torch.tensor([1.0, 1.0 + 1e-5, -2.0]))
    return head


@pytest.mark.parametrize("kind", ["categorical", "maskable", "argmax"])
@pytest.mark.parametrize("biased", [False, True])
def test_the_host_choice_is_the_torch_heads_or_none(kind, biased):
    host, obs, masks, free, masked = _random_case(kind, biased, seed=0)
    chosen = 0
    for i in range(len(obs)):
        o = obs[i].astype(np.float64)
        for allowed, want in ((None, free[i]), (masks[i], masked[i])):
            got = host.choose(o, allowed)
            if got is not None:
                assert got == want, (i, allowed)
                chosen += 1
    assert chosen > 0.95 * 2 * len(obs), "near-ties should be rare"


@pytest.mark.parametrize("kind", ["categorical", "maskable", "argmax"])
@pytest.mark.parametrize("biased", [False, True])
def test_a_batch_choice_on_the_host_is_the_torch_heads_row_by_row_or_left_to_it(kind, biased):
    host, obs, masks, free, masked = _random_case(kind, biased, seed=1)
    for allowed, want in ((None, free), (masks, masked)):
        got, sure = host.choose_rows(obs.copy(), allowed)
        assert sure.mean() > 0.95, "near-ties should be rare"
        np.testing.assert_array_equal(got[sure], want[sure])
        single = [host.choose(o.astype(np.float64), None if allowed is None else allowed[i]) for i, o in enumerate(obs)]
        assert all(g == w for g, w in zip(single, want) if g is not None)


def test_rows_with_near_ties_or_bad_scores_or_no_allowed_action_are_left_to_the_torch_head():
    head = _tied_head()
    host = HostHead.of(head)
    obs = np.zeros((4, 6), dtype=np.float32)
    allowed = np.array([[True, True, True], [True, False, True], [False, False, True], [False, False, False]])
    acts, sure = host.choose_rows(obs, allowed)
    assert sure.tolist() == [False, True, True, False] and acts[1:3].tolist() == [0, 2]
    with torch.no_grad():
        head.body[-1].bias[2] = float("nan")
    assert not HostHead.of(head).choose_rows(obs, allowed)[1].any()


def test_a_plain_torch_module_of_scores_runs_on_the_host_too():
    torch.manual_seed(1)
    module = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3), Sine(5.0))
    head = ModuleHead(module).eval()
    host = HostHead.of(head)
    assert host is not None and host.num_actions == 3
    obs = np.random.default_rng(1).uniform(-1, 1, (1000, 12)).astype(np.float32)
    with torch.no_grad():
        want = head(torch.as_tensor(obs), torch.ones((1000, 3), dtype=torch.bool)).numpy()
    got = [host.choose(o.astype(np.float64)) for o in obs]
    assert sum(g is not None for g in got) > 950
    assert all(g == w for g, w in zip(got, want) if g is not None)


def test_near_ties_and_bad_scores_are_left_to_the_torch_head():
    head = _tied_head()
    host = HostHead.of(head)
    assert host.choose(np.zeros(6)) is None  # a lead of 1e-5: too close to call
    assert host.choose(np.zeros(6), np.array([True, False, True])) == 0  # the rival is masked out
    assert host.choose(np.zeros(6), np.array([False, False, True])) == 2
    with torch.no_grad():
        head.body[-1].bias[2] = float("nan")
    assert host.stale()
    assert HostHead.of(head).choose(np.zeros(6)) is None


def test_heads_without_a_host_form():
    class Custom(nn.Module):
        def forward(self, x):
            return torch.sin(x[:, :3])

    assert HostHead.of(ScoreHead(Custom())) is None
    two = MeanScores([nn.Linear(4, 2), nn.Linear(4, 2)])
    assert HostHead.of(ScoreHead(two)) is None
    assert HostHead.of(nn.Linear(4, 2)) is None
    assert HostHead.of(_head(4, 2).half()) is None


@pytest.mark.parametrize("helper", ["host", "kernel", "compiled kernel"])
@pytest.mark.parametrize("classes", [2, 10, 100])
def test_host_confidence_is_the_envs_near_ties_and_vanishing_probabilities_included(classes, helper):
    """The NumPy host's :func:`confidence_host` and the kernels' helper (as Python and compiled)."""
    gen = torch.Generator().manual_seed(classes)
    z = torch.cat(
        [
            torch.randn(50, classes, generator=gen) * 3,
            torch.randn(10, classes, generator=gen) * 40,  # probabilities below the env's 1e-12 clamp
            torch.zeros(2, classes),  # every class tied
            torch.tensor([[5.0, 5.0] + [0.0] * (classes - 2)]),  # the two best tied
        ]
    )
    fn = confidence_host if helper == "host" else native_router._confidence
    if helper == "compiled kernel":
        fn = pytest.importorskip("numba").njit(fn)
    want = confidence(z).double().numpy()
    for zz in (z.double().numpy(), z.numpy()):  # the one-image kernel reads float64, the batch kernel float32
        got = np.array([fn(row) for row in zz])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("classes", [2, 10, 100])
def test_host_confidence_of_a_batch_is_the_envs(classes):
    z = torch.randn(50, classes, generator=torch.Generator().manual_seed(classes)) * 3
    got = np.stack(confidence_rows(z.numpy().copy()), 1)
    np.testing.assert_allclose(got, confidence(z).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("probes", [False, True])
def test_one_images_choice_from_its_feature_map_is_the_choice_of_its_observation(probes, host_path):
    """The folded first layer (no observation built) chooses as the head does on the observation
    the envs build: ``[tanh(pooled / scale), zeros, one-hot of t, (confidences), FLOPs ratio]``."""
    widths, T, K = [8, 16], 2, 5
    d = max(widths) + T + (3 if probes else 0) + 1
    head = _head(d, 3, seed=3)
    g = torch.Generator().manual_seed(0)
    scales = [torch.rand(w, generator=g) + 0.5 for w in widths]
    pr = [(torch.randn(w, K, generator=g), torch.randn(K, generator=g)) for w in widths] if probes else None
    router = HostRouter.of(head, 3, scales, [max(widths) + t for t in range(T)], d, pr)
    host = HostHead.of(head)
    chosen = 0
    for i in range(200):
        t = i % T
        C = widths[t] if i % 3 else widths[t] // 2  # a narrower map: the other channels are zero
        x = torch.randn(1, C, 4, 4, generator=g) * 2
        ratio = i / 200
        pooled = x.mean(dim=(2, 3))[0].double()
        obs = np.zeros(d)
        obs[:C] = np.tanh((pooled / scales[t][:C].double()).numpy())
        obs[max(widths) + t] = 1.0
        if probes:
            z = torch.from_numpy(obs[:C]) @ pr[t][0][:C].double() + pr[t][1].double()
            obs[d - 4 : d - 1] = confidence_host(z.numpy())
        obs[-1] = ratio
        want = host.choose(obs)
        for layout in (torch.contiguous_format, torch.channels_last):
            got = router.choose_features(t, x.contiguous(memory_format=layout), ratio)
            if want is not None and got is not None:
                assert got == want, (i, layout)
                chosen += 1
    assert chosen > 0.9 * 2 * 200, "near-ties should be rare"
    assert (router._kernel() is not None) == (host_path == "compiled")
    assert router.choose_features(0, torch.randn(1, 8, 4, 6)[..., ::2], 0.5) is None  # not dense: the torch head decides
    assert router.choose_features(0, torch.randn(1, 8, 4, 4, dtype=torch.float64), 0.5) is None


def _kernel_case_head(case: str):
    """A policy head of each kind of step the compiled kernel runs, and its number of outputs."""
    torch.manual_seed(0)
    if case == "tanh-relu-cost":  # a cost-biased score head (CostBiasedPolicy's form)
        body = nn.Sequential(nn.Linear(15, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        return ScoreHead(body, "categorical", cost=torch.linspace(0.0, 1.0, 4), bias=0.3), 4
    if case == "relu-sine":
        return ModuleHead(nn.Sequential(nn.Linear(15, 16), nn.ReLU(), nn.Linear(16, 3), Sine(5.0))), 3
    return OneShotHead(nn.Sequential(nn.Linear(15, 16), nn.Tanh(), nn.Linear(16, 4), LogProbabilities()), bias=0.2), 4


#: the kernel cases' decision widths, probe classes and observation size
KERNEL_WIDTHS, KERNEL_CLASSES, KERNEL_OBS = [8, 10], 4, 15


def _kernel_case_router(case: str, probes: bool, g: torch.Generator) -> tuple[HostRouter, int]:
    """A host router of :func:`_kernel_case_head`'s head over two decisions of
    :data:`KERNEL_WIDTHS` channels, observing confidences (a probe's of :data:`KERNEL_CLASSES`
    classes, or the model's logits), with scales and probes drawn from ``g``; and its number of actions."""
    head, A = _kernel_case_head(case)
    widths, K = KERNEL_WIDTHS, KERNEL_CLASSES
    scales = [torch.rand(w, generator=g) + 0.5 for w in widths]
    pr = [(torch.randn(w, K, generator=g), torch.randn(K, generator=g)) for w in widths] if probes else None
    onehots = [KERNEL_OBS - 5 + t for t in range(len(widths))]
    return HostRouter.of(head, A, scales, onehots, KERNEL_OBS, pr, confidences=True), A


@pytest.mark.parametrize("case", ["tanh-relu-cost", "relu-sine", "one-shot-logprob"])
@pytest.mark.parametrize("probes", [False, True])
def test_the_compiled_decision_computes_the_numpy_hosts_scores(case, probes):
    """Every step a policy may hold (linear, tanh, relu, sine, a last log-probability, a cost
    bias; probe confidences or the model's logits): the kernel's scores are the NumPy path's to
    float64 rounding, and it chooses as the NumPy path does wherever both are sure."""
    pytest.importorskip("numba")
    widths, T = KERNEL_WIDTHS, len(KERNEL_WIDTHS)
    g = torch.Generator().manual_seed(1)
    router, A = _kernel_case_router(case, probes, g)
    kernel = router._kernel()
    assert kernel is not None
    agreed = 0
    for i in range(100):
        t = i % T
        x = torch.randn(1, widths[t] - (i % 3), 3, 4, generator=g)
        if i % 2:  # both layouts a feature map may have
            x = x.contiguous(memory_format=torch.channels_last)
        logits = None if probes else torch.randn(1, 6, generator=g)
        z = torch.zeros(2, dtype=torch.float64).numpy() if probes else logits.numpy()[0].astype(np.float64)
        action, scores = router._decide(kernel, t, x, i / 100, z, None)
        want = router.head.scores_of_hidden(router._hidden(t, x.double().sum((0, 2, 3)).numpy(), 12, i / 100, logits))
        np.testing.assert_allclose(scores, want, rtol=1e-9, atol=1e-9)
        numpy_action = router.head.pick(want)
        if action is not None and numpy_action is not None:
            assert action == numpy_action
            agreed += 1
    assert agreed > 80


def _kwargs(env_id: str, **kw) -> dict:
    return {"dataset": load_test_data("user12"), "backbone": make_net(ARCH[env_id], "user12"), **kw}


def _one_by_one(rn, x, host_path: str):
    """Route ``x`` image by image, counting the decisions the host path made (compiled or NumPy,
    as ``host_path`` says: checked)."""
    made = []
    originals = {name: getattr(HostRouter, name) for name in ("choose_features", "choose_pooled")}

    def counting(name):
        def call(self, *args, **kwargs):
            a = originals[name](self, *args, **kwargs)
            made.append(a is not None)
            return a

        return call

    with mock.patch.multiple(HostRouter, **{name: counting(name) for name in originals}):
        ones = [rn.route(x[i : i + 1]) for i in range(len(x))]
    assert (rn._host_router()._kernel() is not None) == (host_path == "compiled")
    return ones, float(np.mean(made)) if made else 0.0


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("obs", ["features", "probe"])
def test_one_image_at_a_time_routes_as_evaluate_does(env_id, obs, host_path):
    kw = _kwargs(env_id, obs=obs)
    env = gymnasium.make(env_id, **kw)
    head = _head(env.observation_space.shape[0], int(env.action_space.n), seed=4)
    result = dyncnn_gym.evaluate(head, env_id, per_image=True, **kw)
    rn = export(head, env_id, **kw)
    x = torch.as_tensor(kw["dataset"].test.images[:48])
    ones, share = _one_by_one(rn, x, host_path)
    assert share > 0.9, "the host path should make almost every decision"
    im = result["images"]
    np.testing.assert_array_equal(torch.cat([o.actions for o in ones]).numpy(), im["actions"][:48])
    np.testing.assert_array_equal(torch.cat([o.flops for o in ones]).numpy(), im["flops"][:48])
    np.testing.assert_array_equal(torch.cat([o.logits for o in ones]).argmax(1).numpy(), im["prediction"][:48])
    assert len({tuple(r) for r in im["actions"][:48].tolist()}) > 1, "the test head should route images differently"


def _batch(rn, x, host_path: str):
    """Route ``x`` as one batch, counting the rows the host path decided (compiled or NumPy, as
    ``host_path`` says: checked)."""
    made = []
    choose_batch = HostRouter.choose_batch

    def counting(self, *args, **kwargs):
        chosen = choose_batch(self, *args, **kwargs)
        if chosen is not None:
            made.extend(chosen[1].tolist())
        return chosen

    with mock.patch.object(HostRouter, "choose_batch", counting):
        out = rn.route(x)
    assert (rn._host_router()._rows_kernel() is not None) == (host_path == "compiled")
    return out, float(np.mean(made)) if made else 0.0


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("obs", ["features", "probe"])
@pytest.mark.parametrize("budgeted", [False, True])
def test_a_batch_routes_as_evaluate_does(env_id, obs, budgeted, host_path):
    kw = _kwargs(env_id, obs=obs)
    env = gymnasium.make(env_id, **kw)
    head = _head(env.observation_space.shape[0], int(env.action_space.n), kind="maskable", seed=4)
    x = torch.as_tensor(kw["dataset"].test.images)
    if budgeted:  # a cap that binds for the costlier half of the images
        free = export(head, env_id, **kw).route(x).flops_ratio.numpy()
        kw["budget"] = float(np.quantile(free, 0.5))
    result = dyncnn_gym.evaluate(head, env_id, per_image=True, **kw)
    rn = export(head, env_id, **kw)
    out, share = _batch(rn, x, host_path)
    assert share > 0.9, "the host path should make almost every decision"
    im = result["images"]
    np.testing.assert_array_equal(out.actions.numpy(), im["actions"])
    np.testing.assert_array_equal(out.flops.numpy(), im["flops"])
    np.testing.assert_array_equal(out.logits.argmax(1).numpy(), im["prediction"])
    if budgeted:  # the cap changed routes, and holds
        assert (out.flops_ratio.numpy() <= kw["budget"] + 1e-9).all() and (free > kw["budget"] + 1e-9).any()
    else:
        assert len({tuple(r) for r in im["actions"].tolist()}) > 1, "the test head should route images differently"


@pytest.mark.parametrize("env_id", ["DynChannel-v0", "DynExit-v0"])
def test_rows_the_host_cannot_call_are_decided_by_the_torch_head_in_a_batch(env_id, host_path):
    """Every row handed to the torch head (as if each were a near-tie) still routes as evaluate does."""
    if env_id == "DynExit-v0":
        kw = {"dataset": load_test_data("user12"), "backbone": make_net("resnet8-exits", "user12"), "stages": "depth"}
    else:
        kw = _kwargs(env_id, obs="probe")
    env = gymnasium.make(env_id, **kw)
    head = _head(env.observation_space.shape[0], int(env.action_space.n), seed=2 if env_id == "DynExit-v0" else 8)
    result = dyncnn_gym.evaluate(head, env_id, per_image=True, **kw)
    rn = dyncnn_gym.export(head, env_id, **kw)
    choose_batch = HostRouter.choose_batch

    def every_other_row(self, *args, **kwargs):
        acts, sure = choose_batch(self, *args, **kwargs)
        acts, sure = acts.copy(), sure.copy()
        acts[::2] = -1  # wrong on purpose: the torch head must overwrite these rows
        sure[::2] = False
        return acts, sure

    with mock.patch.object(HostRouter, "choose_batch", every_other_row):
        out = rn.route(torch.as_tensor(kw["dataset"].test.images))
    np.testing.assert_array_equal(out.actions.numpy(), result["images"]["actions"])
    np.testing.assert_array_equal(out.flops.numpy(), result["images"]["flops"])
    assert len({tuple(r) for r in result["images"]["actions"].tolist()}) > 1, "the test head should route images differently"


@pytest.mark.parametrize("env_id", ["DynChannel-v0", "DynSkip-v0"])
def test_one_image_at_a_time_under_a_budget_and_after_the_head_changes(env_id, host_path):
    kw = _kwargs(env_id, obs="probe")
    env = gymnasium.make(env_id, **kw)
    head = _head(env.observation_space.shape[0], int(env.action_space.n), seed=5)
    rn = export(head, env_id, **kw)
    x = torch.as_tensor(kw["dataset"].test.images[:32])
    cheapest = rn.table.path_flops([0] * rn.T) / rn.full
    budget = max(float(np.quantile(rn.route(x).flops_ratio.numpy(), 0.3)), cheapest + 1e-6)
    rb = export(head, env_id, budget=budget, **kw)
    for model in (rb, rn):
        whole = model.route(x)
        ones, share = _one_by_one(model, x, host_path)
        assert share > 0.9
        np.testing.assert_array_equal(torch.cat([o.actions for o in ones]).numpy(), whole.actions.numpy())
    assert (rb.last.flops_ratio <= budget + 1e-9).all()
    # a weight changed in place: the host form is rebuilt, and still routes as the batch does
    before = torch.cat([o.actions for o in _one_by_one(rn, x, host_path)[0]])
    with torch.no_grad():
        rn.head.body.members[0][0][-1].bias.add_(torch.linspace(-3.0, 3.0, rn.A))
    whole = rn.route(x)
    after = torch.cat([o.actions for o in _one_by_one(rn, x, host_path)[0]])
    assert torch.equal(after, whole.actions) and not torch.equal(after, before)


@pytest.mark.parametrize(
    "stages, arch, extra, seed, gain",
    [("width", "vgg", {"widths": (0, 2, 3)}, 6, 30.0), ("depth", "resnet8-exits", {}, 2, 1.0)],
)
def test_an_exit_model_one_image_at_a_time_routes_as_evaluate_does(stages, arch, extra, seed, gain, host_path):
    kw = {"dataset": load_test_data("user12"), "backbone": make_net(arch, "user12"), "stages": stages, **extra}
    env = gymnasium.make("DynExit-v0", **kw)
    head = _head(env.observation_space.shape[0], 2, seed=seed)
    with torch.no_grad():  # an untrained backbone's width stages differ little from image to image
        head.body.members[0][0][0].weight.mul_(gain)
    result = dyncnn_gym.evaluate(head, "DynExit-v0", per_image=True, **kw)
    net = dyncnn_gym.export(head, "DynExit-v0", **kw)
    x = torch.as_tensor(kw["dataset"].test.images)
    ones, share = _one_by_one(net, x, host_path)
    assert share > 0.9, "the host path should make almost every decision"
    whole, share = _batch(net, x, host_path)
    assert share > 0.9, "the host path should make almost every decision of a batch"
    im = result["images"]
    np.testing.assert_array_equal(whole.exits.numpy(), im["exit"])
    np.testing.assert_array_equal(whole.flops.numpy(), im["flops"])
    np.testing.assert_array_equal(torch.cat([o.exits for o in ones]).numpy(), im["exit"])
    np.testing.assert_array_equal(torch.cat([o.actions for o in ones]).numpy(), im["actions"])
    np.testing.assert_array_equal(torch.cat([o.flops for o in ones]).numpy(), im["flops"])
    np.testing.assert_array_equal(torch.cat([o.logits for o in ones]).argmax(1).numpy(), im["prediction"])
    assert len(set(im["exit"].tolist())) > 1, "the test head should exit images at different stages"


def test_a_model_loaded_under_inference_mode_routes_one_image_at_a_time(tmp_path, host_path):
    kw = _kwargs("DynChannel-v0", obs="probe")
    env = gymnasium.make("DynChannel-v0", **kw)
    rn = export(_head(env.observation_space.shape[0], int(env.action_space.n), seed=7), "DynChannel-v0", **kw)
    path = rn.save(tmp_path / "routed.pt")
    x = torch.as_tensor(kw["dataset"].test.images[:16])
    with torch.inference_mode():
        again = dyncnn_gym.load_routed(path)
        ones, share = _one_by_one(again, x, host_path)
        whole = again.route(x)
    assert share > 0.9
    assert torch.equal(torch.cat([o.actions for o in ones]), whole.actions)
    # the env, evaluation and the static baselines take weights made under inference mode too
    from dyncnn_gym.benchmark.baselines import static_baselines
    from dyncnn_gym.envs.routing import make_core

    with torch.inference_mode():
        inf_kw = _kwargs("DynChannel-v0", obs="probe")
        assert len(static_baselines(make_core("DynChannel-v0", 1, split="test", **inf_kw))["front"]) >= 1
        result = dyncnn_gym.evaluate(again.head, "DynChannel-v0", **inf_kw)
    assert 0.0 <= result["accuracy"] <= 1.0


@pytest.mark.parametrize("obs", ["features", "probe"])
@pytest.mark.parametrize("budgeted", [False, True])
def test_one_image_at_a_time_a_one_shot_head_plans_on_the_host_as_evaluate_does(obs, budgeted, host_path):
    kw = _kwargs("DynSkip-v0", obs=obs)
    env = gymnasium.make("DynSkip-v0", **kw)
    d, T = env.observation_space.shape[0], env.unwrapped.num_decisions
    torch.manual_seed(6)
    body = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, T))
    x = torch.as_tensor(kw["dataset"].test.images[:48])
    core = make_core("DynSkip-v0", 1, split="test", **kw)
    first = torch.as_tensor(core.observe(Walk(core.net, "skip", x)))
    with torch.no_grad():  # sensitive, and centred on the bias: each block runs for about half of the images
        body[0].weight.mul_(20.0)
        body[-1].weight.mul_(8.0)
        body[-1].bias.sub_(body(first).mean(0) - 0.4)
    head = OneShotHead(body, bias=0.4).eval()
    if budgeted:  # a cap that binds for the costlier half of the images
        kw["budget"] = float(np.quantile(export(head, "DynSkip-v0", **kw).route(x).flops_ratio.numpy(), 0.5))
    result = dyncnn_gym.evaluate(head, "DynSkip-v0", per_image=True, **kw)
    rn = export(head, "DynSkip-v0", **kw)
    planned = []
    plan = HostRouter.plan_features

    def counting(self, *args):
        keeps = plan(self, *args)
        planned.append(keeps is not None)
        return keeps

    with mock.patch.object(HostRouter, "plan_features", counting):
        ones = [rn.route(x[i : i + 1]) for i in range(len(x))]
    assert len(planned) == len(x) and np.mean(planned) > 0.9, "the host should plan almost every image, once"
    assert (rn._host_router()._kernel() is not None) == (host_path == "compiled")
    im = result["images"]
    np.testing.assert_array_equal(torch.cat([o.actions for o in ones]).numpy(), im["actions"][:48])
    np.testing.assert_array_equal(torch.cat([o.flops for o in ones]).numpy(), im["flops"][:48])
    np.testing.assert_array_equal(torch.cat([o.logits for o in ones]).argmax(1).numpy(), im["prediction"][:48])
    assert len({tuple(r) for r in im["actions"][:48].tolist()}) > 1, "the test head should route images differently"


def test_a_one_shot_heads_keep_logits_on_the_host_are_its_torch_logits_a_last_log_probability_included():
    """An argmax may skip a last log-probability step (it shifts every score alike); a one-shot
    head compares each keep logit with its bias, so the host computes it."""
    torch.manual_seed(2)
    for body in (
        nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)),
        nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4), LogProbabilities()),
    ):
        head = OneShotHead(body, bias=-1.0)
        host = HostHead.of(head)
        obs = np.random.default_rng(0).uniform(-1, 1, (50, 6))
        with torch.no_grad():
            want = head.plan(torch.as_tensor(obs, dtype=torch.float32)).double().numpy()
        got = np.stack([host.scores(o) for o in obs])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_without_an_importable_numba_routing_runs_on_the_numpy_path_with_a_warning(monkeypatch):
    """numba installed but not importable (built for another NumPy): a warning per kernel, then NumPy."""
    import builtins

    real_import = builtins.__import__

    def no_numba(name, *args, **kwargs):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("Numba needs NumPy 2.3 or less")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(native_router, "_COMPILED", {})
    monkeypatch.setattr(builtins, "__import__", no_numba)
    monkeypatch.setenv(native_router.ENV_VAR, "1")
    with pytest.warns(RuntimeWarning, match="NumPy host path"):
        assert native_router.kernel() is None
    assert native_router.kernel() is None  # decided once per process
    with pytest.warns(RuntimeWarning, match="NumPy host path"):
        assert native_router.rows_kernel() is None


def test_logits_of_one_class_are_left_to_the_torch_head_on_every_host_path(host_path):
    """Confidences need at least two classes: the compiled, NumPy and batch paths all decline."""
    router, _ = _kernel_case_router("tanh-relu-cost", False, torch.Generator().manual_seed(0))
    pooled = torch.randn(1, 8)
    assert router.choose_pooled(0, pooled, 0.5, torch.randn(1, 1)) is None
    sums = pooled.double().numpy()[0]
    assert router._hidden(0, sums, 1, 0.5, torch.randn(1, 1)) is None
    assert router._hidden(0, sums, 1, 0.5, torch.randn(1, 3)) is not None
    assert router.choose_batch(0, torch.randn(4, 8), np.full(4, 0.5), torch.randn(4, 1)) is None
    assert router.choose_batch(0, torch.randn(4, 8), np.full(4, 0.5), torch.randn(4, 3)) is not None


def test_the_batch_kernels_tanh_is_within_float32_rounding():
    """``tanh32`` (a rational approximation the compiler vectorises) against float64 ``tanh``."""
    x = np.concatenate([np.linspace(-12, 12, 20001), np.geomspace(1e-8, 1.0, 500), [0.0, 7.9, 8.0, 30.0, -30.0]])
    want = np.tanh(x)
    kernels = [native_router._tanh32]
    if importlib.util.find_spec("numba") is not None:
        from numba import njit

        kernels.append(njit(native_router._tanh32))
    for f in kernels:
        got = np.array([float(f(np.float32(v))) for v in x])
        assert np.abs(got - want).max() <= 4e-7
        assert (np.abs(got - want) <= 1e-6 * np.abs(want) + 1e-12).all()  # relative near zero too
        assert f(np.float32(0.0)) == 0.0 and abs(f(np.float32(30.0))) <= 1.0


@pytest.mark.parametrize("case", ["tanh-relu-cost", "relu-sine"])
@pytest.mark.parametrize("probes", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_the_compiled_batch_decision_chooses_as_the_numpy_batch_path(case, probes, masked):
    """A batch's compiled decision (float32 rows, approximated ``tanh``) gives the NumPy batch
    path's action wherever both are sure, and is sure almost everywhere."""
    pytest.importorskip("numba")
    widths, B = KERNEL_WIDTHS, 403  # the kernel takes rows by four: three rows after the last four
    g = torch.Generator().manual_seed(3)
    router, A = _kernel_case_router(case, probes, g)
    kernel = router._rows_kernel()
    assert kernel is not None
    both = agreed = 0
    for t, width in enumerate(widths):
        pooled = torch.randn(B, width - t, generator=g) * 2
        ratio = np.linspace(0.0, 1.0, B)
        logits = None if probes else torch.randn(B, 6, generator=g) * 3
        allowed = (torch.rand(B, A, generator=g) > 0.3).numpy() if masked else None
        got, got_sure = router.choose_batch(t, pooled, ratio, logits, allowed)
        router._native_rows = None  # the NumPy batch path
        want, want_sure = router.choose_batch(t, pooled, ratio, logits, allowed)
        router._native_rows = kernel
        assert ((got >= 0) == got_sure).all() and (got[~got_sure] == -1).all()
        sure = got_sure & want_sure
        both += int(sure.sum())
        agreed += int((got[sure] == want[sure]).sum())
        if masked:
            assert allowed[got_sure, got[got_sure]].all()
        assert got_sure.mean() > 0.9 - 0.3 * masked  # no allowed action at all is not sure
    assert agreed == both and both > 0.5 * len(widths) * B
    # the kernel reads without bounds checks: arguments of the wrong shape go to the torch head
    pooled, ratio = torch.randn(5, 8), np.full(5, 0.5)
    logits = None if probes else torch.randn(5, 6)
    assert router.choose_batch(0, pooled, ratio[:4], logits) is None
    assert router.choose_batch(0, pooled, ratio, logits, np.ones((5, A + 1), dtype=bool)) is None
    if not probes:
        assert router.choose_batch(0, pooled, ratio, logits[:4]) is None
    assert router.choose_batch(0, pooled, ratio, logits) is not None
