"""Reading and writing dyncnn_gym's files safely.

Every file the package writes (backbone checkpoints, routed models, data caches, results JSON,
reports, plots, saved SB3 models) goes through :func:`atomic_write`: the content is written to a
temporary file with a unique name in the target's own directory, flushed and ``fsync``-ed, then
moved over the target with ``os.replace`` (atomic on POSIX and Windows). A reader therefore sees
either the old file or the complete new one, never a partial file, also when a process is killed
in the middle of a save; two processes writing the same file both succeed and leave one of the two
complete versions. A temporary file that a killed writer left behind is a hidden file
(``.<name>.<random>.tmp``) that no reader looks at; the next write of the same target removes such
files once they are :data:`STALE_SECONDS` old.

Torch files are read with ``weights_only=True`` (:func:`load_torch`): only tensors, plain
containers and the classes a caller allow-lists can be rebuilt; a file that needs anything else is
refused with :class:`UnsafeFileError`, naming the file and what it asked for, and is never run.

Write targets are checked before long work starts (:func:`check_writable_file`,
:func:`check_writable_dir`), and :func:`rescue_path` gives a place in the system's temporary
directory where a finished result goes when its own target fails at the end.

Imports only the standard library (torch, numpy and matplotlib are imported by the helpers that
need them), so the bottom layers of the package can use it.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

#: a temporary file older than this (seconds) is a leftover of a killed writer and may be removed
STALE_SECONDS = 600.0
_TMP_SUFFIX = ".tmp"


class UnsafeFileError(ValueError):
    """A file needs a Python global to load that dyncnn_gym does not allow (it could run code)."""


class CorruptFileError(ValueError):
    """A file exists but cannot be read as what it should be (truncated, empty, garbage, other content)."""


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


_MODE = 0o666 & ~_umask()


def _tmp_prefix(name: str) -> str:
    return f".{name}."


def _remove_stale_temps(path: Path) -> None:
    """Remove temporary files of ``path`` older than :data:`STALE_SECONDS` (left by killed writers)."""
    now = time.time()
    try:
        candidates = list(path.parent.glob(glob.escape(_tmp_prefix(path.name)) + "*" + _TMP_SUFFIX))
    except OSError:
        return
    for tmp in candidates:
        try:
            if now - tmp.stat().st_mtime > STALE_SECONDS:
                tmp.unlink()
        except OSError:
            pass  # another process removed it, or it is not ours to remove


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file atomically: ``write(f)`` fills a binary file object, which then replaces ``path``.

    The parent directory is created if needed. On any failure (of ``write`` or of the file system)
    the temporary file is removed, ``path`` is left as it was, and the error propagates.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    if str(path) in ("", "."):
        raise ValueError(f"cannot write a file at {str(path)!r}: give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path.name), suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> Path:
    """Atomically write ``json.dumps(obj, **dumps_kwargs)`` (UTF-8) to ``path``; the text is built
    first, so an object JSON cannot encode leaves ``path`` untouched."""
    return write_text(path, json.dumps(obj, **dumps_kwargs))


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """Atomically ``torch.save(obj)`` to ``path``."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """Atomically ``numpy.savez(path, **arrays)`` (no pickled objects: ``np.load(allow_pickle=False)`` reads it)."""
    import numpy as np

    return atomic_write(path, lambda f: np.savez(f, **arrays))


def savefig(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Atomically save a matplotlib figure; the format comes from the suffix of ``path`` (e.g. ``.png``)."""
    path = Path(path)
    fmt = kwargs.pop("format", None) or (path.suffix[1:] or None)
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **kwargs))


def save_sb3(model: Any, path: str | os.PathLike) -> Path:
    """Atomically ``model.save(...)`` an SB3 / sb3-contrib model as the ``.zip`` file ``path``."""
    return atomic_write(path, lambda f: model.save(f))


# -- reading torch files ---------------------------------------------------------------------------
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_torch(path: str | os.PathLike, allowed: Iterable[Any] = (), what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with ``allowed`` classes allow-listed for
    this call only (``torch.serialization.safe_globals``).

    Raises:
        FileNotFoundError: nothing at ``path``; IsADirectoryError: a directory.
        UnsafeFileError: the file needs a global outside the allow-list (named); nothing of it ran.
        CorruptFileError: the file is empty, truncated or not a torch file at all.
    """
    import pickle

    import torch

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {str(path)!r} is a directory; give the path of a file")
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {str(path)!r}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            with torch.serialization.safe_globals(list(allowed)):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = _GLOBAL.search(str(e))
        if m:
            raise UnsafeFileError(
                f"{what} {str(path)!r} needs the Python global {m.group(1)!r} to load, which dyncnn_gym does not"
                " allow (loading it could run code); the file was not loaded"
            ) from None
        raise CorruptFileError(f"{what} {str(path)!r} is not a readable torch file ({_first_line(e)})") from None
    except (EOFError, RuntimeError, OSError, KeyError, ValueError, IndexError, TypeError, AttributeError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise
        reason = "the file is empty" if path.stat().st_size == 0 else _first_line(e) or type(e).__name__
        raise CorruptFileError(f"{what} {str(path)!r} is not a readable torch file ({reason})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


# -- write targets -----------------------------------------------------------------------------------
def _probe(directory: Path, what: str, target: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".dyncnn_gym-write-check.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(
            f"{what} {str(target)!r} cannot be written: {e.strerror or e} ({str(directory)!r}); choose a writable location"
        ) from None


def check_writable_file(path: Any, what: str = "out") -> Path:
    """Check, before any long work, that a file can be written at ``path`` (creating its parent
    directories); returns it as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``path`` is empty or an existing directory.
        TypeError: ``path`` is not a string or path.
        PermissionError: the file cannot be created there (read-only, under a file, ...).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what}={path!r} must be a file path (str or pathlib.Path)")
    if str(path).strip() == "":
        raise ValueError(f"{what}={str(path)!r} is empty; give a file path")
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{what}={str(path)!r} is a directory; give a file path inside it (e.g. {str(p / 'backbone.pt')!r})")
    _probe(p.parent, what, p)
    return p


def check_writable_dir(path: Any, what: str = "out") -> Path:
    """Check, before any long work, that files can be written into directory ``path`` (creating it);
    returns it as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``path`` is empty or an existing file.
        TypeError: ``path`` is not a string or path.
        PermissionError: the directory cannot be created or written.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what}={path!r} must be a directory path (str or pathlib.Path)")
    if str(path).strip() == "":
        raise ValueError(f"{what}={str(path)!r} is empty; give a directory path")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what}={str(path)!r} is a file, not a directory; give a directory path")
    _probe(p, what, p)
    return p


def rescue_path(name: str) -> Path:
    """A fresh path in ``<system temp dir>/dyncnn_gym-rescued/`` for a result whose own target failed."""
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(tempfile.gettempdir()) / "dyncnn_gym-rescued"
    return base / f"{stem}-{stamp}-{os.getpid()}{'.' + suffix if suffix else ''}"


def move_aside(path: Path, reason: str) -> Path | None:
    """Rename a damaged file to ``<name>.corrupt-<time>`` with a warning; returns the new path, or
    ``None`` (and warns) where the directory is not writable."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None  # another process moved it first
    except OSError as e:
        warnings.warn(f"{reason}; it could not be moved aside ({e.strerror or e}) and is ignored", stacklevel=3)
        return None
    warnings.warn(f"{reason}; moved it to {str(target)!r} and rebuilding", stacklevel=3)
    return target
