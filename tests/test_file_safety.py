"""Files you can trust: no file the package reads runs code, every write is atomic, the cache heals
itself, write targets are checked before training, and a finished run is never lost.

Pickle payloads here write a marker file when they run; each test first shows that the unsafe way
of loading the same file does run it, then that dyncnn_gym's way does not.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_test_data, make_net

from dyncnn_gym import fileio
from dyncnn_gym import pretraining as pt
from dyncnn_gym.fileio import CorruptFileError, UnsafeFileError
from dyncnn_gym.pretraining import (
    CheckpointMismatchError,
    CheckpointSaveError,
    TrainConfig,
    checkpoint_name,
    load_checkpoint,
    pretrain,
)


class WritesMarker:
    """Unpickling this object opens (creates) ``path``: evidence that the payload ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class RunsShell:
    """Unpickling this object runs ``touch path`` in a shell."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


PAYLOADS = [WritesMarker, RunsShell]
TINY = {"epochs": 1, "batch_size": 16, "progress": False}


def _no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(torch.Tensor, "backward", refuse)


def _cache_path(arch: str, data, **kw) -> Path:
    from dyncnn_gym.cache import cache_dir

    cfg = TrainConfig(epochs=kw.get("epochs", 1), batch_size=kw.get("batch_size", 16))
    return cache_dir("checkpoints", create=False) / checkpoint_name(arch, 4, data, cfg)


# ---------------------------------------------------------------------------------------- code execution


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_pickle_payload_in_a_checkpoint_is_not_executed(tmp_path, payload):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"version": 1, "meta": payload(marker), "state_dict": {}}, path)
    torch.load(path, weights_only=False)  # the unsafe way runs it ...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafeFileError) as exc:  # ... the package's does not
        load_checkpoint(path)
    assert not marker.exists()
    assert str(path) in str(exc.value) and ("open" in str(exc.value) or "system" in str(exc.value))
    with pytest.raises(UnsafeFileError):
        gymnasium.make("DynChannel-v0", dataset=load_test_data("user12"), backbone=str(path))
    assert not marker.exists()


def test_a_pickle_payload_in_a_cache_file_is_moved_aside_not_executed(tmp_path):
    data = load_test_data("user12")
    marker = tmp_path / "ran"
    path = _cache_path("vgg", data)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"version": 1, "meta": WritesMarker(marker), "state_dict": {}}, path)
    with pytest.warns(UserWarning, match="posix.system|builtins.open|io.open") as rec:
        net = pretrain("vgg", data, **TINY)
    assert not marker.exists()
    assert any("moved it to" in str(w.message) for w in rec)
    assert net.arch == "vgg" and load_checkpoint(path, data).arch == "vgg"
    assert list(path.parent.glob(path.name + ".corrupt-*"))


def test_a_pickle_payload_in_a_routed_model_is_not_executed(tmp_path):
    from dyncnn_gym.routed import FORMAT, FORMAT_VERSION, load

    marker = tmp_path / "ran"
    path = tmp_path / "router.pt"
    torch.save({"format": FORMAT, "version": FORMAT_VERSION, "head": RunsShell(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafeFileError, match="system"):
        load(path)
    assert not marker.exists()


class TinyPolicy(torch.nn.Module):
    """A custom policy module: its class is not on the routed-model allow-list."""

    def __init__(self, d: int, a: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(d, a)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.lin(obs)


def test_a_routed_model_with_a_custom_module_needs_its_class_passed(tmp_path):
    from dyncnn_gym.routed import export, load

    kw = {"dataset": load_test_data("user12"), "backbone": make_net("vgg", "user12")}
    env = gymnasium.make("DynChannel-v0", **kw)
    rn = export(TinyPolicy(env.observation_space.shape[0], int(env.action_space.n)), "DynChannel-v0", **kw)
    path = rn.save(tmp_path / "r.pt")
    with pytest.raises(UnsafeFileError, match="TinyPolicy"):
        load(path)
    back = load(path, safe_globals=[TinyPolicy])
    x = torch.as_tensor(kw["dataset"].test.images)
    assert torch.equal(back.route(x).actions, rn.route(x).actions)


def _write_cifar10(root: Path, obj_for_batch_1=None) -> None:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        blob = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, i % 10], b"batch_label": b"b"}
        if i == 0 and obj_for_batch_1 is not None:
            blob[b"labels"] = obj_for_batch_1
        with open(d / name, "wb") as f:
            pickle.dump(blob, f, protocol=2 if i % 2 else 5)


def test_cifar_batches_load_through_the_restricted_unpickler(tmp_path):
    from dyncnn_gym.data import load_dataset

    _write_cifar10(tmp_path)
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.image_shape == (3, 32, 32) and len(ds.train) == 20 and len(ds.test) == 4


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_pickle_payload_in_a_cifar_batch_is_not_executed(tmp_path, payload):
    from dyncnn_gym.data import load_dataset

    marker = tmp_path / "ran"
    _write_cifar10(tmp_path / "root", payload(marker))
    bad = tmp_path / "root" / "cifar-10-batches-py" / "data_batch_1"
    with open(bad, "rb") as f:
        pickle.load(f)  # the unsafe way runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafeFileError) as exc:
        load_dataset("cifar10", root=tmp_path / "root")
    assert not marker.exists()
    assert str(bad) in str(exc.value) and "needs the Python global" in str(exc.value)


def test_a_truncated_cifar_batch_is_a_clear_error(tmp_path):
    from dyncnn_gym.data import load_dataset

    _write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match="test_batch"):
        load_dataset("cifar10", root=tmp_path)


@pytest.fixture(scope="module")
def ppo_zip(tmp_path_factory):
    from stable_baselines3 import PPO

    from dyncnn_gym.sb3 import make_vec_env

    kw = {"dataset": load_test_data("user12"), "backbone": make_net("vgg", "user12")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PPO("MlpPolicy", make_vec_env("DynChannel-v0", n_envs=2, seed=0, **kw), n_steps=8, batch_size=16, seed=0)
        model.learn(16)
    path = tmp_path_factory.mktemp("sb3") / "ppo.zip"
    model.save(path)
    return path, model


def _rewrite_zip(src: Path, dst: Path, data_edit=None, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    if data_edit is not None:
        data = json.loads(members["data"])
        data_edit(data)
        members["data"] = json.dumps(data).encode()
    members.update(extra or {})
    with zipfile.ZipFile(dst, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    return dst


def _payload(obj) -> str:
    import cloudpickle

    return base64.b64encode(cloudpickle.dumps(obj)).decode()


@pytest.mark.parametrize("key", ["lr_schedule", "clip_range", "observation_space", "policy_class", "_last_obs"])
def test_a_cloudpickle_payload_in_an_sb3_zip_is_not_executed(tmp_path, ppo_zip, key):
    from stable_baselines3 import PPO

    from dyncnn_gym.benchmark.protocol import load_model

    src, model = ppo_zip
    marker = tmp_path / "ran"

    def plant(data):
        data[key][":serialized:"] = _payload(WritesMarker(marker))

    path = _rewrite_zip(src, tmp_path / "evil.zip", plant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            PPO.load(path, device="cpu")  # SB3's own loader runs the payload
        except Exception:
            pass
    assert marker.exists()
    marker.unlink()
    loaded = load_model(str(path))  # the package skips it and rebuilds the value
    assert not marker.exists()
    obs = np.stack([model.observation_space.sample() for _ in range(32)])
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


def test_an_unknown_pickled_key_or_class_in_an_sb3_zip_is_refused(tmp_path, ppo_zip):
    from dyncnn_gym.benchmark.protocol import load_model

    src, _ = ppo_zip
    marker = tmp_path / "ran"

    def extra_key(data):
        data["surprise"] = {":type:": "<class 'object'>", ":serialized:": _payload(WritesMarker(marker))}

    with pytest.raises(UnsafeFileError, match="'surprise'"):
        load_model(str(_rewrite_zip(src, tmp_path / "a.zip", extra_key)))

    def other_class(data):
        data["policy_class"]["__module__"] = "evil.module"

    with pytest.raises(UnsafeFileError, match="evil.module"):
        load_model(str(_rewrite_zip(src, tmp_path / "b.zip", other_class)))
    import io

    buf = io.BytesIO()
    torch.save({"w": WritesMarker(marker)}, buf)
    with pytest.raises(UnsafeFileError, match="policy.pth"):
        load_model(str(_rewrite_zip(src, tmp_path / "c.zip", extra={"policy.pth": buf.getvalue()})))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------- atomic writes


def test_a_failed_write_leaves_the_target_and_no_temporary_file(tmp_path):
    target = tmp_path / "results.json"
    fileio.write_json(target, {"a": 1})

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        fileio.atomic_write(target, boom)
    assert json.loads(target.read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        fileio.write_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_concurrent_writers_of_one_file_both_succeed(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    target = tmp_path / "ckpt.pt"
    blobs = [{"who": i, "w": torch.full((20000,), float(i))} for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda b: fileio.save_torch(b, target), blobs * 4))
    got = fileio.load_torch(target)
    assert torch.equal(got["w"], torch.full((20000,), float(got["who"])))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_stale_temporary_files_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "x.json"
    stale = tmp_path / ".x.json.abc123.tmp"
    fresh = tmp_path / ".x.json.def456.tmp"
    stale.write_bytes(b"left by a killed writer")
    fresh.write_bytes(b"another writer at work")
    old = time.time() - fileio.STALE_SECONDS - 5
    os.utime(stale, (old, old))
    fileio.write_text(target, "{}")
    assert not stale.exists() and fresh.exists() and target.read_text() == "{}"


_SAVE_LOOP = """
import sys, torch
from dyncnn_gym.fileio import save_torch
i = 0
while True:
    save_torch({{"i": i, "w": torch.full((300000,), float(i))}}, sys.argv[1])
    i += 1
    if i == 1:
        print("saved", flush=True)
