"""Where the models are cached: the one module that reads the cache environment variables.

Each cache is shared with another tool (torch.hub, huggingface_hub), so its place follows that
tool's rule. The variables are read at every call, not at import: those tools read them once,
when imported, and a process whose environment changed since (tests, a notebook) must still
look where the user pointed.
"""

from __future__ import annotations

import os
from pathlib import Path


def _from_env(variable: str) -> Path | None:
    value = os.environ.get(variable)
    return Path(value).expanduser() if value else None


def cache_home() -> Path:
    """$XDG_CACHE_HOME, else ~/.cache: the root every default below falls back to."""
    return _from_env("XDG_CACHE_HOME") or Path("~/.cache").expanduser()


def virnucpro_home() -> Path:
    """Where the classifiers go: $VIRNUCPRO_HOME, else $XDG_CACHE_HOME/virnucpro."""
    return _from_env("VIRNUCPRO_HOME") or cache_home() / "virnucpro"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache (DNABERT-S), with huggingface_hub's precedence:
    $HF_HUB_CACHE, its old name $HUGGINGFACE_HUB_CACHE, $HF_HOME/hub, $XDG_CACHE_HOME/huggingface/hub."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if folder := _from_env(variable):
            return folder
    if home := _from_env("HF_HOME"):
        return home / "hub"
    return cache_home() / "huggingface" / "hub"


def torch_hub_checkpoints() -> Path:
    """Where fair-esm's downloads land (ESM-2), with torch.hub's rule:
    $TORCH_HOME/hub/checkpoints, TORCH_HOME defaulting to $XDG_CACHE_HOME/torch."""
    torch_home = _from_env("TORCH_HOME") or cache_home() / "torch"
    return torch_home / "hub" / "checkpoints"
