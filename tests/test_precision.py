"""Reduced-precision backbones (``dtype="bfloat16" | "float16"``): same FLOPs, nearly the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_test_data, make_net, mode_of, registered_ids

from dyncnn_gym import evaluate
from dyncnn_gym.envs.core import RoutingCore

ARCH = {"channel": "vgg", "skip": "resnet14", "route": "resnet14"}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CASES = [
    ("cpu", "bfloat16"),
    ("cpu", "float16"),
    pytest.param("cuda", "float16", marks=CUDA),
    pytest.param("cuda", "bfloat16", marks=CUDA),
]


def _route_by_decision(T: int, A: int, F: int):
    """A deterministic policy that reads only the decision index: action (t + 1) % A."""

    def policy(obs: np.ndarray) -> np.ndarray:
        t = obs[:, F : F + T].argmax(1)
        return (t + 1) % A

    return policy


@pytest.mark.parametrize("env_id", registered_ids())
@pytest.mark.parametrize("device,dtype", CASES)
def test_low_precision_keeps_the_flops_and_nearly_the_predictions(env_id, device, dtype):
    mode = mode_of(env_id)
    net = make_net(ARCH[mode], "digits").to(device)
    kw = {"dataset": load_test_data("digits"), "backbone": net, "device": device, "obs": "probe"}
    full = RoutingCore(mode, 8, split="test", **kw)
    low = RoutingCore(mode, 8, split="test", dtype=dtype, **kw)
    assert low.net is not net and next(low.net.parameters()).dtype == getattr(torch, dtype)
    assert next(net.parameters()).dtype == torch.float32  # the caller's backbone is never cast
    assert RoutingCore(mode, 2, split="test", dtype=dtype, **kw).net is low.net  # one shared copy
    policy = _route_by_decision(full.T, full.A, full.feat_dim)
    a = evaluate(policy, env_id, core=full, per_image=True)["images"]
    b = evaluate(policy, env_id, core=low, per_image=True)["images"]
    assert np.array_equal(a["actions"], b["actions"]) and np.array_equal(a["flops"], b["flops"])
    assert (a["prediction"] == b["prediction"]).mean() >= 0.9
    obs, _ = low.reset_slots(np.arange(8))
    assert obs.dtype == np.float32 and np.isfinite(obs).all()


def test_bad_dtype_names_the_choices():
    with pytest.raises(ValueError, match=r"float64.*float32.*bfloat16.*float16"):
        RoutingCore("channel", 1, dataset=load_test_data("digits"), backbone=make_net("vgg", "digits"), dtype="float64")


def test_an_exported_low_precision_router_matches_the_env():
    from dyncnn_gym.routed import export

    kw = {"dataset": load_test_data("digits"), "backbone": make_net("vgg", "digits"), "dtype": "bfloat16"}
    core = RoutingCore("channel", 8, split="test", **kw)
    scores = torch.nn.Linear(core.observation_space.shape[0], core.A)
    torch.nn.init.normal_(scores.weight, std=1.0)
    res = evaluate(scores, "DynChannel-v0", core=core, per_image=True)["images"]
    routed = export(scores, core=core).route(core.images)
    assert np.array_equal(routed.actions.numpy(), res["actions"]) and np.array_equal(routed.flops.numpy(), res["flops"])
    assert np.array_equal(routed.logits.argmax(1).numpy(), res["prediction"])
