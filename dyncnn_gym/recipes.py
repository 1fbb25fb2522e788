"""Hyper-parameters that work, in code: PPO on the routing envs through the native SB3 VecEnv.

``train_ppo("DynChannel-v0", compute_weight=0.5)`` builds the native VecEnv, trains SB3's PPO
with the recipe below and returns the model. The recipe's reasoning:

* every episode has exactly ``T`` steps and the classification term arrives on the last one, so
  returns are undiscounted (``gamma = 1``) and GAE's ``lambda`` is high (0.95);
* one rollout holds ``n_steps * n_envs`` decisions (many whole episodes), minibatches are large,
  few epochs per rollout: the reward is noisy per image, so big batches beat many epochs;
* a small entropy bonus keeps the cheap actions explored while the value of escalating is learned.
"""

from __future__ import annotations

from typing import Any

_PPO_RECIPE: dict[str, Any] = {
    "n_envs": 64,
    "total_timesteps": 150_000,
    "ppo": {
        "n_steps": 40,
        "batch_size": 512,
        "n_epochs": 4,
        "gamma": 1.0,
        "gae_lambda": 0.95,
        "learning_rate": 1e-3,
        "ent_coef": 0.01,
        "clip_range": 0.2,
        "policy_kwargs": {"net_arch": [64, 64]},
    },
}

#: one recipe per env id (both envs use the same one today; ``recipe()`` hands out copies)
PPO_RECIPES: dict[str, dict[str, Any]] = {"DynChannel-v0": _PPO_RECIPE, "DynSkip-v0": _PPO_RECIPE}


def recipe(env_id: str) -> dict[str, Any]:
    """A copy of the PPO recipe of ``env_id``."""
    import copy

    name = env_id.split(":", 1)[-1]
    if name not in PPO_RECIPES:
        raise ValueError(f"env_id={env_id!r} has no recipe; choose one of {sorted(PPO_RECIPES)}")
    return copy.deepcopy(PPO_RECIPES[name])


def train_ppo(
    env_id: str,
    *,
    total_timesteps: int | None = None,
    n_envs: int | None = None,
    seed: int = 0,
    progress: bool = True,
    tensorboard_log: str | None = None,
    callback: Any = None,
    ppo_kwargs: dict[str, Any] | None = None,
    **env_kwargs: Any,
):
    """Train SB3 PPO on the native VecEnv of ``env_id`` with the recipe (overridable).

    Returns the trained ``stable_baselines3.PPO`` model (its env is the training VecEnv).
    """
    import torch
    from stable_baselines3 import PPO

    from .sb3 import make_vec_env

    r = recipe(env_id)
    kw = {**r["ppo"], **(ppo_kwargs or {})}
    vec = make_vec_env(env_id, n_envs=n_envs or r["n_envs"], seed=seed, **env_kwargs)
    torch.manual_seed(seed)
    model = PPO("MlpPolicy", vec, seed=seed, verbose=0, tensorboard_log=tensorboard_log, device="cpu", **kw)
    model.learn(total_timesteps or r["total_timesteps"], callback=callback, progress_bar=progress and _has_rich())
    return model


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True
