"""Read model files without executing anything they contain, and check what they hold.

`torch.load(weights_only=True)` only rebuilds tensors and plain containers; every other class
must be on an explicit allow-list. We add two kinds of entries:
  - real classes whose unpickling is inert (nn.Linear & co. only set attributes), and
  - `InertConfig`, a stand-in for configuration objects (argparse.Namespace, omegaconf
    containers) that records what the file says and runs no code of the file's choosing.
A pickle that names anything else -- os.system, builtins.eval, a class of some other package --
is refused before a single object is built, with the offending name in the message.

Every loader then checks the tensors it got against the module it builds (`check_state`), so a
wrong or damaged file is one ModelError naming the file and every tensor that does not fit.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from virnucpro.errors import ModelError

# Modules whose classes are pure configuration containers: mapped to InertConfig.
_CONFIG_MODULE_PREFIXES = ("argparse", "omegaconf")


class InertConfig:
    """Stand-in for a pickled configuration object: remembers attributes, executes nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        elif isinstance(state, tuple) and state and isinstance(state[-1], dict):
            self.__dict__.update(state[-1])

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return f"InertConfig({shown})"


def _globals_named_in(path: Path) -> list[str]:
    """Fully qualified globals the pickle would import (zip-format checkpoints only)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except (RuntimeError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError, OSError):
        return []


def safe_torch_load(
    path: str | Path,
    *,
    what: str,
    allowed_classes: dict[str, type] | None = None,
    allow_config_objects: bool = False,
    mmap: bool = False,
) -> Any:
    """`torch.load` restricted to tensors, containers and the named classes.

    what:                 human name of the file ("ESM-2 checkpoint"), used in errors.
    allowed_classes:      {"module.QualName": class to build instead}, e.g. mapping
                          "__main__.MLPClassifier" to virnucpro's own class.
    allow_config_objects: map argparse/omegaconf objects to InertConfig.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{what} not found: {path}")
    allowed = dict(allowed_classes or {})
    named = _globals_named_in(path)
    if allow_config_objects:
        for name in named:
            if name.split(".")[0] in _CONFIG_MODULE_PREFIXES and name not in allowed:
                allowed[name] = InertConfig
    refused = [name for name in named if name not in allowed]
    if refused:
        raise ModelError(
            f"{what} {path} refused: it would import {', '.join(sorted(refused))}, which is not "
            "an allowed model class (virnucpro never executes code from model files)"
        )
    safe = [(cls, name) for name, cls in allowed.items()]
    try:
        with torch.serialization.safe_globals(safe), warnings.catch_warnings():
            # A plain (non-torch.save) pickle makes torch warn about its protocol first.
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise ModelError(f"{what} {path} refused: {detail}") from None
    except RuntimeError as exc:
        if mmap and "mmap" in str(exc):
            # Old (non-zip) serialisation cannot be memory-mapped; load it normally.
            return safe_torch_load(
                path, what=what, allowed_classes=allowed_classes,
                allow_config_objects=allow_config_objects, mmap=False,
            )
        raise ModelError(f"{what} {path} is not a readable PyTorch file: {exc}") from None
    except (EOFError, OSError, ValueError, zipfile.BadZipFile, IndexError, KeyError) as exc:
        # Arbitrary bytes read as a legacy (non-zip) torch pickle fail inside the unpickler
        # with IndexError / KeyError as often as with the errors above.
        raise ModelError(f"{what} {path} is not a readable PyTorch file: "
                         f"{type(exc).__name__}: {exc}") from None


def read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file, on the CPU (the format holds no code at all)."""
    from safetensors import SafetensorError  # deferred: only this format needs it
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{what} {path} is not a readable safetensors file: {exc}") from None


def check_state(expected: torch.nn.Module | Mapping[str, Any], state: Mapping[str, Any],
                path: Path, what: str, against: str) -> None:
    """Raise one ModelError if `state` lacks a tensor, holds one too many, or holds one of the
    wrong shape, naming the file and the tensors (a few of each kind).

    expected: the module the state is for (built on the meta device, it costs no memory), or
    {name: tensor or shape}. against: what the file should fit, e.g. "its config.json".
    """
    if isinstance(expected, torch.nn.Module):
        expected = expected.state_dict()
    shapes = {name: tuple(getattr(value, "shape", value)) for name, value in expected.items()}
    wrong = [f"{name} is {_shape_of(state[name])}, expected {shape}"
             for name, shape in shapes.items() if name in state and _shape_of(state[name]) != shape]
    problems = [
        _few(items, f"{label} tensor(s)", separator)
        for label, items, separator in (
            ("missing", [name for name in shapes if name not in state], ", "),
            ("unexpected", sorted(set(state) - set(shapes)), ", "),
            ("wrongly shaped", wrong, "; "),
        )
        if items
    ]
    if problems:
        raise ModelError(f"{what} {path} does not match {against}: {'; '.join(problems)}")


def _shape_of(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


def _few(items: list[str], label: str, separator: str) -> str:
    """The count and the first five, as in `2 missing tensor(s) (a, b)`: a 36-layer model can
    miss hundreds, and the first ones tell what is wrong."""
    shown = separator.join(items[:5]) + (f"{separator}..." if len(items) > 5 else "")
    return f"{len(items)} {label} ({shown})"
