"""Loading saved SB3 / sb3-contrib models without running anything the file contains.

``model.save(path)`` writes a zip with a JSON ``data`` member and ``.pth`` members. SB3 stores what
JSON cannot hold (the policy class, the spaces, learning-rate schedules, buffers, ...) as
cloudpickle payloads (``{":serialized:": base64, ...}``) and ``Algorithm.load`` unpickles them:
a crafted model file runs code. SB3 skips the payload of every key given in ``custom_objects``, so
:func:`load_sb3_model` rebuilds each serialized key from safe values first and hands all of them
over:

* the policy class and the rollout / replay buffer class: looked up by module and class name among
  the classes SB3 and sb3-contrib define (named in the JSON next to the payload); a class outside
  them is refused;
* the observation and action spaces: rebuilt from the readable fields next to the payload
  (``Box``, ``Discrete``, ``MultiBinary``, ``MultiDiscrete``), or taken from the caller;
* ``policy_kwargs``: from its readable fields; a class in it must be a ``torch.optim`` optimiser,
  a ``torch.nn`` module or an SB3 features extractor; other values must be Python literals;
* schedules (``lr_schedule``, ``clip_range``, ``exploration_schedule``, ``learning_rate`` given as a
  schedule, ...): constants read from their readable fields, else the algorithm's default: the
  model predicts exactly as saved, but continuing its training uses these constants;
* transient state (``_last_obs``, ``ep_info_buffer``, ...): ``None``; ``train_freq``: the
  algorithm's default.

Any other serialized key refuses the file, naming the key. The ``.pth`` members are checked with
``torch.load(weights_only=True)`` before SB3 reads them, whatever SB3's version does.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import CorruptFileError, UnsafeFileError

#: serialized keys that hold transient training state: set to ``None`` (SB3 recreates them)
TRANSIENT_KEYS = ("_last_obs", "_last_episode_starts", "_last_original_obs", "ep_info_buffer", "ep_success_buffer")
#: serialized keys that hold schedules or hyper-parameters given as functions
SCHEDULE_KEYS = (
    "lr_schedule",
    "learning_rate",
    "clip_range",
    "clip_range_vf",
    "exploration_schedule",
    "ent_coef",
    "target_kl",
)
_FUNCTION = re.compile(r"<function (\w+)\.\w+ at 0x[0-9a-fA-F]+>")
_CLASS = re.compile(r"^<class '([\w.]+)'>$")
_CONSTANT = re.compile(r"ConstantSchedule\(val=([-+0-9.eEinfa]+)\)")


def algorithms() -> dict[str, type]:
    """The algorithms :func:`load_sb3_model` reads, by name (sb3-contrib's when it is installed)."""
    from stable_baselines3 import A2C, DQN, PPO

    algos: dict[str, type] = {"PPO": PPO, "A2C": A2C, "DQN": DQN}
    try:
        from sb3_contrib import QRDQN, MaskablePPO, RecurrentPPO

        algos.update({"MaskablePPO": MaskablePPO, "RecurrentPPO": RecurrentPPO, "QRDQN": QRDQN})
    except ImportError:  # pragma: no cover - sb3-contrib is a dependency
        pass
    return algos


def _buffer_classes() -> list[type]:
    from stable_baselines3.common import buffers

    out = [v for v in vars(buffers).values() if isinstance(v, type) and issubclass(v, buffers.BaseBuffer)]
    try:
        from sb3_contrib.common.maskable import buffers as mb
        from sb3_contrib.common.recurrent import buffers as rb

        out += [v for m in (mb, rb) for v in vars(m).values() if isinstance(v, type) and issubclass(v, buffers.BaseBuffer)]
    except ImportError:  # pragma: no cover
        pass
    return out


def _kwarg_classes() -> dict[str, type]:
    """Classes a ``policy_kwargs`` value may name: optimisers, torch.nn modules, SB3 features extractors."""
    import torch
    from stable_baselines3.common import torch_layers

    classes: list[type] = [
        v for v in vars(torch.optim).values() if isinstance(v, type) and issubclass(v, torch.optim.Optimizer)
    ]
    classes += [v for v in vars(torch.nn).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)]
    classes += [v for v in vars(torch_layers).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)]
    return {f"{c.__module__}.{c.__qualname__}": c for c in classes}


def _class_name(fields: dict) -> str | None:
    """The name of a serialized class, read from its methods (``<function Name.method at 0x...>``)."""
    for v in fields.values():
        m = _FUNCTION.fullmatch(str(v))
        if m:
            return m.group(1)
    return None


def _find_class(fields: dict, candidates: list[type], key: str, path: Path) -> type:
    name, module = _class_name(fields), fields.get("__module__")
    for c in candidates:
        if c.__name__ == name and c.__module__ == module:
            return c
    what = f"the class {module}.{name}" if name else f"a pickled {fields.get(':type:', 'object')} without a readable name"
    raise UnsafeFileError(
        f"SB3 model {str(path)!r}: {key} is {what}, which is not one of SB3's or sb3-contrib's own"
        " classes; dyncnn_gym does not unpickle it (it could run code). Load the model with SB3 itself if you trust the file"
    )


