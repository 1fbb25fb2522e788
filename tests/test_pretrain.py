"""Pretraining (seeded, recorded static accuracies), the checkpoint cache, and ``backbone=`` resolution.

Everything trains for one epoch on the 48-image ``user12`` set (a couple of seconds), except one
test that lets an env pretrain its default-length schedule on that same tiny set.
"""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from conftest import load_test_data, user12_arrays

import dyncnn_gym
from dyncnn_gym import pretraining as pretrain_mod
from dyncnn_gym.pretraining import (
    TrainConfig,
    checkpoint_name,
    evaluate_static,
    load_checkpoint,
    pretrain,
    resolve_backbone,
)
from dyncnn_gym.walk import run_routes


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def vgg_1ep():
    return pretrain("vgg", load_test_data("user12"), epochs=1, progress=False, allow_chance=True, cache=False)


@pytest.fixture(scope="module")
def resnet_1ep():
    return pretrain("resnet8", load_test_data("user12"), epochs=1, progress=False, allow_chance=True, cache=False)


def test_load_checkpoint_is_exported_at_top_level():
    assert dyncnn_gym.load_checkpoint is load_checkpoint


def test_top_level_pretrain_stays_callable_after_an_env_is_made():
    """The issue's example: ``gym.make(...)`` first, then ``dyncnn_gym.pretrain("vgg", data)``."""
    make_env_args = {"dataset": load_test_data("user12"), "backbone": "vgg"}
    gymnasium.make("DynChannel-v0", **make_env_args)  # imports dyncnn_gym.pretrain (the module)
    assert callable(dyncnn_gym.pretrain), f"dyncnn_gym.pretrain is {dyncnn_gym.pretrain!r}"
    assert dyncnn_gym.pretrain is pretrain


def test_pretrain_is_seeded(vgg_1ep):
    data = load_test_data("user12")
    again = pretrain("vgg", data, epochs=1, progress=False, allow_chance=True, cache=False)
    other = pretrain("vgg", data, epochs=1, progress=False, allow_chance=True, cache=False, seed=1)
    assert same_weights(vgg_1ep, again)
    assert not same_weights(vgg_1ep, other)
    assert not vgg_1ep.training, "pretrain returns the backbone in eval mode"


def test_pretrain_changes_the_weights():
    data = load_test_data("user12")
    torch.manual_seed(0)
    from dyncnn_gym.models import build

    init = build("vgg", data.image_shape, data.num_classes, 4)
    trained = pretrain("vgg", data, epochs=1, progress=False, allow_chance=True, cache=False)
    assert not same_weights(init, trained)


def _check_static_rows(rows, key, values):
    assert [r[key] for r in rows] == values
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert 0.0 < r["flops_ratio"] <= 1.0


def test_meta_records_static_accuracies(vgg_1ep, resnet_1ep):
    data = load_test_data("user12")
    meta = vgg_1ep.meta
    assert meta["arch"] == "vgg" and meta["groups"] == 4
    assert meta["data"] == data.name and meta["data_fingerprint"] == data.fingerprint
    assert meta["in_shape"] == list(data.image_shape) and meta["num_classes"] == 3
    assert meta["train_config"]["epochs"] == 1 and meta["train_config"]["seed"] == 0
    assert meta["train_seconds"] >= 0
    assert set(meta["static"]) == {"channel"}
    rows = meta["static"]["channel"]
    _check_static_rows(rows, "action", [0, 1, 2, 3])
    ratios = [r["flops_ratio"] for r in rows]
    assert ratios == sorted(ratios) and ratios[-1] == 1.0 and len(set(ratios)) == 4

    res = resnet_1ep.meta["static"]
    assert set(res) == {"skip", "channel"}  # a ResNet serves both envs
    _check_static_rows(res["skip"], "rate", [0.0, 0.25, 0.5, 0.75, 1.0])
    _check_static_rows(res["channel"], "action", [0, 1, 2, 3])
    assert res["skip"][0]["flops_ratio"] == 1.0
    skip_ratios = [r["flops_ratio"] for r in res["skip"]]
    assert skip_ratios == sorted(skip_ratios, reverse=True) and skip_ratios[-1] < 1.0


