"""Where portwatch keeps files: the data directory and the cache directory.

Both follow the XDG base directory spec, with an environment override each
(the systemd unit points them at ``StateDirectory``/``CacheDirectory``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["cache_dir", "data_dir"]


def _xdg(env: Mapping[str, str], override: str, xdg: str, fallback: str) -> Path:
    if env.get(override):
        return Path(env[override])
    base = env.get(xdg) or str(Path(env.get("HOME", "/root")) / fallback)
    return Path(base) / "portwatch"


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``PORTWATCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/portwatch``."""
    return _xdg(os.environ if env is None else env, "PORTWATCH_CACHE_DIR", "XDG_CACHE_HOME",
                ".cache")


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    """``PORTWATCH_DATA_DIR``, else ``$XDG_DATA_HOME/portwatch``."""
    return _xdg(os.environ if env is None else env, "PORTWATCH_DATA_DIR", "XDG_DATA_HOME",
                ".local/share")