"""


def test_kill_9_during_saves_leaves_no_partial_file_and_a_rerun_works(tmp_path):
    target = tmp_path / "net.pt"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    rng = np.random.default_rng(0)
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", _SAVE_LOOP.format(), str(target)], env=env, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "saved"
        time.sleep(float(rng.uniform(0.05, 0.4)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        blob = fileio.load_torch(target)  # complete, whatever the moment of the kill
        assert torch.equal(blob["w"], torch.full((300000,), float(blob["i"])))
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["net.pt"]
    # leftovers are hidden temporary files of the target only; once stale, the next save removes them
    for tmp in tmp_path.glob(".net.pt.*.tmp"):
        old = time.time() - fileio.STALE_SECONDS - 5
        os.utime(tmp, (old, old))
    fileio.save_torch({"i": -1, "w": torch.zeros(3)}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["net.pt"] and fileio.load_torch(target)["i"] == -1


_PRETRAIN_SAME = """
import os, sys, time
from pathlib import Path
import numpy as np
from dyncnn_gym.pretraining import pretrain, save_checkpoint
from dyncnn_gym.cache import cache_dir

def barrier(name):  # both processes reach this point before either goes on
    Path(f"{name}.{os.getpid()}").touch()
    deadline = time.time() + 120
    while len(list(Path().glob(f"{name}.*"))) < 2 and time.time() < deadline:
        time.sleep(0.01)