def test_static_accuracies_are_what_the_routes_score(vgg_1ep):
    """Recompute each static width's test accuracy with the walk and compare with the record."""
    data = load_test_data("user12")
    x, y = torch.as_tensor(data.test.images), torch.as_tensor(data.test.labels)
    T = vgg_1ep.num_decisions("channel")
    for row in vgg_1ep.meta["static"]["channel"]:
        with torch.no_grad():
            logits, flops = run_routes(vgg_1ep, "channel", x, torch.full((len(y), T), row["action"]))
        assert row["accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
        assert row["flops_ratio"] == pytest.approx(float(flops[0]) / vgg_1ep.cost_table("channel").full)
    assert evaluate_static(vgg_1ep, data) == vgg_1ep.meta["static"]


def test_progress_bar(capsys):
    pretrain("resnet8", load_test_data("user12"), epochs=1, progress=True, allow_chance=True, cache=False)
    err = capsys.readouterr().err
    assert "pretrain resnet8 on user" in err


def test_checkpoint_cache_roundtrip(cache_root, monkeypatch):
    data = load_test_data("user12")
    first = pretrain("resnet8", data, groups=2, epochs=1, batch_size=16, progress=False)
    cfg = TrainConfig(**first.meta["train_config"])
    path = cache_root / "checkpoints" / checkpoint_name("resnet8", 2, data, cfg)
    assert path.is_file(), f"no checkpoint in the cache dir: {sorted(p.name for p in (cache_root / 'checkpoints').iterdir())}"
    blob = torch.load(path, map_location="cpu", weights_only=True)  # new files hold tensors and plain data only
    assert blob["meta"]["arch"] == "resnet8" and blob["meta"]["groups"] == 2
    assert blob["meta"]["data_fingerprint"] == data.fingerprint and blob["meta"]["static"] == first.meta["static"]

    # a second call loads from the cache: it must not train (no backward pass runs)
    def no_training(*args, **kwargs):
        raise AssertionError("pretrain trained again instead of loading the cached checkpoint")

    monkeypatch.setattr(torch.Tensor, "backward", no_training)
    second = pretrain("resnet8", data, groups=2, epochs=1, batch_size=16, progress=False)
    assert same_weights(first, second) and second.meta == first.meta and not second.training
    loaded = load_checkpoint(path, data, groups=2)
    assert same_weights(first, loaded) and loaded.meta["arch"] == "resnet8"
    # another seed, epochs or groups is another checkpoint
    with pytest.raises(AssertionError, match="trained again"):
        pretrain("resnet8", data, groups=2, epochs=1, batch_size=16, progress=False, seed=5)


def test_cache_dir_follows_the_environment_variable(cache_root):
    from dyncnn_gym.cache import cache_dir

    assert cache_dir("checkpoints") == cache_root / "checkpoints"


def test_out_writes_a_loadable_checkpoint(tmp_path):
    data = load_test_data("user12")
    path = tmp_path / "sub" / "net.pt"
    net = pretrain("vgg", data, groups=2, epochs=1, progress=False, allow_chance=True, cache=False, out=path)
    loaded = load_checkpoint(path)
    assert same_weights(net, loaded) and loaded.meta == net.meta and loaded.groups == 2


def test_load_checkpoint_checks_data_and_groups(tmp_path):
    data = load_test_data("user12")
    other = load_test_data("digits")
    path = tmp_path / "net.pt"
    pretrain("vgg", data, epochs=1, progress=False, allow_chance=True, cache=False, out=path)
    with pytest.raises(ValueError) as exc:
        load_checkpoint(path, other)
    msg = str(exc.value)
    assert data.fingerprint in msg and other.fingerprint in msg and "'digits'" in msg and "'user'" in msg
    with pytest.raises(ValueError) as exc:
        load_checkpoint(path, data, groups=8)
    assert "groups=4" in str(exc.value) and "groups=8" in str(exc.value)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    torch.save({"weights": 1}, junk)
    with pytest.raises(ValueError, match="not a dyncnn_gym checkpoint"):
        load_checkpoint(junk)


def test_env_backbone_from_checkpoint_path(tmp_path):
    data = load_test_data("user12")
    path = tmp_path / "resnet8.pt"
    net = pretrain("resnet8", data, epochs=1, progress=False, allow_chance=True, cache=False, out=path)
    env = gymnasium.make("DynSkip-v0", dataset=data, backbone=str(path))
    assert same_weights(env.unwrapped.backbone, net)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="fingerprint"):
        gymnasium.make("DynSkip-v0", dataset=load_test_data("shapes"), backbone=str(path))
    with pytest.raises(ValueError, match="groups"):
        gymnasium.make("DynChannel-v0", dataset=data, backbone=str(path), groups=2)


