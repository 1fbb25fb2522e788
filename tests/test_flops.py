"""Cost accounting and conditional execution, checked independently of the code under test.

* FLOPs: what the walk and the envs report equals what ``torch.utils.flop_counter.FlopCounterMode``
  counts for the operations that actually ran. A 0/1 mask multiply would be counted at full cost,
  so equality for cheap routes also proves that pruned groups and skipped blocks are not computed.
  (With the walk's group merging on, a mixed batch may run a group at a wider width, and a block
  nearly every sample runs may run on all of them: the executed work is then bounded, not equal;
  the exact checks run with both off, ``exact_execution``.)
* Outputs: the walk's logits equal those of a plain reference implementation written here, which
  computes every channel and block densely and then zeroes / bypasses what the route drops.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_test_data, make_env, make_net, mode_of, registered_ids
from torch.utils.flop_counter import FlopCounterMode

from dyncnn_gym.models import ARCHS, ChannelVGG, ResNet, build
from dyncnn_gym.walk import Walk, run_routes

CASES = [
    (arch, mode, groups)
    for arch in ("vgg", "resnet8", "resnet14", "resnet8-lite")
    for mode in ARCHS[arch]
    for groups in (2, 4, 8)
]


def counted(fn, *args, **kwargs):
    """(result, FLOPs counted by FlopCounterMode while running ``fn``)."""
    with FlopCounterMode(display=False) as fc:
        out = fn(*args, **kwargs)
    return out, fc.get_total_flops()


def random_routes(net, mode, B, seed):
    T, A = net.num_decisions(mode), net.num_actions(mode)
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randint(0, A, (B, T), generator=gen)
    acts[0] = A - 1  # one full route,
    acts[1] = 0  # one cheapest,
    return acts  # the rest mixed


def images(data_name, n, seed=0):
    d = load_test_data(data_name)
    idx = np.random.default_rng(seed).choice(len(d.test), n, replace=False)
    return torch.as_tensor(d.test.images[idx])


# ------------------------------------------------------------------------------ dense reference


def _bn(bn, x):
    """Eval-mode batch-norm over all channels of ``x`` (what the network would do at full width)."""
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _zero_from(x, c):
    x = x.clone()
    x[:, c:] = 0
    return x


def _ref_block(blk, x, inner, variant):
    """A residual block computed densely, its inner channels from ``inner`` on zeroed."""
    y = F.conv2d(x, blk.conv1.weight, None, stride=blk.stride, padding=1)
    y = _zero_from(F.relu(_bn(blk.bn1, y)), inner)
    y = _bn(blk.bn2.bns[variant], F.conv2d(y, blk.conv2.weight, None, padding=1))
    return F.relu(y + blk.shortcut(x))


@torch.no_grad()
def reference_logits(net, mode, x, actions):
    """Logits of one image ``x [1, C, H, W]`` along ``actions`` (length T), dense and masked."""
    actions = [int(a) for a in actions]
    if isinstance(net, ChannelVGG):
        g = net.groups
        h = F.relu(_bn(net.bns[0], F.conv2d(x, net.convs[0].weight, None, padding=1)))
        h = F.max_pool2d(h, 2) if 0 in net.pool_after else h
        prev = g - 1
        for t, a in enumerate(actions):
            layer = t + 1
            y = _bn(net.bns[layer].bns[prev], F.conv2d(h, net.convs[layer].weight, None, padding=1))
            h = F.relu(_zero_from(y, (a + 1) * net.widths[layer] // g))
            h = F.max_pool2d(h, 2) if layer in net.pool_after else h
            prev = a
        return F.linear(h.mean(dim=(2, 3)), net.fc.weight, net.fc.bias)
    assert isinstance(net, ResNet)
    g = net.groups
    h = F.relu(_bn(net.bn1, F.conv2d(x, net.conv1.weight, None, stride=net.conv1.stride, padding=1)))
    blocks = list(net.blocks)
    if mode == "skip":
        h = _ref_block(blocks[0], h, blocks[0].c_out, g - 1)
        for blk, a in zip(blocks[1:], actions):
            h = _ref_block(blk, h, blk.c_out, g - 1) if a == 1 else blk.shortcut(h)
    elif mode == "route":
        for blk, a in zip(blocks, actions):
            h = _ref_block(blk, h, a * blk.c_out // g, a - 1) if a else blk.shortcut(h)
    else:
        for blk, a in zip(blocks, actions):
            h = _ref_block(blk, h, (a + 1) * blk.c_out // g, a)
    return F.linear(h.mean(dim=(2, 3)), net.fc.weight, net.fc.bias)


# ------------------------------------------------------------------------------ the walk


@pytest.mark.parametrize("arch,mode,groups", CASES)
def test_walk_flops_equal_flop_counter_and_outputs_equal_reference(arch, mode, groups, exact_execution):
    net = make_net(arch, "user12", groups)
    table = net.cost_table(mode)
    B = 6
    x = images("user12", B)
    acts = random_routes(net, mode, B, seed=groups)
    with torch.no_grad():
        (logits, flops), total = counted(run_routes, net, mode, x, acts)
    expected = [table.path_flops(a.tolist()) for a in acts]
    assert flops.dtype == torch.int64 and flops.tolist() == expected
    assert total == sum(expected), "the batched walk ran other work than the routes ask for"
    assert int(flops[0]) == table.full and int(flops[1]) < table.full
    for i in range(B):
        with torch.no_grad():
            (li, fi), ci = counted(run_routes, net, mode, x[i : i + 1], acts[i : i + 1])
        assert ci == int(fi[0]) == expected[i], f"sample {i}: route {acts[i].tolist()}"
        torch.testing.assert_close(li[0], logits[i], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(reference_logits(net, mode, x[i : i + 1], acts[i])[0], logits[i], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch,mode,groups", CASES)
def test_fused_path_equals_unfused_path(arch, mode, groups):
    """Eval + no-grad uses folded conv/batch-norm kernels; with autograd on it does not."""
    net = make_net(arch, "user12", groups)
    x = images("user12", 5, seed=1)
    acts = random_routes(net, mode, 5, seed=7 + groups)
    with torch.no_grad():
        fused, f1 = run_routes(net, mode, x, acts)
    with torch.enable_grad():
        plain, f2 = run_routes(net, mode, x, acts)
    assert plain.requires_grad
    torch.testing.assert_close(fused, plain.detach(), rtol=1e-4, atol=1e-4)
    assert f1.tolist() == f2.tolist()


@pytest.mark.parametrize("arch,mode", [(a, m) for a in ("vgg", "resnet8", "resnet14") for m in ARCHS[a]])
def test_train_mode_flops_equal_flop_counter(arch, mode):
    """In training (batch statistics, autograd) the same convolutions run as in inference.

    (32x32 images: a single image whose feature map is 1x1 has no batch statistics.)"""
    net = make_net(arch, "shapes", 4, seed=3, cached=False).train()
    table = net.cost_table(mode)
    x = images("shapes", 8, seed=2)
    acts = random_routes(net, mode, 8, seed=5)
    (logits, flops), total = counted(run_routes, net, mode, x, acts)
    assert logits.requires_grad
    expected = [table.path_flops(a.tolist()) for a in acts]
    assert flops.tolist() == expected
    assert total == sum(expected)  # the forward pass only; backward runs below, outside the counter
    logits.sum().backward()
    used = [p for p in net.parameters() if p.grad is not None]
    assert used, "gradients reach the backbone"


@pytest.mark.parametrize("arch,mode,groups", CASES)
def test_full_network_flops_equal_flop_counter(arch, mode, groups):
    net = make_net(arch, "user12", groups)
    x = images("user12", 3)
    with torch.no_grad():
        _, total = counted(net.full_forward, x, mode)
    assert total == 3 * net.cost_table(mode).full


@pytest.mark.parametrize("arch,mode", [(a, m) for a in ("vgg", "resnet8", "resnet14", "resnet8-lite") for m in ARCHS[a]])
def test_less_computation_is_strictly_cheaper_when_counted(arch, mode):
    """Lowering any single decision (fewer groups, or a skip) strictly lowers the counted FLOPs,
    and so do uniformly narrower routes: dropped work is really not run."""
    net = make_net(arch, "shapes", 4)
    x = images("shapes", 1)
    T, A = net.num_decisions(mode), net.num_actions(mode)
    table = net.cost_table(mode)

    def count(route):
        with torch.no_grad():
            (_, flops), total = counted(run_routes, net, mode, x, torch.tensor([route]))
        assert total == int(flops[0]) == table.path_flops(route)
        return total

    full = count([A - 1] * T)
    assert full == table.full
    for t in range(T):
        route = [A - 1] * T
        route[t] = 0
        assert count(route) < full, f"dropping work at decision {t} saved nothing"
    uniform = [count([a] * T) for a in range(A)]
    assert all(lo < hi for lo, hi in zip(uniform, uniform[1:]))


@pytest.mark.parametrize(
    "arch,in_shape",
    [("vgg", (2, 11, 13)), ("resnet8", (2, 11, 13)), ("resnet14", (1, 5, 7)), ("resnet8-lite", (3, 9, 15))],
)
def test_odd_input_sizes_are_counted_exactly(arch, in_shape, exact_execution):
    torch.manual_seed(0)
    net = build(arch, in_shape, 4, groups=2).eval()
    x = torch.randn(2, *in_shape)
    for mode in net.modes:
        with torch.no_grad():
            _, total = counted(net.full_forward, x, mode)
            acts = random_routes(net, mode, 2, seed=1)
            (_, flops), routed = counted(run_routes, net, mode, x, acts)
        assert total == 2 * net.cost_table(mode).full
        assert routed == int(flops.sum())


def test_cost_tables_belong_to_their_network():
    """A network never gets the cached cost table of another one (e.g. a dead network whose
    memory address the new one reuses)."""
    from dyncnn_gym.walk import cost_tensors

    reused = 0
    addresses = set()
    for i in range(60):
        arch = ("vgg", "resnet8")[i % 2]
        net = build(arch, (1, 8, 8), 3, groups=2)
        reused += id(net) in addresses
        addresses.add(id(net))
        table, steps, head = cost_tensors(net, "channel")
        fresh = net.cost_table("channel")
        assert table.full == fresh.full and steps.shape == fresh.steps.shape, (
            f"{arch} at a reused address got another network's cost table"
        )
        del net, table, steps, head
    if not reused:
        pytest.skip("no memory address was reused in this run; nothing was exercised")


@pytest.mark.parametrize("data_name,batch", [("user12", 24), ("shapes", 64)])
def test_merged_groups_bound_the_executed_work(data_name, batch):
    """With merging on (the default), a mixed batch may compute some groups at a wider width: the
    accounting stays exact, executed FLOPs never fall below the counted ones, exceed them by at most
    ``(A - 1) * MERGE_FLOPS`` per chunk and decision, and a batch of cheapest routes executes exactly
    its count (never the full network's work)."""
    import dyncnn_gym.walk as walk_module

    net = make_net("vgg", data_name, 4)
    table, T, A = net.cost_table("channel"), net.num_decisions("channel"), net.num_actions("channel")
    x = torch.as_tensor(load_test_data(data_name).train.images[:batch])
    acts = torch.as_tensor(np.random.default_rng(3).integers(0, A, (batch, T)))
    with torch.no_grad():
        (logits, flops), executed = counted(run_routes, net, "channel", x, acts)
        exact = sum(table.path_flops(r) for r in acts.tolist())
        assert flops.tolist() == [table.path_flops(r) for r in acts.tolist()]
        assert exact <= executed <= exact + T * A * (A - 1) * walk_module.MERGE_FLOPS
        if data_name == "user12":  # 12x12 maps: merging is cheap there, so it happens
            assert executed > exact
        else:  # 32x32 images: few merges pay
            assert executed <= 1.5 * exact
        for i in range(0, batch, 7):  # every sample still gets its own route's output
            one, _ = run_routes(net, "channel", x[i : i + 1], acts[i : i + 1])
            torch.testing.assert_close(one[0], logits[i], rtol=1e-4, atol=1e-4)
        cheapest = torch.zeros((batch, T), dtype=torch.int64)
        (_, f0), executed0 = counted(run_routes, net, "channel", x, cheapest)
        assert executed0 == int(f0.sum()) == batch * table.path_flops([0] * T) < batch * table.full
        mixed_cheap = cheapest.clone()
        mixed_cheap[::2, -1] = 1  # two cheap groups at the last decision
        (_, f1), executed1 = counted(run_routes, net, "channel", x, mixed_cheap)
        assert executed1 < batch * table.full / 2


def test_dense_skips_bound_the_executed_work_and_keep_every_route(monkeypatch):
    """At inference a residual block that at most ``DENSE_SKIP_SHARE`` of a chunk's rows skip runs on
    the whole chunk: the accounting stays exact, the executed FLOPs exceed the counted ones by at
    most the skipping rows' share of such blocks (the block executes at most ``1 / (1 -
    DENSE_SKIP_SHARE)`` its count), every sample gets its own route's output, and a block most rows
    skip, a batch of cheapest routes and training mode execute exactly what they count."""
    import dyncnn_gym.walk as walk_module

    monkeypatch.setattr(walk_module, "MERGE_FLOPS", 0)
    monkeypatch.setattr(walk_module, "DENSE_SKIP_SHARE", 0.125)
    net = make_net("resnet20-lite", "user12", 4, cached=False)  # put in training mode below
    table, T = net.cost_table("skip"), net.num_decisions("skip")
    B = 32
    train = load_test_data("user12").train.images
    x = torch.as_tensor(train[np.arange(B) % len(train)])
    acts = torch.ones((B, T), dtype=torch.int64)
    acts[:3, 0] = 0  # 3 of 32 skip decision 0: within the share (4 of 32), so it runs densely
    acts[:, 1] = 0
    acts[:5, 1] = 1  # 5 of 32 run decision 1: computed for those 5 only
    acts[10:12, 2] = 0  # 2 of 32 skip decision 2, a block that changes the map's shape: dense too
    block = [int(table.steps[t, 1, 1]) for t in range(T)]
    identity = [not net.blocks[1 + t].changes_shape for t in range(T)]
    assert identity[:3] == [True, True, False], "the test needs identity blocks at decisions 0, 1 and a downsampling one at 2"
    with torch.no_grad():
        (logits, flops), executed = counted(run_routes, net, "skip", x, acts)
        monkeypatch.setattr(walk_module, "DENSE_SKIP_SHARE", 0)
        (exact_logits, exact_flops), exact_executed = counted(run_routes, net, "skip", x, acts)
        monkeypatch.setattr(walk_module, "DENSE_SKIP_SHARE", 0.125)
    exact = sum(table.path_flops(r) for r in acts.tolist())
    assert flops.tolist() == exact_flops.tolist() == [table.path_flops(r) for r in acts.tolist()]
    assert exact_executed == exact
    assert executed == exact + 3 * block[0] + 2 * block[2]  # the skipping rows of decisions 0 and 2
    assert executed - exact <= walk_module.DENSE_SKIP_SHARE * B * sum(block)
    torch.testing.assert_close(logits, exact_logits, rtol=1e-5, atol=1e-5)
    for i in (0, 2, 3, 7, 10, 12):  # the skipping rows got their own output; the others ran the block
        with torch.no_grad():
            one, _ = run_routes(net, "skip", x[i : i + 1], acts[i : i + 1])
        torch.testing.assert_close(one[0], logits[i], rtol=1e-4, atol=1e-4)
    cheapest = torch.zeros((B, T), dtype=torch.int64)
    with torch.no_grad():
        (_, f0), executed0 = counted(run_routes, net, "skip", x, cheapest)
    assert executed0 == int(f0.sum()) == B * table.path_flops([0] * T)
    net.train()
    with torch.no_grad():
        (_, ft), executed_t = counted(run_routes, net, "skip", x, acts)
    assert executed_t == int(ft.sum()) == exact


# ------------------------------------------------------------------------------ the walk, step by step


@pytest.mark.parametrize("arch,mode", [("vgg", "channel"), ("resnet14", "skip"), ("resnet8", "channel"), ("resnet8", "route")])
def test_walk_steps_report_each_decisions_cost(arch, mode, exact_execution):
    net = make_net(arch, "user12", 4)
    table = net.cost_table(mode)
    x = images("user12", 4, seed=3)
    acts = random_routes(net, mode, 4, seed=9)
    with torch.no_grad():
        walk, stem = counted(Walk, net, mode, x)
        assert stem == 4 * table.stem and walk.flops.tolist() == [table.stem] * 4
        prev = torch.full((4,), table.num_actions - 1)
        for t in range(walk.T):
            assert walk.pooled().shape == (4, net.feature_widths(mode)[t])
            cost, c = counted(walk.step, acts[:, t])
            assert cost.tolist() == [int(table.steps[t, int(p), int(a)]) for p, a in zip(prev, acts[:, t])]
            assert c == int(cost.sum())
            prev = acts[:, t]
        assert walk.done
        _, c = counted(walk.logits)
        assert c == int(table.head[acts[:, -1]].sum())
        _, c = counted(walk.logits)  # the head is run (and charged) once
        assert c == 0
    assert walk.actions.tolist() == acts.tolist()
    assert walk.flops.tolist() == [table.path_flops(a.tolist()) for a in acts]


@pytest.mark.parametrize("arch,mode", [(a, m) for a in ("vgg", "resnet8") for m in ARCHS[a]])
def test_one_image_is_accounted_as_in_a_batch_whenever_its_books_are_read(arch, mode):
    """A walk of one image keeps its accounting in Python ints until it is first read; read before,
    during or after the walk (and then held while it goes on), or through ``spent`` / ``accounts``,
    it equals the same image's row in a batch, the FLOPs the counter sees and the cost table's."""
    net = make_net(arch, "user12", 4)
    table = net.cost_table(mode)
    x = images("user12", 3, seed=5)
    acts = random_routes(net, mode, 3, seed=2)
    with torch.no_grad():
        batch = Walk(net, mode, x)
        for t in range(batch.T):
            batch.step(acts[:, t])
        batch_logits = batch.logits()
        for i in range(3):
            for read_at in (None, 0, batch.T // 2, batch.T):
                w, c_stem = counted(Walk, net, mode, x[i : i + 1])
                held, executed = None, c_stem
                for t in range(w.T):
                    if t == read_at:
                        held = w.flops  # from here on the walk keeps these tensors up to date
                        assert held.tolist() == [w.spent()]
                    assert w.spent() == table.stem + sum(
                        int(table.steps[k, int(acts[i, k - 1]) if k else table.num_actions - 1, int(acts[i, k])])
                        for k in range(t)
                    )
                    _, c = counted(w.advance, int(acts[i, t]))
                    executed += c
                if read_at == w.T:
                    held = w.flops
                logits, c = counted(w.logits)
                executed += c
                actions, flops = w.accounts()
                assert flops.tolist() == [executed] == [table.path_flops(acts[i].tolist())] == [batch.flops[i].item()]
                assert actions.tolist() == [acts[i].tolist()] == w.actions.tolist()
                assert w.spent() == executed and w.prev.tolist() == [int(acts[i, -1])]
                if held is not None:
                    assert held.tolist() == [executed], f"a FLOPs tensor read at decision {read_at} went stale"
                torch.testing.assert_close(logits, batch_logits[i : i + 1], rtol=1e-4, atol=1e-5)
                assert len(w) == 1 and len(w.select([0])) == 1 and w.select([0]).flops.tolist() == [executed]


def test_a_walk_casts_images_to_a_replaced_parameters_dtype():
    """The walk casts images to the backbone's parameter dtype; it caches where the first parameter
    lives, not its dtype, and notices that parameter being replaced."""
    net = make_net("vgg", "user12", 4)
    x = images("user12", 2)
    with torch.no_grad():
        ref = run_routes(net, "channel", x, random_routes(net, "channel", 2, seed=0))[0]
        net.double()  # parameters converted in place
        assert run_routes(net, "channel", x, random_routes(net, "channel", 2, seed=0))[0].dtype == torch.float64
        state = {k: v.float() for k, v in net.state_dict().items()}
        net.load_state_dict(state, assign=True)  # parameters replaced by new float32 ones
        out = run_routes(net, "channel", x, random_routes(net, "channel", 2, seed=0))[0]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


# ------------------------------------------------------------------------------ the envs


@pytest.mark.parametrize(
    "env_id,arch",
    [(e, a) for e in registered_ids() for a in ("vgg", "resnet8", "resnet14") if mode_of(e) in ARCHS[a]],
)
def test_env_reported_flops_equal_flop_counter(env_id, arch):
    """Everything an env's backbone computes for one episode (reset + steps) is counted as reported.
    (The probe observations of the -v1 defaults are the agent's overhead, one small matrix product
    per decision that the FLOPs leave out by definition: the features are observed here.)"""
    env = make_env(env_id, arch, "shapes", groups=4, obs="features")
    rng = np.random.default_rng(0)
    for episode in range(3):
        with FlopCounterMode(display=False) as fc:
            _, info = env.reset(seed=episode)
            done = False
            while not done:
                _, _, done, _, info = env.step(int(rng.integers(env.action_space.n)))
        assert fc.get_total_flops() == info["flops"]
        assert info["flops"] == env.unwrapped.backbone.cost_table(mode_of(env_id)).path_flops(info["actions"])
