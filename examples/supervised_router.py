"""A supervised (not RL) router on a frozen backbone: how much per-image signal is there?

For a family of static routes (the greedy per-layer routes of ``dyncnn_gym.benchmark``), it
measures on *fresh* generated images that neither the backbone nor the test split ever saw
(the held-out ``"val"`` split of ``shapes``) whether each route classifies each image correctly, fits one logistic
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
from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.envs.core import RoutingCore
from dyncnn_gym.pretraining import DEFAULT_ARCH
from dyncnn_gym.walk import Walk

p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
p.add_argument("--env", default="DynChannel-v0", choices=["DynChannel-v0", "DynSkip-v0"], help="env id")
p.add_argument("--n-val", type=int, default=10_000, help="held-out images (the first of the val split) to fit the router on")
args = p.parse_args()
if not 100 <= args.n_val <= 10_000:
    p.error(f"--n-val {args.n_val} is out of range; use 100 .. 10000 (the size of the val split)")
torch.set_num_threads(1)

mode = {"DynChannel-v0": "channel", "DynSkip-v0": "skip"}[args.env]
core = RoutingCore(mode, 1, split="test", dataset="shapes", backbone=DEFAULT_ARCH[mode], obs="probe")
val = core.data.split("val")  # fresh images from a third stream of the generator


@torch.no_grad()
def first_obs(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """The env's observation at decision 0 (pooled stem features, probe confidences)."""
    return core.observe(Walk(core.net, mode, torch.as_tensor(images)))


routes = greedy_routes(core, split="train")  # chosen on train images (the val images train the router), full network first
cost = np.array([core.table.path_flops(r) for r in routes]) / core.full
ok_val, _ = route_outcomes(core, routes, split="val", limit=args.n_val)
ok_test, _ = route_outcomes(core, routes)
f_val, f_test = first_obs(val.images[: args.n_val]), first_obs(core.images)
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