def test_env_pretrains_an_arch_on_first_use_and_caches_it(cache_root):
    """``backbone="vgg"`` with no checkpoint for these data trains one (default schedule), caches
    it, and later envs on the same data share the loaded network."""
    arrays = user12_arrays(seed=1)  # data no other test trains on
    before = set((cache_root / "checkpoints").glob("vgg-g4-user-*.pt")) if (cache_root / "checkpoints").exists() else set()
    env = gymnasium.make("DynChannel-v0", dataset=arrays, backbone="vgg")
    after = set((cache_root / "checkpoints").glob("vgg-g4-user-*.pt"))
    assert len(after - before) == 1
    net = env.unwrapped.backbone
    data = env.unwrapped.core.data
    assert net.meta["train_config"]["epochs"] == pretrain_mod.default_epochs(data)
    # on this easy set the trained backbone is accurate at full width
    assert net.meta["static"]["channel"][-1]["accuracy"] >= 0.9
    again = gymnasium.make("DynChannel-v0", dataset=data, backbone="vgg")
    assert again.unwrapped.backbone is net
    assert resolve_backbone("vgg", data, "channel") is net
    # a default arch for each mode, one that has that mode's decisions
    from dyncnn_gym.models import ARCHS

    assert pretrain_mod.DEFAULT_ARCH["channel"] == "vgg+sandwich+distill"
    for mode, spec in pretrain_mod.DEFAULT_ARCH.items():
        arch, modes = pretrain_mod.parse_backbone(spec)[:2]
        assert mode in (modes or ARCHS[arch])
    obs, info = env.reset(seed=0)
    assert np.isfinite(obs).all()


def test_parse_backbone_names_arch_and_trained_modes():
    assert pretrain_mod.parse_backbone("resnet20-lite") == ("resnet20-lite", None, False, False, False)
    assert pretrain_mod.parse_backbone("resnet32-lite@skip") == ("resnet32-lite", ("skip",), False, False, False)
    assert pretrain_mod.parse_backbone("vgg+sandwich+distill") == ("vgg", None, True, True, False)
    assert pretrain_mod.parse_backbone("resnet8@skip+distill") == ("resnet8", ("skip",), True, False, False)
    assert pretrain_mod.parse_backbone("vgg+augment+sandwich+distill") == ("vgg", None, True, True, True)
    with pytest.raises(
        ValueError, match=r"'sandwhich' is not a training option; choose from \['augment', 'distill', 'sandwich'\]"
    ):
        pretrain_mod.parse_backbone("vgg+sandwhich")
    with pytest.raises(ValueError, match="repeats an option"):
        pretrain_mod.parse_backbone("vgg+distill+distill")
    with pytest.raises(ValueError, match=r"'jump' is not a mode of 'resnet32-lite'.*\['skip', 'channel', 'route'\]"):
        pretrain_mod.parse_backbone("resnet32-lite@jump")
    with pytest.raises(ValueError, match=r"'skip' is not a mode of 'vgg'; choose one of \['channel'\]"):
        pretrain_mod.parse_backbone("vgg@skip")
    with pytest.raises(ValueError, match="'resnet7' is not a known arch"):
        pretrain_mod.parse_backbone("resnet7@skip")