rng = np.random.default_rng(0)
y = np.arange(60) % 3
x = rng.normal(0, 0.5, (60, 12, 12)).astype(np.float32)
x[y == 0, ::2, :] += 1.0
x[y == 1, :, ::2] += 1.0
x[y == 2, ::3, ::3] += 2.0
for r in range(int(sys.argv[1])):
    os.environ["DYNCNN_GYM_CACHE"] = f"cache{r}"
    barrier(f"round{r}")
    net = pretrain("vgg", (x, y), epochs=2, batch_size=16, progress=False)
    path = next(cache_dir("checkpoints").glob("vgg-*.pt"))
    for _ in range(20):
        save_checkpoint(net, path)
    print("ok", path.name, flush=True)
"""


def test_two_processes_pretraining_the_same_backbone_into_one_cache_both_succeed(tmp_path):
    """Both processes train the same backbone into the same cache at the same moment (a barrier
    starts every round), then keep rewriting it; repeated in fresh caches."""
    rounds = 3
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PRETRAIN_SAME, str(rounds)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert [line.split()[0] for line in out.splitlines()] == ["ok"] * rounds
    for r in range(rounds):
        files = list((tmp_path / f"cache{r}" / "checkpoints").iterdir())
        assert len(files) == 1 and files[0].name.startswith("vgg-"), files  # no temporary or partial files
        assert load_checkpoint(files[0]).arch == "vgg"


# ---------------------------------------------------------------------------------------- self-healing


def _resnet_blob(tmp_path: Path) -> bytes:
    p = tmp_path / "resnet.pt"
    pretrain("resnet8", load_test_data("user12"), groups=4, cache=False, out=p, allow_chance=True, **TINY)
    return p.read_bytes()


@pytest.mark.parametrize("damage", ["zero bytes", "garbage", "truncated", "another arch", "not a checkpoint"])
def test_a_damaged_cache_entry_is_moved_aside_and_rebuilt(tmp_path, damage):
    data = load_test_data("user12")
    path = _cache_path("vgg", data)
    good = pretrain("vgg", data, **TINY)
    content = path.read_bytes()
    bad = {
        "zero bytes": b"",
        "garbage": os.urandom(4096),
        "truncated": content[: len(content) // 2],
        "another arch": _resnet_blob(tmp_path) if damage == "another arch" else b"",
        "not a checkpoint": b"",
    }[damage]
    if damage == "not a checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.write_bytes(bad)
    for old in path.parent.glob(path.name + ".corrupt-*"):
        old.unlink()
    with pytest.warns(UserWarning, match="moved it to") as rec:
        net = pretrain("vgg", data, **TINY)
    msg = " ".join(str(w.message) for w in rec)
    if damage == "another arch":
        assert "'resnet8'" in msg and "'vgg'" in msg  # the mismatch names both
    assert net.arch == "vgg" and net.state_dict().keys() == good.state_dict().keys()
    assert load_checkpoint(path, data).arch == "vgg"
    assert len(list(path.parent.glob(path.name + ".corrupt-*"))) == 1


def test_a_checkpoint_of_another_arch_under_a_vgg_name_is_never_returned(tmp_path):
    data = load_test_data("user12")
    path = tmp_path / "looks-like-vgg.pt"
    path.write_bytes(_resnet_blob(tmp_path))
    with pytest.raises(CheckpointMismatchError) as exc:
        load_checkpoint(path, data, expect=("vgg", TrainConfig(epochs=1, batch_size=16)))
    assert "'resnet8'" in str(exc.value) and "'vgg'" in str(exc.value)


def test_a_damaged_shipped_checkpoint_says_how_to_reinstall(tmp_path, monkeypatch):
    data = load_test_data("user12")
    name = _cache_path("vgg", data).name
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / name).write_bytes(b"\x00" * 100)
    monkeypatch.setattr(pt, "SHIPPED_DIR", shipped)
    monkeypatch.setenv("DYNCNN_GYM_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(CorruptFileError, match="reinstall"):
        pretrain("vgg", data, **TINY)
    assert (shipped / name).exists()  # nothing is moved in the package's own directory


def test_a_zero_byte_shapes_cache_is_moved_aside_and_regenerated():
    from dyncnn_gym.data import shapes

    first = shapes.load_shapes(12, seed=3)
    path = shapes.shapes_cache_path(12, 3)
    path.write_bytes(b"")
    with pytest.warns(UserWarning, match="moved it to"):
        again = shapes.load_shapes(12, seed=3)
    np.testing.assert_array_equal(first.images, again.images)
    assert path.stat().st_size > 0


# ---------------------------------------------------------------------------------------- read-only caches


def test_a_missing_cache_under_an_unwritable_parent_still_serves_shipped_checkpoints(tmp_path, monkeypatch):
    from dyncnn_gym.data import load_dataset

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("DYNCNN_GYM_CACHE", str(blocker / "cache"))
    _no_training(monkeypatch)
    digits = load_dataset("digits")
    for name in ("vgg", "vgg+sandwich+distill", "resnet32-lite@skip"):  # all shipped for digits
        assert pretrain(name, digits, progress=False).meta["data_fingerprint"] == digits.fingerprint
    env = gymnasium.make("DynSkip-v0", dataset=digits)  # the default DynSkip backbone is shipped for digits
    env.reset(seed=0)
    assert not (blocker / "cache").exists()
    # a backbone that is not shipped cannot be cached: refused before any training
    with pytest.raises(PermissionError, match="DYNCNN_GYM_CACHE"):
        pretrain("resnet8", load_test_data("user12"), **TINY)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_cache_still_serves_shipped_checkpoints(tmp_path, monkeypatch):
    from dyncnn_gym.data import load_dataset

    cache = tmp_path / "ro"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        monkeypatch.setenv("DYNCNN_GYM_CACHE", str(cache))
        _no_training(monkeypatch)
        gymnasium.make("DynSkip-v0", dataset=load_dataset("digits")).reset(seed=0)
        with pytest.raises(PermissionError):
            pretrain("resnet8", load_test_data("user12"), **TINY)
    finally:
        cache.chmod(0o755)


# ---------------------------------------------------------------------------------------- no lost runs


@pytest.mark.parametrize("out", ["", "dir", "under-a-file"])
def test_a_bad_out_is_refused_before_training(tmp_path, monkeypatch, out):
    _no_training(monkeypatch)
    blocker = tmp_path / "f"
    blocker.write_text("x")
    target = {"": "", "dir": str(tmp_path), "under-a-file": str(blocker / "net.pt")}[out]
    with pytest.raises((ValueError, PermissionError)) as exc:
        pretrain("vgg", load_test_data("user12"), cache=False, out=target, **TINY)
    assert "out=" in str(exc.value) or "out " in str(exc.value)


def test_a_failed_final_save_goes_to_a_rescue_file_that_the_error_names(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    data = load_test_data("user12")
    target = tmp_path / "net.pt"
    real = pt.save_checkpoint

    def failing(net, path):
        if Path(path) == target or "checkpoints" in str(path):
            raise OSError(28, "No space left on device")
        return real(net, path)

    monkeypatch.setattr(pt, "save_checkpoint", failing)
    with pytest.raises(CheckpointSaveError) as exc:
        pretrain("vgg", data, cache=False, out=target, **TINY)
    rescued = Path(str(exc.value).split("saved to ")[1].split("'")[1])
    assert rescued.is_file() and load_checkpoint(rescued, data).arch == "vgg"
    assert "No space left" in str(exc.value)
    # a failed cache write warns, names the rescue file and still returns the backbone
    with pytest.warns(UserWarning, match="saved to") as rec:
        net = pretrain("resnet8", data, seed=7, **TINY)
    message = next(str(w.message) for w in rec if "saved to" in str(w.message))
    rescued = Path(message.split("saved to ")[1].split("'")[1])
    assert rescued.parent == tmp_path / "tmp" / "dyncnn_gym-rescued"
    assert net.arch == "resnet8" and load_checkpoint(rescued, data).arch == "resnet8"


def test_a_cache_hit_still_writes_out(tmp_path):
    data = load_test_data("user12")
    pretrain("vgg", data, seed=2, **TINY)
    out = tmp_path / "copy.pt"
    net = pretrain("vgg", data, seed=2, out=out, **TINY)
    assert out.is_file() and load_checkpoint(out, data).meta == net.meta


def test_new_files_store_the_torch_version_as_a_string(tmp_path):
    path = tmp_path / "n.pt"
    pretrain("vgg", load_test_data("user12"), cache=False, out=path, **TINY)
    blob = torch.load(path, weights_only=True)  # no allow-list needed
    assert isinstance(blob["meta"]["torch"], str)


def test_every_shipped_checkpoint_loads_with_weights_only():
    for path in sorted(pt.SHIPPED_DIR.glob("*.pt")):
        net = load_checkpoint(path)
        assert isinstance(net.meta["torch"], str) and path.name.startswith(net.meta["arch"])
