"""The teacher of ``DynBlockDrop``: the outcome of the full route, of every block dropped from it, of
the greedy route and of given routes, each exactly what the env pays for that action."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from conftest import load_test_data, make_net

import dyncnn_gym  # noqa: F401  (registers the envs)

FORMS = {
    "blockdrop": {"reward": "blockdrop", "usage": "flops"},
    "flops-error": {"reward": "flops", "loss": "error", "compute_weight": 0.3},
    "skipnet-ce": {"reward": "skipnet", "loss": "ce"},
}


def kwargs(form: str) -> dict:
    return {"dataset": load_test_data("user12"), "backbone": make_net("resnet14", "user12"), **FORMS[form]}


def replay(form: str, seed: int, route: np.ndarray) -> tuple[float, dict]:
    env = gymnasium.make("DynBlockDrop-v0", **kwargs(form))
    env.reset(seed=seed)
    _, r, term, _, info = env.step(route)
    assert term
    return r, info


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_route_the_teacher_reports_is_what_the_env_pays_for_it(form):
    env = gymnasium.make("DynBlockDrop-v0", **kwargs(form))
    env.reset(seed=3)
    T = env.action_space.n
    mine = np.array([[1, 0] * (T // 2) + [1] * (T % 2), [0] * T])
    tt = env.unwrapped.teacher(routes=mine)
    assert tt["returns"].shape == (T,) and tt["best_action"].shape == (T,) and tt["returns_routes"].shape == (2,)
    checks = [(np.ones(T, dtype=np.int64), "full", None), (tt["best_action"], "best", None)]
    checks += [(np.where(np.arange(T) == t, 0, 1), "drop", t) for t in range(T)]
    checks += [(mine[k], "routes", k) for k in range(2)]
    for route, name, i in checks:
        r, info = replay(form, 3, route)
        if name == "full":
            ret, flops, ok = tt["return_full"], tt["flops_full"], tt["correct_full"]
        elif name == "best":
            ret, flops, ok = tt["best_return"], tt["best_flops"], tt["best_correct"]
        elif name == "drop":
            ret, flops, ok = tt["returns"][i], tt["flops"][i], tt["correct"][i]
        else:
            ret, flops, ok = tt["returns_routes"][i], tt["flops_routes"][i], tt["correct_routes"][i]
        assert r == pytest.approx(ret, abs=1e-9), (name, i)
        assert info["flops"] == flops and info["correct"] == ok, (name, i)
    # the greedy route never pays less than the full one, and drops a block only where that does not cost
    assert tt["best_return"] >= tt["return_full"] - 1e-12
    assert tt["best_flops"] <= tt["flops_full"]


def test_the_episode_is_untouched_and_the_vector_env_batches_it():
    kw = kwargs("flops-error")
    env = gymnasium.make("DynBlockDrop-v0", **kw)
    env.reset(seed=5)
    env.unwrapped.teacher()
    route = np.ones(env.action_space.n, dtype=np.int64)
    assert env.step(route)[1] == pytest.approx(replay("flops-error", 5, route)[0])
    with pytest.raises(RuntimeError, match="call reset"):
        env.unwrapped.teacher()
    venv = gymnasium.make_vec("DynBlockDrop-v0", num_envs=3, **kw)
    venv.reset(seed=0)
    tt = venv.unwrapped.teacher()
    T = venv.single_action_space.n
    assert tt["active"].all() and tt["returns"].shape == (3, T) and tt["best_action"].shape == (3, T)
    with pytest.raises(ValueError, match=r"routes of shape \(2, 5\) must be \[N, T\] or \[N, R, T\] with N = 3"):
        venv.unwrapped.teacher(routes=np.ones((2, 5)))
    _, r, *_ = venv.step(tt["best_action"])
    np.testing.assert_allclose(r, tt["best_return"], atol=1e-9)


@pytest.mark.parametrize(
    "routes,error,match",
    [
        (np.ones((2, 3)), ValueError, r"routes of shape \(2, 3\) must be \[T\] or \[R, T\] with T = 5"),
        (np.full(5, 2), ValueError, r"entries outside \{0, 1\}"),
        (np.full(5, 0.5), TypeError, "is not a binary action"),
    ],
)
def test_bad_routes_are_refused_by_value(routes, error, match):
    env = gymnasium.make("DynBlockDrop-v0", **kwargs("blockdrop"))
    env.reset(seed=0)
    assert env.action_space.n == 5
    with pytest.raises(error, match=match):
        env.unwrapped.teacher(routes=routes)