def test_one_mode_backbone_trains_only_that_mode_and_refuses_the_other(tmp_path):
    """``"arch@skip"`` trains skip decisions only: its checkpoint has its own name (the names of
    backbones trained for every mode are unchanged), records the mode, reloads restricted to it,
    and an env of the other mode refuses it, naming the choices."""
    from dyncnn_gym.data import load_dataset

    data = load_dataset(user12_arrays(seed=2))
    plain = pretrain_mod.TrainConfig(epochs=1)
    assert plain.key() == pretrain_mod.TrainConfig(epochs=1, modes=None).key()
    assert plain.key() != pretrain_mod.TrainConfig(epochs=1, modes=("skip",)).key()
    assert pretrain_mod.default_checkpoint_name("resnet8@skip", 4, data) != pretrain_mod.default_checkpoint_name(
        "resnet8", 4, data
    )
    net = pretrain_mod.pretrain(
        "resnet8@skip", data, epochs=1, cache=False, progress=False, allow_chance=True, out=tmp_path / "r.pt"
    )
    assert net.modes == ("skip",) and tuple(net.meta["train_config"]["modes"]) == ("skip",)
    assert set(net.meta["static"]) == {"skip"}
    loaded = pretrain_mod.load_checkpoint(tmp_path / "r.pt", data)
    assert loaded.modes == ("skip",)
    gymnasium.make("DynSkip-v0", dataset=data, backbone=loaded).reset(seed=0)
    with pytest.raises(ValueError, match=r"'channel' is not supported .*\['skip'\]"):
        gymnasium.make("DynChannel-v0", dataset=data, backbone=loaded)
    with pytest.raises(ValueError, match=r"has no 'channel' decisions"):
        resolve_backbone("resnet8@skip", data, "channel")


def test_distillation_and_sandwich_are_recorded_and_name_their_own_checkpoints(monkeypatch):
    """``distill=True`` (``"arch+distill"``) trains the random routes on the full network's detached
    probabilities and ``sandwich=True`` (``"arch+sandwich"``) adds the cheapest route to every step:
    both are recorded in the checkpoint's
    train config and give it its own name, while checkpoints trained without them keep theirs."""
    plain = TrainConfig(epochs=1)
    assert plain.key() == TrainConfig(epochs=1, distill=False, sandwich=False).key()
    keys = {
        plain.key(),
        TrainConfig(epochs=1, distill=True).key(),
        TrainConfig(epochs=1, sandwich=True).key(),
        TrainConfig(epochs=1, distill=True, sandwich=True).key(),
    }
    assert len(keys) == 4
    data = load_test_data("user12")
    both = TrainConfig(epochs=pretrain_mod.default_epochs(data), distill=True, sandwich=True)
    assert pretrain_mod.default_checkpoint_name("vgg+sandwich+distill", 4, data) == checkpoint_name("vgg", 4, data, both)

    seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    real = pretrain_mod.route_loss

    def spy(logits, labels, target):
        seen.append((logits.detach(), None if target is None else target.clone()))
        return real(logits, labels, target)

    monkeypatch.setattr(pretrain_mod, "route_loss", spy)
    net = pretrain("vgg+distill+sandwich", data, epochs=4, batch_size=12, progress=False, allow_chance=True, cache=False)
    cfg = net.meta["train_config"]
    assert cfg["distill"] is True and cfg["sandwich"] is True
    # after the full-only phase every step scores two routes, each against probabilities that sum to 1
    assert seen and len(seen) % 2 == 0
    assert all(t is not None and torch.allclose(t.sum(1), torch.ones(len(t))) and not t.requires_grad for _, t in seen)


def test_route_loss_against_one_hot_probabilities_is_the_cross_entropy():
    logits = torch.randn(5, 3)
    labels = torch.tensor([0, 2, 1, 1, 0])
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    assert torch.allclose(pretrain_mod.route_loss(logits, labels, one_hot), pretrain_mod.route_loss(logits, labels, None))


