"""Hyper-parameters that work, in code: PPO on the routing envs through the native SB3 VecEnv.

``train_ppo("DynChannel-v0")`` builds the native VecEnv with the recipe's env settings
(:func:`env_kwargs`), trains SB3's PPO with the recipe below and returns the model; evaluate it
on an env built with the same ``env_kwargs(env_id)``. The recipe's reasoning:

* the reward's classification term is the 0/1 error (``loss="error"``), not the cross-entropy:
  with the cross-entropy an image the network gets wrong at every width still pays for more
  computation (it becomes less wrong), which spends FLOPs on hopeless images and adds reward noise
  that carries no accuracy. On the frozen shapes VGG this moved PPO from just below the greedy
  static front to above it (``dyncnn-gym sweep``; docs/results.md);
* observations include the confidence of the early classifiers (``obs="probe"``), the most
  informative cheap signal of how hard an image is;
* ``compute_weight`` is in accuracy per unit of FLOPs ratio (escalating is worth it when it raises
  the chance of a correct prediction by more than ``compute_weight`` times the FLOPs ratio it costs);
  the recipe's value is the operating point of the package's figures, sweep it for others;
* every episode has exactly ``T`` steps and the classification term arrives on the last one, so
  returns are undiscounted (``gamma = 1``) and GAE's ``lambda`` is high (0.95);
* one rollout holds ``n_steps * n_envs`` decisions (many whole episodes), minibatches are large,
  few epochs per rollout: the reward is noisy per image, so big batches beat many epochs;
* a small entropy bonus keeps the cheap actions explored while the value of escalating is learned.

``DynExit-v0`` trains on held-out images (it is registered with ``split="auto"``: the ``"val"``
split where the data has one, as the generated ``shapes`` do): on its own training images the backbone is right almost always (the
default VGG at full width classifies 100 % of shapes' train split, 91.85 % of the held-out one),
which misleads a router about when continuing pays: trained there, PPO stayed at 30-36 % of the
FLOPs (90.05-90.70 % on the test split) for every compute weight from 0.005 to 0.08, while on the
held-out split it reaches the full network's accuracy (91.05 % at 44 % of the FLOPs, weight 0.02).

Two additions improve on the recipe without being part of it (its figures stay reproducible):
``shaping="continuation"`` (an env argument, e.g. ``train_ppo(env_id, shaping="continuation")``)
charges each decision at once for what it costs the image, at about twice the env's compute;
:func:`dyncnn_gym.benchmark.calibrate.calibrate` dials a trained policy to a FLOPs budget on
held-out images; and :class:`~dyncnn_gym.benchmark.calibrate.CostBiasedPolicy` routes several
seeds as one ensemble. docs/results.md has the figures.

Co-training has a recipe of its own for DynChannel (:data:`COTRAIN_RECIPES`,
:func:`train_cotrained`): PPO's recipe at compute weight 0.07 while
:class:`~dyncnn_gym.callbacks.BackboneFinetuneCallback` fine-tunes a private copy of the backbone
on train images shifted by up to 2 pixels (``augment=True``), RNP's alternating schedule of 10
backbone steps every 2 rollouts. Without the shifts the fine-tuning memorises the train split and
stops paying; DynSkip has no co-training recipe because on shapes co-training did not beat its
frozen backbone (on digits it does; docs/results.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_ENV: dict[str, Any] = {"reward": "flops", "loss": "error", "obs": "probe"}

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

#: one recipe per env id (the same PPO settings; the envs differ in their compute weight)
PPO_RECIPES: dict[str, dict[str, Any]] = {
    # on the default "vgg+sandwich+distill" 0.1 puts five of five seeds at 52-55 % saved within 0.65
    # points of the full network (docs/results.md); 0.05 was the best weight on the plain "vgg"
    "DynChannel-v0": {**_PPO_RECIPE, "env": {**_ENV, "compute_weight": 0.1}},
    "DynSkip-v0": {**_PPO_RECIPE, "env": {**_ENV, "compute_weight": 0.2}},
    "DynRoute-v0": {**_PPO_RECIPE, "env": {**_ENV, "compute_weight": 0.1}},
    # the exit's own confidence is always observed (no "probe" mode); DynExit-v0 is registered with
    # split="auto", so it trains on held-out images where the data has them
    "DynExit-v0": {**_PPO_RECIPE, "env": {"reward": "flops", "loss": "error", "compute_weight": 0.02}},
    # the -v1 ids are registered with the settings that work: the recipe adds nothing to them
    "DynChannel-v1": {**_PPO_RECIPE, "env": {}},
    "DynSkip-v1": {**_PPO_RECIPE, "env": {}},
    "DynRoute-v1": {**_PPO_RECIPE, "env": {}},
    "DynExit-v1": {**_PPO_RECIPE, "env": {}},
    # one step per image (MultiBinary(T), BlockDrop): the same PPO settings over the native one-step VecEnv
    "DynBlockDrop-v1": {**_PPO_RECIPE, "env": {}},
}


#: co-training, per env id: PPO's recipe (:data:`PPO_RECIPES`) at ``compute_weight`` while
#: ``BackboneFinetuneCallback(**finetune)`` fine-tunes a private copy of the backbone. The weight is
#: for the shapes data; on digits no co-trained DynChannel weight lies above the static front
#: (docs/results.md).
COTRAIN_RECIPES: dict[str, dict[str, Any]] = {
    # `dyncnn-gym sweep --env DynChannel-v0 --no-frozen --weight 0.07 --seed 0 1 2 3 4 --finetune-augment`:
    # 4 of 5 seeds save >= 40 % within 1 point of the full network and >= 1.5 points above uniform static
    # widths; 0.05 saves less, within 1 point on the held-out images in 3 of 5 as 0.07 (docs/results.md)
    "DynChannel-v0": {
        "compute_weight": 0.07,
        "finetune": {
            "schedule": "alternate",
            "agent_rollouts": 2,
            "backbone_steps": 10,
            "lr": 1e-4,
            "batch_size": 128,
            "bn": "frozen",
            "augment": True,
            "distill": False,
        },
    },
}


def recipe(env_id: str) -> dict[str, Any]:
    """A copy of the PPO recipe of ``env_id``."""
    import copy

    name = env_id.split(":", 1)[-1]
    if name not in PPO_RECIPES:
        raise ValueError(f"env_id={env_id!r} has no recipe; choose one of {sorted(PPO_RECIPES)}")
    return copy.deepcopy(PPO_RECIPES[name])


def env_kwargs(env_id: str, **overrides: Any) -> dict[str, Any]:
    """The recipe's env arguments of ``env_id`` (reward, loss term, observations, compute weight), updated by ``overrides``."""
    return {**recipe(env_id)["env"], **overrides}


