"""Routing as a one-shot choice among static routes, learned by SB3 PPO from bandit feedback.

A research probe, not a registered env: the agent sees the env's first observation of an image
(pooled stem features and probe confidences) and picks one route of the greedy static family of
``dyncnn_gym.benchmark`` (the full network first, each next one a little cheaper). Its reward is
``-min(CE, 5) + compute_weight * (1 - FLOPs ratio)`` of that route on that image (the same
classification and compute terms as the routing envs' ``reward="flops"``). Training images are
the held-out ``"val"`` split of ``shapes`` (fresh generated images) that neither the backbone nor the test split saw; to keep
PPO's many steps cheap, every route's cross-entropy on every training image is computed once up
front (the backbone is frozen, so the env would compute the same numbers). The trained policy then
routes the whole test split through the real dynamic network.

Compare with ``examples/supervised_router.py`` (full-information: every route's outcome on every
image) and with ``dyncnn-gym sweep`` (per-decision PPO on ``DynChannel-v0`` / ``DynSkip-v0``).

    python examples/route_bandit.py --env DynChannel-v0 --weight 0.5
    python examples/route_bandit.py --env DynSkip-v0 --algo dqn
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from dyncnn_gym.benchmark.baselines import greedy_routes, interpolate, route_outcomes, static_baselines
from dyncnn_gym.cli import HelpFormatter
from dyncnn_gym.envs.core import RoutingCore
from dyncnn_gym.pretraining import DEFAULT_ARCH
from dyncnn_gym.walk import Walk, run_routes

p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
p.add_argument("--env", default="DynChannel-v0", choices=["DynChannel-v0", "DynSkip-v0"], help="env id")
p.add_argument("--weight", type=float, action="append", default=None, help="compute weight (repeatable; default: 0.5 and 1)")
p.add_argument("--n-val", type=int, default=10_000, help="training images (the first of the held-out val split)")
p.add_argument("--timesteps", type=int, default=150_000, help="PPO steps (= images routed) per weight")
p.add_argument("--algo", default="ppo", choices=["ppo", "dqn"], help="SB3 algorithm")
p.add_argument("--ent-coef", type=float, default=0.01, help="PPO entropy bonus")
p.add_argument("--n-epochs", type=int, default=4, help="PPO epochs per rollout")
p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
p.add_argument("--seed", type=int, default=0, help="seeds the router and its training")
args = p.parse_args()
for w in args.weight or []:
    if not w >= 0:
        p.error(f"--weight {w} must be >= 0")
if not 100 <= args.n_val <= 10_000:
    p.error(f"--n-val {args.n_val} is out of range; use 100 .. 10000 (the size of the val split)")
torch.set_num_threads(1)

mode = {"DynChannel-v0": "channel", "DynSkip-v0": "skip"}[args.env]
core = RoutingCore(mode, 1, split="test", dataset="shapes", backbone=DEFAULT_ARCH[mode], obs="probe")
val = core.data.split("val")  # fresh images from a third stream of the generator
X, Y = torch.as_tensor(val.images[: args.n_val]), torch.as_tensor(val.labels[: args.n_val])
routes = greedy_routes(core)
cost = np.array([core.table.path_flops(r) for r in routes]) / core.full


@torch.no_grad()
def first_obs(images: torch.Tensor) -> np.ndarray:
    return np.concatenate([core.observe(Walk(core.net, mode, images[i : i + 1000])) for i in range(0, len(images), 1000)])


@torch.no_grad()
def route_ce(images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """float [R, N]: cross-entropy (nats, clipped at 5) of every route on every image."""
    out = np.zeros((len(routes), len(labels)))
    for r, route in enumerate(routes):
        for i in range(0, len(labels), 1000):
            xb = images[i : i + 1000]
            logits, _ = run_routes(core.net, mode, xb, torch.as_tensor(np.broadcast_to(route, (len(xb), len(route))).copy()))
            out[r, i : i + 1000] = np.minimum(F.cross_entropy(logits, labels[i : i + 1000], reduction="none").numpy(), 5.0)
    return out


obs_val, ce_val = first_obs(X), route_ce(X, Y)


class RouteBandit(gym.Env):
    """One step per image: observation = first env observation, action = route index."""

    def __init__(self, weight: float) -> None:
        self.observation_space = core.observation_space
        self.action_space = gym.spaces.Discrete(len(routes))
        self.weight = weight
        self.i = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.i = int(self.np_random.integers(len(obs_val)))
        return obs_val[self.i], {}

    def step(self, action):
        a = int(action)
        reward = -ce_val[a, self.i] + self.weight * (1.0 - cost[a])
        return obs_val[self.i], float(reward), True, False, {}


from stable_baselines3 import DQN, PPO  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402

static = static_baselines(core)
ok_test, _ = route_outcomes(core, routes)
obs_test = first_obs(core.images)
print(f"{args.env}: {len(routes)} greedy routes, FLOPs {np.round(cost, 3).tolist()}")
print(f"{'weight':>6} {'FLOPs':>6} {'acc %':>6} {'static front %':>15} {'gain':>6}")
for w in args.weight or [0.5, 1.0]:
    venv = make_vec_env(lambda w=w: RouteBandit(w), n_envs=64, seed=args.seed)
    torch.manual_seed(args.seed)
    if args.algo == "ppo":
        model = PPO(
            "MlpPolicy",
            venv,
            n_steps=16,
            batch_size=512,
            n_epochs=args.n_epochs,
            gamma=1.0,
            learning_rate=args.lr,
            ent_coef=args.ent_coef,
            policy_kwargs={"net_arch": [64, 64]},
            seed=args.seed,
            verbose=0,
            device="cpu",
        )
    else:  # one-step episodes: Q(x, a) regresses each route's expected reward on the image
        model = DQN(
            "MlpPolicy",
            venv,
            gamma=1.0,
            learning_rate=5e-4,
            buffer_size=args.timesteps,
            learning_starts=5000,
            batch_size=256,
            train_freq=1,
            gradient_steps=4,
            target_update_interval=500,
            exploration_fraction=0.3,
            exploration_final_eps=0.05,
            policy_kwargs={"net_arch": [64, 64]},
            seed=args.seed,
            verbose=0,
            device="cpu",
        )
    model.learn(args.timesteps)
    choice, _ = model.predict(obs_test, deterministic=True)
    acc = ok_test[choice, np.arange(len(choice))].mean()
    flops = cost[choice].mean()
    ref = interpolate(static["front"], flops)
    print(
        f"{w:6.2f} {flops:6.3f} {100 * acc:6.2f} {100 * ref:15.2f} {100 * (acc - ref):+6.2f}  ({len(np.unique(choice))} routes used)"
    )