@pytest.mark.parametrize("dataset", ["shapes", "digits"])
@pytest.mark.parametrize("mode", ["channel", "skip"])
def test_every_default_backbone_ships_trained_as_its_name_says(dataset, mode):
    """The default backbones of the embedded data and of digits load offline from the package, and
    each checkpoint's training config is the one its name spells (``vgg+sandwich+distill``: both on)."""
    from dyncnn_gym.envs.core import _shared_data

    data = _shared_data(dataset)
    spec = pretrain_mod.parse_backbone(pretrain_mod.DEFAULT_ARCH[mode])
    path = pretrain_mod.SHIPPED_DIR / pretrain_mod.default_checkpoint_name(pretrain_mod.DEFAULT_ARCH[mode], 4, data)
    assert path.is_file(), f"{path.name} is not shipped"
    cfg = load_checkpoint(path, data, 4).meta["train_config"]
    assert (cfg.get("distill", False), cfg.get("sandwich", False)) == (spec.distill, spec.sandwich)
    assert cfg["augment"] == (spec.augment and pretrain_mod.can_augment(data))
    assert (tuple(cfg["modes"]) if cfg["modes"] else None) == spec.modes


@pytest.mark.parametrize(
    "name,plain",
    [("vgg+sandwich+distill+augment", "vgg+sandwich+distill"), ("resnet32-lite@skip+augment", "resnet32-lite@skip")],
)
def test_augment_names_its_own_checkpoint_only_where_it_shifts(name, plain):
    """``+augment`` (random 2-pixel shifts) gets its own checkpoint name on 32x32 shapes; digits' 8x8
    images are not shifted, so there the name is the unshifted backbone's."""
    from dyncnn_gym.envs.core import _shared_data

    shapes, digits = _shared_data("shapes"), _shared_data("digits")
    assert pretrain_mod.can_augment(shapes) and not pretrain_mod.can_augment(digits)
    assert pretrain_mod.default_checkpoint_name(name, 4, shapes) != pretrain_mod.default_checkpoint_name(plain, 4, shapes)
    assert pretrain_mod.default_checkpoint_name(name, 4, digits) == pretrain_mod.default_checkpoint_name(plain, 4, digits)


def test_route_backbone_trains_both_kinds_and_serves_all_three_envs(tmp_path):
    """``"arch@route"`` trains skipping and width at once (the sandwich rule over both); the backbone
    then serves DynRoute-v0, DynChannel-v0 and DynSkip-v0, while a skip-only one refuses route decisions."""
    import gymnasium

    from dyncnn_gym.data import load_dataset

    data = load_dataset(user12_arrays(seed=3))
    net = pretrain_mod.pretrain(
        "resnet8@route+sandwich+distill", data, epochs=1, batch_size=16, progress=False, out=tmp_path / "r.pt"
    )
    assert net.modes == ("route", "channel", "skip")
    assert set(net.meta["static"]) == {"channel", "skip"} and tuple(net.meta["train_config"]["modes"]) == ("route",)
    again = pretrain_mod.load_checkpoint(tmp_path / "r.pt", data)
    assert again.modes == ("route", "channel", "skip")
    for env_id, A in (("DynRoute-v0", 5), ("DynChannel-v0", 4), ("DynSkip-v0", 2)):
        env = gymnasium.make(env_id, dataset=data, backbone=again)
        assert env.action_space.n == A
    gen = torch.Generator().manual_seed(0)
    route = pretrain_mod._random_route(again, "route", 64, gen, 0.6)
    assert route.shape == (64, 3) and (route == 0).any() and (route > 0).any()
    assert all(len(set(route[route[:, t] > 0, t].tolist())) == 1 for t in range(3))  # one width per block and batch
    skip_only = pretrain_mod.pretrain("resnet8@skip", data, epochs=1, batch_size=16, progress=False, cache=False)
    with pytest.raises(ValueError, match="mode='route' is not supported"):
        gymnasium.make("DynRoute-v0", dataset=data, backbone=skip_only)
