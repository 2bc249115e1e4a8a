"""Find and load the VirNucPro classifier (`300_model.pth` / `500_model.pth`).

The released files are whole pickled modules of class `__main__.MLPClassifier` (the training
script ran as __main__), meant for torch.load(weights_only=False), which would run any code
the pickle names. Here they are read by safe_torch_load with an allow-list: that class name
is mapped to virnucpro's MLPClassifier, plus the four torch.nn layers it is made of. Only the
tensors are kept: a fresh MLPClassifier is built from them, so no object from the file
survives. A plain state dict (optionally under "state_dict" or "model") is accepted too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from virnucpro.config import CHUNK_LENGTHS
from virnucpro.errors import ModelError
from virnucpro.models.classifier import MLPClassifier
from virnucpro.models.safe_load import safe_torch_load

_WHAT = "classifier"
# What the released pickles name, and what each name is rebuilt as (all inert to unpickle).
_PICKLED_CLASSES: dict[str, type] = {
    "__main__.MLPClassifier": MLPClassifier,
    "torch.nn.modules.linear.Linear": nn.Linear,
    "torch.nn.modules.batchnorm.BatchNorm1d": nn.BatchNorm1d,
    "torch.nn.modules.dropout.Dropout": nn.Dropout,
    "torch.nn.modules.activation.ReLU": nn.ReLU,
}
_REQUIRED_KEYS = (
    "hidden_layer.weight", "hidden_layer.bias", "bn1.weight", "bn1.bias",
    "bn1.running_mean", "bn1.running_var", "output_layer.weight", "output_layer.bias",
)


def classifier_home() -> Path:
    """$VIRNUCPRO_HOME, else $XDG_CACHE_HOME/virnucpro, else ~/.cache/virnucpro."""
    if os.environ.get("VIRNUCPRO_HOME"):
        return Path(os.environ["VIRNUCPRO_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "virnucpro"


def default_classifier_path(chunk_len: int) -> Path:
    """Where `virnucpro models download` puts the classifier for this chunk length."""
    if chunk_len not in CHUNK_LENGTHS:
        raise ValueError(f"no released classifier for chunk length {chunk_len} "
                         f"(there are {CHUNK_LENGTHS[0]} and {CHUNK_LENGTHS[1]})")
    return classifier_home() / f"{chunk_len}_model.pth"


def load_classifier(path: Path) -> MLPClassifier:
    """A fresh fp32 MLPClassifier in eval mode with the file's weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"classifier not found: {path} (default place: {classifier_home()}, set by "
            "$VIRNUCPRO_HOME or $XDG_CACHE_HOME); get the released 300_model.pth / "
            "500_model.pth with `virnucpro models download`, or give the path of your copy"
        )
    loaded = safe_torch_load(path, what=_WHAT, allowed_classes=_PICKLED_CLASSES)
    state = _state_of(loaded, path)
    model = _model_for(state, path)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def _state_of(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """Tensors by state-dict name, from a whole module or a (wrapped) plain state dict."""
    if isinstance(loaded, dict):
        for wrapper in ("state_dict", "model"):
            if wrapper in loaded and not _looks_like_state(loaded):
                return _state_of(loaded[wrapper], path)
        state = {k.removeprefix("module."): v for k, v in loaded.items()}  # DataParallel
    elif isinstance(loaded, MLPClassifier):
        state = _module_tensors(loaded)
    else:
        raise ModelError(f"{_WHAT} {path} holds a {type(loaded).__name__}, neither an "
                         "MLPClassifier nor a state dict")
    _check_keys(state, path)
    return state


def _looks_like_state(mapping: dict) -> bool:
    return any(isinstance(v, torch.Tensor) for v in mapping.values())


def _module_tensors(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and buffers read straight from the unpickled attribute dicts.

    Reading `_parameters` / `_buffers` / `_modules` rather than calling state_dict() works
    whatever torch version wrote the file (older pickles lack some newer hook attributes).
    """
    attributes = vars(module)
    tensors: dict[str, torch.Tensor] = {}
    for bucket in ("_parameters", "_buffers"):
        for name, tensor in (attributes.get(bucket) or {}).items():
            if tensor is not None:
                tensors[prefix + name] = tensor.detach()
    for name, child in (attributes.get("_modules") or {}).items():
        if isinstance(child, nn.Module):
            tensors.update(_module_tensors(child, f"{prefix}{name}."))
    return tensors


def _check_keys(state: dict[str, Any], path: Path) -> None:
    missing = [k for k in _REQUIRED_KEYS if not isinstance(state.get(k), torch.Tensor)]
    if missing:
        raise ModelError(f"{_WHAT} {path} is not a VirNucPro MLPClassifier: it lacks "
                         f"{', '.join(missing)}")
    extra = sorted(set(state) - set(_REQUIRED_KEYS) - {"bn1.num_batches_tracked"})
    if extra:
        raise ModelError(f"{_WHAT} {path} has weights an MLPClassifier does not: "
                         f"{', '.join(extra[:5])}")


def _model_for(state: dict[str, torch.Tensor], path: Path) -> MLPClassifier:
    """An MLPClassifier sized from the weight shapes; every other shape must agree."""
    hidden_w, output_w = state["hidden_layer.weight"], state["output_layer.weight"]
    if hidden_w.dim() != 2 or output_w.dim() != 2:
        raise ModelError(f"{_WHAT} {path}: layer weights are not matrices")
    hidden_dim, input_dim = hidden_w.shape
    num_class = output_w.shape[0]
    if num_class != 2:
        raise ModelError(f"{_WHAT} {path} predicts {num_class} classes; VirNucPro's has 2 "
                         "(others, virus)")
    model = MLPClassifier(input_dim, hidden_dim, num_class)
    expected = model.state_dict()
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    if wrong:
        raise ModelError(f"{_WHAT} {path} has inconsistent shapes: {', '.join(wrong)}")
    if "bn1.num_batches_tracked" not in state:
        state["bn1.num_batches_tracked"] = torch.zeros((), dtype=torch.long)  # unused in eval
    return model
