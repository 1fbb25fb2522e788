"""BackboneFinetuneCallback: supervised fine-tuning of the backbone under the policy's routes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from stable_baselines3 import PPO

from dyncnn_gym.callbacks import BackboneFinetuneCallback, routed_logits
from dyncnn_gym.pretraining import pretrain
from dyncnn_gym.sb3 import make_vec_env


@pytest.fixture(scope="module")
def weak_backbone():
    return pretrain("vgg", "digits", epochs=1, progress=False, cache=False)


def test_finetuning_changes_the_backbone_and_lowers_the_routed_loss(weak_backbone):
    net = copy.deepcopy(weak_backbone)
    vec = make_vec_env("DynChannel-v0", n_envs=16, seed=0, dataset="digits", backbone=net)
    model = PPO("MlpPolicy", vec, n_steps=10, batch_size=80, n_epochs=1, seed=0)
    cb = BackboneFinetuneCallback(schedule="joint", backbone_steps=15, lr=3e-3, batch_size=64)
    core = vec.core
    x = torch.as_tensor(core.data.train.images[:256])
    y = torch.as_tensor(core.data.train.labels[:256])
    with torch.no_grad():
        before_loss = F.cross_entropy(routed_logits(core, model, x)[0], y).item()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model.learn(160 * 2, callback=cb)
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)
    # batch-norm running statistics stay frozen by default
    assert not any(k.endswith("running_mean") or k.endswith("running_var") for k in changed)
    with torch.no_grad():
        after_loss = F.cross_entropy(routed_logits(core, model, x)[0], y).item()
    assert after_loss < before_loss
    assert len(cb.history) >= 2 and all(np.isfinite(h["loss"]) for h in cb.history)


def test_alternate_schedule_waits_for_agent_rollouts(weak_backbone):
    net = copy.deepcopy(weak_backbone)
    vec = make_vec_env("DynChannel-v0", n_envs=8, seed=0, dataset="digits", backbone=net)
    model = PPO("MlpPolicy", vec, n_steps=10, batch_size=40, n_epochs=1, seed=0)
    cb = BackboneFinetuneCallback(schedule="alternate", agent_rollouts=3, backbone_steps=2, batch_size=16)
    model.learn(80 * 6, callback=cb)
    assert len(cb.history) == 2  # 6 rollouts / 3


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="schedule='sometimes'"):
        BackboneFinetuneCallback(schedule="sometimes")
    with pytest.raises(ValueError, match="bn='magic'"):
        BackboneFinetuneCallback(bn="magic")
    with pytest.raises(ValueError, match="backbone_steps=0"):
        BackboneFinetuneCallback(backbone_steps=0)