def _array(text: Any, size: int, key: str, path: Path) -> np.ndarray:
    values = str(text).replace("[", " ").replace("]", " ").split()
    if len(values) != size or "..." in values:
        raise CorruptFileError(
            f"SB3 model {str(path)!r}: {key} cannot be read from its description ({str(text)[:60]}...); pass"
            " observation_space= and action_space= (the env's spaces)"
        )
    return np.array([float(v) for v in values])


def _space(fields: dict, key: str, path: Path) -> Any:
    from gymnasium import spaces

    kind = fields.get(":type:", "")
    try:
        if kind.endswith("spaces.discrete.Discrete'>"):
            return spaces.Discrete(int(fields["n"]), start=int(fields.get("start", 0)))
        if kind.endswith("spaces.box.Box'>"):
            shape = tuple(json.loads(str(fields["_shape"])))
            size = int(np.prod(shape))
            dtype = np.dtype(fields["dtype"])
            low = _array(fields["low"], size, key, path).reshape(shape).astype(dtype)
            high = _array(fields["high"], size, key, path).reshape(shape).astype(dtype)
            return spaces.Box(low, high, shape=shape, dtype=dtype)
        if kind.endswith("spaces.multi_binary.MultiBinary'>"):
            return spaces.MultiBinary(json.loads(str(fields["n"])))
        if kind.endswith("spaces.multi_discrete.MultiDiscrete'>"):
            n = len(str(fields["nvec"]).replace("[", " ").replace("]", " ").split())
            return spaces.MultiDiscrete(_array(fields["nvec"], n, key, path).astype(np.int64))
    except (KeyError, ValueError, TypeError) as e:
        raise CorruptFileError(f"SB3 model {str(path)!r}: {key} cannot be read from its description ({e})") from None
    raise UnsafeFileError(
        f"SB3 model {str(path)!r}: {key} is a {kind}; dyncnn_gym rebuilds only Box, Discrete, MultiBinary and"
        " MultiDiscrete spaces (pass observation_space= / action_space= to give them)"
    )


def _constant(fields: dict) -> float | None:
    m = _CONSTANT.search(" ".join(str(v) for v in fields.values()))
    return float(m.group(1)) if m else None


def _constant_schedule(value: float | None) -> Any:
    """A schedule that always returns ``value`` (SB3's own class where it has one)."""
    from stable_baselines3.common import utils

    v = float(value) if isinstance(value, (int, float)) else 0.0
    if hasattr(utils, "ConstantSchedule") and hasattr(utils, "FloatSchedule"):
        return utils.FloatSchedule(utils.ConstantSchedule(v))
    return utils.get_schedule_fn(v)  # pragma: no cover - SB3 before 2.6


def _default(algo: type, key: str) -> Any:
    p = inspect.signature(algo.__init__).parameters.get(key)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def _policy_kwargs(fields: dict, path: Path) -> dict:
    classes = _kwarg_classes()
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if k.startswith(":"):
            continue
        if not isinstance(v, str):
            out[k] = v
            continue
        m = _CLASS.match(v)
        if m:
            if m.group(1) not in classes:
                raise UnsafeFileError(
                    f"SB3 model {str(path)!r}: policy_kwargs[{k!r}] is the class {m.group(1)}, which dyncnn_gym does not"
                    " rebuild (torch.optim optimisers, torch.nn modules and SB3 features extractors only)"
                )
            out[k] = classes[m.group(1)]
            continue
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            raise UnsafeFileError(
                f"SB3 model {str(path)!r}: policy_kwargs[{k!r}] = {v[:60]!r} is neither a Python literal nor a known class"
            ) from None
    return out


