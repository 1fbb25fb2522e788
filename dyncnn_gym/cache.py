"""Where dyncnn_gym keeps what it generates or trains: datasets and backbone checkpoints.

The directory is ``$DYNCNN_GYM_CACHE`` when set, else ``$XDG_CACHE_HOME/dyncnn_gym``,
else ``~/.cache/dyncnn_gym``. Nothing is ever downloaded into it on the default path.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "DYNCNN_GYM_CACHE"


def cache_dir(*parts: str, create: bool = True) -> Path:
    """Return ``<cache root>/<parts...>``, creating the directory unless ``create=False``."""
    root = os.environ.get(ENV_VAR)
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dyncnn_gym"
    path = base.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
