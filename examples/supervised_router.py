"""A supervised (not RL) router on a frozen backbone: how much per-image signal is there?

For a family of static routes (the greedy per-layer routes of ``dyncnn_gym.benchmark``), it
measures on *fresh* generated images that neither the backbone nor the test split ever saw
(``shapes`` stream 2) whether each route classifies each image correctly, fits one logistic
model per route on the first observation of the env (the stem's pooled features, plus the probe
confidences), and routes every test image with the route that maximises
``P(correct | image, route) - lam * FLOPs(route)``. Sweeping ``lam`` gives an accuracy-FLOPs front
that is compared with the static front on the whole test split.

If this router, which sees the correctness of every route on 10 000 held-out images, cannot beat
the static front either, the limit is in what the first observation says about an image, not in
the RL agent.

    python examples/supervised_router.py --env DynChannel-v0
    python examples/supervised_router.py --env DynSkip-v0 --n-val 10000
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from dyncnn_gym.benchmark.baselines import greedy_routes, interpolate, route_outcomes, static_baselines
from dyncnn_gym.data.base import Split
from dyncnn_gym.data.shapes import make_shapes
from dyncnn_gym.envs.core import RoutingCore
from dyncnn_gym.pretraining import DEFAULT_ARCH
from dyncnn_gym.walk import Walk

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--env", default="DynChannel-v0", choices=["DynChannel-v0", "DynSkip-v0"])
p.add_argument("--n-val", type=int, default=10_000, help="fresh held-out images to fit the router on")
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()
if args.n_val < 100:
    p.error(f"--n-val {args.n_val} is too small; use at least 100")
torch.set_num_threads(1)

mode = {"DynChannel-v0": "channel", "DynSkip-v0": "skip"}[args.env]
core = RoutingCore(mode, 1, split="test", dataset="shapes", backbone=DEFAULT_ARCH[mode], obs="probe")
data = core.data

# fresh images from a third stream of the generator, normalised like the data set
raw = make_shapes(args.n_val, args.seed, stream=2)
x = raw.images.astype(np.float32) / 255.0 if raw.images.dtype == np.uint8 else raw.images.astype(np.float32)
x = (x - data.mean[None, :, None, None]) / data.std[None, :, None, None]
val = Split(images=x.astype(np.float32), labels=raw.labels.astype(np.int64),
            difficulty=raw.difficulty.astype(np.float32), difficulty_params={})


@torch.no_grad()
def first_obs(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """The env's observation at decision 0 (pooled stem features, probe confidences)."""
    return core.observe(Walk(core.net, mode, torch.as_tensor(images)))


@torch.no_grad()
def outcomes(routes: np.ndarray, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """bool [R, N]: route r classifies image n correctly."""
    from dyncnn_gym.walk import run_routes

    out = np.zeros((len(routes), len(labels)), dtype=bool)
    X = torch.as_tensor(images)
    for r, route in enumerate(routes):
        for i in range(0, len(labels), 1000):
            acts = torch.as_tensor(np.broadcast_to(route, (len(X[i:i + 1000]), len(route))).copy())
            out[r, i:i + 1000] = run_routes(core.net, mode, X[i:i + 1000], acts)[0].argmax(1).numpy() == labels[i:i + 1000]
    return out


routes = greedy_routes(core)  # chosen on train images, full network first
cost = np.array([core.table.path_flops(r) for r in routes]) / core.full
ok_val = outcomes(routes, val.images, val.labels)
ok_test, _ = route_outcomes(core, routes)
f_val, f_test = first_obs(val.images), first_obs(core.images)
print(f"{len(routes)} routes; fresh-image accuracy per route: {np.round(ok_val.mean(1), 3).tolist()}")

p_test = np.zeros((len(routes), len(core.labels)))
for r in range(len(routes)):
    if ok_val[r].all() or not ok_val[r].any():
        p_test[r] = float(ok_val[r].mean())
        continue
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(f_val, ok_val[r])
    p_test[r] = clf.predict_proba(f_test)[:, 1]

static = static_baselines(core)
print(f"{'lam':>6} {'FLOPs':>6} {'acc %':>6} {'static front %':>15} {'gain':>6}")
gains = []
for lam in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0):
    choice = np.argmax(p_test - lam * cost[:, None], axis=0)
    acc = ok_test[choice, np.arange(len(choice))].mean()
    flops = cost[choice].mean()
    ref = interpolate(static["front"], flops)
    gains.append(100 * (acc - ref))
    print(f"{lam:6.2f} {flops:6.3f} {100 * acc:6.2f} {100 * ref:15.2f} {100 * (acc - ref):+6.2f}")
print(f"best gain over the static front: {max(gains):+.2f} points")
