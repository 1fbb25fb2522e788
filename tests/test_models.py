"""The dynamic backbones: shapes, decision counts, cost tables, validation, kernel caching."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_bn
from torch.utils.flop_counter import FlopCounterMode

from dyncnn_gym.models import ARCHS, MODES, ChannelVGG, CostTable, DynamicNet, ResNet, build, layers
from dyncnn_gym.models.layers import max_pool2x2
from dyncnn_gym.models.resnet import RESNET_DEPTHS
from dyncnn_gym.models.vgg import VGG_CONFIGS
from dyncnn_gym.walk import run_routes


def counted_full(net, mode, x):
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        out = net.full_forward(x, mode)
    return out, fc.get_total_flops()


# ------------------------------------------------------------------------------ inference pooling


@pytest.mark.parametrize(
    ("shape", "channels_last", "native"),
    [
        ((1, 16, 8, 8), False, True),
        ((1, 16, 8, 8), True, True),
        ((1, 16, 32, 32), False, False),  # 16,384 numbers: NCHW above a quarter of NATIVE_POOL_MAX
        ((1, 16, 32, 32), True, True),
        ((2, 8, 31, 33), True, True),  # odd sizes: trailing rows and columns dropped
        ((2, 8, 31, 33), False, False),
        ((4, 64, 16, 16), True, False),
        ((64, 16, 9, 8), True, False),
    ],
)
def test_inference_pooling_equals_max_pool2d_on_both_sides_of_the_native_threshold(monkeypatch, shape, channels_last, native):
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = F.max_pool2d(x, 2)
    calls = []
    monkeypatch.setattr(layers, "F", SimpleNamespace(max_pool2d=lambda *a: calls.append(a) or F.max_pool2d(*a)))
    y = max_pool2x2(x)
    assert torch.equal(y, expected)
    assert bool(calls) == native
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last


# ------------------------------------------------------------------------------ ResNets


@pytest.mark.parametrize("depth", [8, 14, 20, 32, 56, 110])
def test_resnet_depths_build_and_count_decisions(depth):
    n = (depth - 2) // 6
    net = build(f"resnet{depth}", (1, 8, 8), 10, groups=4).eval()
    assert isinstance(net, ResNet) and net.arch == f"resnet{depth}"
    assert len(net.blocks) == 3 * n
    assert net.num_decisions("skip") == 3 * n - 1  # the first block always runs
    assert net.num_decisions("channel") == 3 * n  # every block has a width decision
    assert net.num_actions("skip") == 2 and net.num_actions("channel") == 4
    assert len(net.feature_widths("skip")) == 3 * n - 1
    assert len(net.feature_widths("channel")) == 3 * n
    x = torch.randn(2, 1, 8, 8)
    for mode in ("skip", "channel"):
        out, flops = counted_full(net, mode, x)
        assert out.shape == (2, 10)
        assert flops == 2 * net.cost_table(mode).full
    assert net.cost_table("skip").full == net.cost_table("channel").full  # one full network


@pytest.mark.parametrize("depth", [8, 20, 110])
def test_lite_resnets_have_a_stride_2_stem(depth):
    full = build(f"resnet{depth}", (3, 32, 32), 10)
    lite = build(f"resnet{depth}-lite", (3, 32, 32), 10).eval()
    assert lite.arch == f"resnet{depth}-lite" and lite.conv1.stride == (2, 2)
    assert lite.num_decisions("skip") == full.num_decisions("skip")
    assert lite.num_decisions("channel") == full.num_decisions("channel")
    # every stage at half the resolution: a quarter of the conv FLOPs (the head is the same)
    ratio = lite.cost_table("skip").full / full.cost_table("skip").full
    assert 0.24 < ratio < 0.26
    out, flops = counted_full(lite, "skip", torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and flops == 2 * lite.cost_table("skip").full
    rebuilt = build(f"resnet{depth}-lite", (3, 32, 32), 10, **lite.config())
    rebuilt.load_state_dict(lite.state_dict())


def test_resnet20_full_cost_matches_the_literature():
    """CIFAR ResNet-20 has 40.55 M multiply-accumulates (He et al. 2016); FLOPs are 2 per MAC."""
    net = build("resnet20", (3, 32, 32), 10)
    assert net.cost_table("skip").full == 2 * 40_551_040
    assert sum(p.numel() for n, p in net.named_parameters() if "bn" not in n) == pytest.approx(0.27e6, rel=0.02)


def test_all_resnet_depths_are_6n_plus_2():
    assert {8, 14, 20, 32, 56, 110} <= set(RESNET_DEPTHS)
    assert all((d - 2) % 6 == 0 for d in RESNET_DEPTHS)
    with pytest.raises(ValueError, match="depth=9"):
        ResNet((3, 32, 32), 10, depth=9)
    with pytest.raises(ValueError, match="depth"):
        build("resnet20", (3, 32, 32), 10, depth=32)


def test_resnet_skipping_a_shape_changing_block_is_free_and_documented():
    net = build("resnet14", (3, 16, 16), 10, groups=4)
    table = net.cost_table("skip")
    changing = [t for t in range(table.num_decisions) if net.blocks[1 + t].changes_shape]
    assert len(changing) == 2  # the first block of stages 2 and 3
    for t in range(table.num_decisions):
        assert (table.steps[t, :, 0] == 0).all(), "a skipped block costs nothing"
        assert (table.steps[t, :, 1] > 0).all()
    doc = ResNet.__doc__ or ""
    assert "shape" in doc and "skip" in doc.lower()
    # the skipped shape-changing block still produces the shape the next block expects
    x = torch.randn(3, 3, 16, 16)
    route = torch.ones(3, table.num_decisions, dtype=torch.long)
    route[:, changing] = 0
    with torch.no_grad():
        logits, _ = run_routes(net.eval(), "skip", x, route)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()


def test_resnet_channel_mode_keeps_the_residual_stream_full_width():
    net = build("resnet8", (3, 16, 16), 10, groups=4).eval()
    h = net.stem(torch.randn(2, 3, 16, 16), "channel")
    for t in range(net.num_decisions("channel")):
        h = net.decision("channel", t, h, 3, 0)
        assert h.shape[1] == net.blocks[t].c_out


# ------------------------------------------------------------------------------ VGGs


@pytest.mark.parametrize("arch", sorted(VGG_CONFIGS))
def test_vgg_variants_build_and_cost_exactly(arch):
    widths, pools = VGG_CONFIGS[arch]
    net = build(arch, (3, 32, 32), 10, groups=4).eval()
    assert isinstance(net, ChannelVGG) and net.modes == ("channel",)
    assert net.num_decisions("channel") == len(widths) - 1  # the first conv is the stem
    assert net.feature_widths("channel") == list(widths[:-1])
    out, flops = counted_full(net, "channel", torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 10)
    assert flops == net.cost_table("channel").full


def test_vgg_widths_and_pools_are_configurable():
    net = build("vgg", (1, 12, 12), 3, groups=2, widths=(8, 8, 16), pool_after=(0, 2)).eval()
    assert net.num_decisions("channel") == 2
    assert net.config() == {"widths": [8, 8, 16], "pool_after": [0, 2]}
    out, flops = counted_full(net, "channel", torch.randn(2, 1, 12, 12))
    assert out.shape == (2, 3) and flops == 2 * net.cost_table("channel").full


@pytest.mark.parametrize("arch", ["vgg", "vgg16", "resnet8", "resnet20"])
def test_config_rebuilds_the_same_network(arch):
    torch.manual_seed(0)
    a = build(arch, (3, 32, 32), 7, groups=2)
    b = build(arch, (3, 32, 32), 7, groups=2, **a.config())
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    b.load_state_dict(a.state_dict())


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("arch,groups", [("vgg", 3), ("vgg16", 5), ("resnet20", 3), ("resnet8", 6), ("vgg", 64)])
def test_groups_must_divide_every_width(arch, groups):
    with pytest.raises(ValueError) as exc:
        build(arch, (3, 32, 32), 10, groups=groups)
    msg = str(exc.value)
    assert f"groups={groups}" in msg
    widths = VGG_CONFIGS[arch][0] if arch in VGG_CONFIGS else (16, 32, 64)
    assert str(tuple(widths)) in msg, f"the message should name the widths: {msg}"


@pytest.mark.parametrize("groups", [0, -2, 2.0, "4", True])
def test_groups_must_be_a_positive_integer(groups):
    with pytest.raises(ValueError, match="groups"):
        build("vgg", (3, 32, 32), 10, groups=groups)


@pytest.mark.parametrize("arch,in_shape", [("vgg16", (3, 8, 8)), ("vgg", (1, 4, 4)), ("vgg11", (3, 16, 16))])
def test_inputs_too_small_for_an_arch(arch, in_shape):
    with pytest.raises(ValueError) as exc:
        build(arch, in_shape, 10)
    msg = str(exc.value)
    assert "too small" in msg and f"{in_shape[1]}x{in_shape[2]}" in msg and repr(arch) in msg


def test_smallest_inputs_that_fit():
    for arch, size in (("vgg", 8), ("vgg16", 32), ("resnet20", 1)):
        net = build(arch, (1, size, size), 2).eval()
        with torch.no_grad():
            assert net.full_forward(torch.randn(1, 1, size, size)).shape == (1, 2)


def test_unknown_arch_and_unsupported_mode():
    with pytest.raises(ValueError) as exc:
        build("resnet21", (3, 32, 32), 10)
    assert "'resnet21'" in str(exc.value) and "'vgg'" in str(exc.value) and "'resnet20'" in str(exc.value)
    net = build("vgg", (3, 32, 32), 10)
    with pytest.raises(ValueError) as exc:
        net.cost_table("skip")
    assert "'skip'" in str(exc.value) and "'channel'" in str(exc.value)
    with pytest.raises(ValueError, match="num_classes"):
        build("vgg", (3, 32, 32), 1)


def test_arch_table_lists_the_modes():
    assert set(MODES) == {"channel", "skip", "route"}
    assert ARCHS["vgg"] == ("channel",)
    assert set(ARCHS["resnet20"]) == {"channel", "skip", "route"}
    assert ARCHS["resnet20-lite-exits"] == ("exit",)
    assert all(isinstance(build(a, (3, 32, 32), 10), DynamicNet) for a in ("vgg", "resnet8"))


# ------------------------------------------------------------------------------ cost tables


@pytest.mark.parametrize(
    "arch,mode,groups", [("vgg", "channel", 2), ("resnet8", "channel", 2), ("resnet14", "skip", 4), ("vgg", "channel", 4)]
)
def test_cost_table_paths_and_min_to_go_by_brute_force(arch, mode, groups):
    net = build(arch, (1, 12, 12), 3, groups=groups)
    table = net.cost_table(mode)
    T, A = table.num_decisions, table.num_actions
    assert table.steps.shape == (T, A, A) and table.steps.dtype == np.int64
    assert table.head.shape == (A,) and table.stem > 0
    routes = list(itertools.product(range(A), repeat=T))
    cost = {r: table.path_flops(r) for r in routes}
    assert max(cost.values()) == table.full == cost[(A - 1,) * T]
    m = table.min_to_go()
    assert m.shape == (T + 1, A)

    def prefix_cost(prefix):
        total, prev = table.stem, A - 1
        for u, a in enumerate(prefix):
            total, prev = total + int(table.steps[u, prev, a]), a
        return total, prev

    # min_to_go[t, prev]: the least FLOPs any completion of a route still spends from decision t
    for t in range(T + 1):
        for prefix in itertools.product(range(A), repeat=t):
            spent, prev = prefix_cost(prefix)
            best = min(c for r, c in cost.items() if r[:t] == prefix)
            assert spent + int(m[t, prev]) == best, (t, prefix)


def test_channel_costs_grow_with_the_action():
    for arch in ("vgg", "resnet14"):
        table = build(arch, (3, 32, 32), 10, groups=8).cost_table("channel")
        assert (np.diff(table.steps, axis=2) > 0).all(), f"{arch}: more groups must cost more"
        assert (np.diff(table.steps, axis=1) >= 0).all()


@pytest.mark.parametrize(("arch", "mode"), [("vgg", "channel"), ("resnet20", "skip"), ("resnet20", "route")])
def test_a_forward_pass_reads_the_decision_count_without_rebuilding_the_cost_table(monkeypatch, arch, mode):
    net = build(arch, (3, 16, 16), 10).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = net.full_forward(x, mode)
        T = net.num_decisions(mode)

        def rebuilt(*args, **kwargs):
            raise AssertionError("the cost table was built again")

        monkeypatch.setattr(net, "cost_table", rebuilt)
        assert net.num_decisions(mode) == T
        assert torch.equal(net.full_forward(x, mode), expected)


def test_cost_table_is_a_plain_dataclass():
    t = CostTable(stem=10, steps=np.array([[[1, 2], [3, 4]]], dtype=np.int64), head=np.array([5, 6], dtype=np.int64))
    assert t.full == 10 + 4 + 6 and t.path_flops([0]) == 10 + 3 + 5
    assert t.num_decisions == 1 and t.num_actions == 2


# ------------------------------------------------------------------------------ kernel caching


@pytest.mark.parametrize("arch,mode", [("vgg", "channel"), ("resnet8", "skip"), ("resnet8", "channel")])
def test_folded_kernels_follow_weight_changes(arch, mode):
    """The eval/no-grad path caches folded kernels; an optimiser step or load_state_dict must be seen."""
    torch.manual_seed(0)
    net = randomize_bn(build(arch, (1, 16, 16), 3, groups=2), seed=1).eval()
    x = torch.randn(4, 1, 16, 16)
    T, A = net.num_decisions(mode), net.num_actions(mode)
    acts = torch.randint(0, A, (4, T), generator=torch.Generator().manual_seed(0))

    def fused():
        with torch.no_grad():
            return run_routes(net, mode, x, acts)[0]

    def plain():
        with torch.enable_grad():
            return run_routes(net, mode, x, acts)[0].detach()

    before = fused()
    torch.testing.assert_close(before, plain(), rtol=1e-4, atol=1e-4)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net.train()
    loss = run_routes(net, mode, x, acts)[0].square().mean()
    loss.backward()
    opt.step()
    net.eval()
    after = fused()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, plain(), rtol=1e-4, atol=1e-4)
    other = randomize_bn(build(arch, (1, 16, 16), 3, groups=2), seed=9)
    net.load_state_dict(other.state_dict())
    torch.testing.assert_close(fused(), plain(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch,mode", [("vgg", "channel"), ("resnet8", "skip")])
def test_folded_kernels_follow_swapped_storage_replaced_parameters_and_dtype(arch, mode):
    """Changes that leave a tensor's version counter alone are seen too: new storage under the same
    parameter (``vector_to_parameters`` sets ``.data``), a parameter replaced by another object, and
    a move to another dtype."""
    net = randomize_bn(build(arch, (1, 16, 16), 3, groups=2), seed=1).eval()
    x = torch.randn(4, 1, 16, 16)
    T, A = net.num_decisions(mode), net.num_actions(mode)
    acts = torch.randint(0, A, (4, T), generator=torch.Generator().manual_seed(0))

    def fused(x=x):
        with torch.no_grad():
            return run_routes(net, mode, x, acts)[0]

    def plain(x=x):
        with torch.enable_grad():
            return run_routes(net, mode, x, acts)[0].detach()

    before = fused()
    params = list(net.parameters())
    torch.nn.utils.vector_to_parameters(torch.nn.utils.parameters_to_vector(params).detach() * 1.5, params)
    swapped = fused()
    assert not torch.allclose(before, swapped)
    torch.testing.assert_close(swapped, plain(), rtol=1e-4, atol=1e-4)
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    conv.weight = torch.nn.Parameter(-conv.weight.detach())
    replaced = fused()
    assert not torch.allclose(swapped, replaced)
    torch.testing.assert_close(replaced, plain(), rtol=1e-4, atol=1e-4)
    net.double()
    assert fused(x.double()).dtype == torch.float64
    torch.testing.assert_close(fused(x.double()), plain(x.double()), rtol=1e-8, atol=1e-8)