def check_timesteps(value: Any, name: str = "timesteps") -> int | None:
    """``value`` as an int step count (``None`` stays ``None``: the recipe's); ``ValueError`` unless a
    positive integer, so 0 never silently means "the default"."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive number of steps (or None for the recipe's)")
    return int(value)


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
    **env_overrides: Any,
):
    """Train SB3 PPO on the native VecEnv of ``env_id`` with the recipe (overridable).

    The env is built with ``env_kwargs(env_id, **env_overrides)``; evaluate with the same arguments
    (an env with other observations has another observation space).
    Returns the trained ``stable_baselines3.PPO`` model (its env is the training VecEnv).
    """
    import torch
    from stable_baselines3 import PPO

    from .sb3 import make_vec_env

    r = recipe(env_id)
    check_timesteps(total_timesteps, "total_timesteps")
    kw = {**r["ppo"], **(ppo_kwargs or {})}
    vec = make_vec_env(env_id, n_envs=n_envs or r["n_envs"], seed=seed, **env_kwargs(env_id, **env_overrides))
    torch.manual_seed(seed)
    model = PPO("MlpPolicy", vec, seed=seed, verbose=0, tensorboard_log=tensorboard_log, device="cpu", **kw)
    model.learn(total_timesteps or r["total_timesteps"], callback=callback, progress_bar=progress and _has_rich())
    return model


def cotrain_recipe(env_id: str) -> dict[str, Any]:
    """A copy of the co-training recipe of ``env_id`` (``compute_weight`` and ``finetune``, the
    arguments of :class:`~dyncnn_gym.callbacks.BackboneFinetuneCallback`)."""
    import copy

    name = env_id.split(":", 1)[-1]
    recipe(name)  # an unknown env raises here, naming the envs
    if name not in COTRAIN_RECIPES:
        raise ValueError(
            f"env_id={env_id!r} has no co-training recipe: on the shapes data co-training did not beat its frozen backbone"
            f" (docs/results.md); choose one of {sorted(COTRAIN_RECIPES)}, or pass"
            " callback=BackboneFinetuneCallback(...) to train_ppo with a private copy of the backbone"
        )
    return copy.deepcopy(COTRAIN_RECIPES[name])


def train_cotrained(
    env_id: str,
    *,
    dataset: Any = "shapes",
    backbone: Any = None,
    finetune_kwargs: dict[str, Any] | None = None,
    total_timesteps: int | None = None,
    n_envs: int | None = None,
    seed: int = 0,
    progress: bool = True,
    tensorboard_log: str | None = None,
    callback: Any = None,
    ppo_kwargs: dict[str, Any] | None = None,
    **env_overrides: Any,
) -> tuple[Any, dict[str, Any]]:
    """Co-train with the recipe: PPO learns the routing of ``env_id`` while the backbone is fine-tuned.

    The backbone (a name, a checkpoint path or a network; default: the env's default for
    ``dataset``) is copied first, so neither the caller's network nor the process-wide shared
    default changes. ``finetune_kwargs`` update the recipe's callback arguments (e.g.
    ``{"augment": False}`` for images under 16x16, such as digits' 8x8, which cannot be shifted;
    that is checked before training), ``env_overrides`` its env arguments (e.g. ``compute_weight``).

    Returns ``(model, eval_kwargs)``: the trained ``stable_baselines3.PPO`` and the env arguments
    to evaluate it with, whose ``backbone`` is the fine-tuned copy
    (``evaluate(model, env_id, **eval_kwargs)``).
    """
    import copy

    from .callbacks import BackboneFinetuneCallback, check_augment
    from .envs.core import RoutingCore
    from .envs.routing import mode_of

    r = cotrain_recipe(env_id)
    finetune = BackboneFinetuneCallback(seed=seed, **{**r["finetune"], **(finetune_kwargs or {})})  # bad arguments raise here
    mode = mode_of(env_id)
    kwargs = env_kwargs(env_id, dataset=dataset, **{"compute_weight": r["compute_weight"], **env_overrides})
    source = RoutingCore(mode, 1, dataset=dataset, backbone=backbone, groups=kwargs.get("groups", 4))  # None: the default
    if finetune.augment:
        check_augment(source.data)
    kwargs["backbone"] = copy.deepcopy(source.net)
    callbacks = [finetune] + (list(callback) if isinstance(callback, (list, tuple)) else [callback] if callback else [])
    model = train_ppo(
        env_id,
        total_timesteps=total_timesteps,
        n_envs=n_envs,
        seed=seed,
        progress=progress,
        tensorboard_log=tensorboard_log,
        callback=callbacks,
        ppo_kwargs=ppo_kwargs,
        **kwargs,
    )
    return model, kwargs


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True