def read_zip(path: str | Path) -> tuple[dict, list[str]]:
    """The JSON ``data`` of a saved SB3 model and the names of its members.

    Raises:
        FileNotFoundError / IsADirectoryError: no file at ``path``.
        CorruptFileError: not a zip, or no readable ``data`` member (not an SB3 model).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a directory; give the .zip file an SB3 model was saved to")
    if not path.exists():
        raise FileNotFoundError(f"no SB3 model at {str(path)!r}")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if "data" not in names:
                raise CorruptFileError(
                    f"{str(path)!r} is a zip without a 'data' member: not a model saved by SB3's model.save"
                )
            blob = json.loads(z.read("data").decode())
    except zipfile.BadZipFile:
        raise CorruptFileError(f"{str(path)!r} is not a zip file: not a model saved by SB3's model.save") from None
    except (UnicodeDecodeError, json.JSONDecodeError, zipfile.LargeZipFile, EOFError, OSError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise
        raise CorruptFileError(f"{str(path)!r} is not a readable SB3 model ({type(e).__name__}: {e})") from None
    if not isinstance(blob, dict) or "policy_class" not in blob:
        raise CorruptFileError(f"{str(path)!r}: its 'data' member has no policy_class: not a model saved by SB3's model.save")
    return blob, names


def _check_pth(path: Path, names: list[str]) -> None:
    """Every ``.pth`` member must load with ``torch.load(weights_only=True)``."""
    import pickle

    import torch

    with zipfile.ZipFile(path) as z:
        for name in (n for n in names if n.endswith(".pth")):
            try:
                torch.load(io.BytesIO(z.read(name)), map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                raise UnsafeFileError(
                    f"SB3 model {str(path)!r}: its member {name!r} holds more than tensors ({str(e).splitlines()[-1][:120]});"
                    " dyncnn_gym does not load it"
                ) from None
            except (RuntimeError, EOFError, OSError, KeyError, ValueError) as e:
                raise CorruptFileError(f"SB3 model {str(path)!r}: its member {name!r} is damaged ({e})") from None


def algorithm_of(blob: dict, path: Path) -> str:
    """The algorithm that saved ``blob``: the one whose policies include the saved policy class
    (``PPO`` or ``A2C`` for the shared actor-critic policies: ``PPO`` if a ``clip_range`` is stored)."""
    fields = blob["policy_class"] if isinstance(blob["policy_class"], dict) else {}
    for name, algo in algorithms().items():
        try:
            _find_class(fields, list(algo.policy_aliases.values()), "policy_class", path)
        except UnsafeFileError:
            continue
        if name in ("PPO", "A2C"):
            return "PPO" if "clip_range" in blob else "A2C"
        return name
    _find_class(fields, [], "policy_class", path)  # raises, naming the class
    raise AssertionError("unreachable")  # pragma: no cover


def load_sb3_model(
    path: str | Path,
    algorithm: str | None = None,
    *,
    observation_space: Any = None,
    action_space: Any = None,
    device: str = "cpu",
) -> Any:
    """Load an SB3 / sb3-contrib model saved with ``model.save(path)``, unpickling nothing (see the
    module docstring).

    Args:
        algorithm: the algorithm's name (one of :func:`algorithms`); read from the policy class when ``None``.
        observation_space, action_space: the spaces to give the model (default: rebuilt from the file).

    Raises:
        FileNotFoundError / IsADirectoryError: no file at ``path``.
        CorruptFileError: (a ValueError) not an SB3 model zip, or a damaged one.
        UnsafeFileError: (a ValueError) the file holds something that would have to be unpickled; the key is named.
        ValueError: ``algorithm`` is not supported.
    """
    path = Path(path)
    blob, names = read_zip(path)
    algos = algorithms()
    algorithm = algorithm or algorithm_of(blob, path)
    if algorithm not in algos:
        raise ValueError(f"algorithm={algorithm!r} is not supported; choose one of {sorted(algos)}")
    algo = algos[algorithm]
    custom: dict[str, Any] = {}
    given = {"observation_space": observation_space, "action_space": action_space}
    for key, value in blob.items():
        if not (isinstance(value, dict) and ":serialized:" in value):
            continue
        if key == "policy_class":
            custom[key] = _find_class(value, list(algo.policy_aliases.values()), key, path)
        elif key in given:
            custom[key] = given[key] if given[key] is not None else _space(value, key, path)
        elif key in TRANSIENT_KEYS:
            custom[key] = None
        elif key in ("rollout_buffer_class", "replay_buffer_class"):
            custom[key] = _find_class(value, _buffer_classes(), key, path)
        elif key in SCHEDULE_KEYS:
            c = _constant(value)
            default = _default(algo, "learning_rate" if key == "lr_schedule" else key)
            v = c if c is not None else default
            custom[key] = _constant_schedule(v) if key in ("lr_schedule", "exploration_schedule") else v
        elif key == "train_freq":
            custom[key] = _default(algo, "train_freq")
        elif key == "policy_kwargs":
            custom[key] = _policy_kwargs(value, path)
        else:
            raise UnsafeFileError(
                f"SB3 model {str(path)!r} stores {key!r} as a pickled {value.get(':type:', 'object')}, which dyncnn_gym"
                " does not unpickle (it could run code); load it with SB3 itself only if you trust the file"
            )
    for key, space in given.items():
        if space is not None:
            custom[key] = space
    _check_pth(path, names)
    try:
        return algo.load(path, device=device, custom_objects=custom)
    except (KeyError, RuntimeError, AssertionError, AttributeError) as e:
        raise CorruptFileError(
            f"SB3 model {str(path)!r} could not be rebuilt as {algorithm} ({type(e).__name__}: {e})"
        ) from None


__all__ = ["SCHEDULE_KEYS", "TRANSIENT_KEYS", "algorithm_of", "algorithms", "load_sb3_model", "read_zip"]
