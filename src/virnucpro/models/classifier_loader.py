"""Find and load the VirNucPro classifier (`300_model.pth` / `500_model.pth`).

The released files are whole pickled modules of class `__main__.MLPClassifier` (the training
script ran as __main__), meant for torch.load(weights_only=False), which would run any code
the pickle names. Here they are read by safe_torch_load with an allow-list: that class name
is mapped to virnucpro's MLPClassifier, plus the four torch.nn layers it is made of. Only the
tensors are kept: a fresh MLPClassifier is built from them, so no object from the file
survives. A plain state dict (optionally under "state_dict" or "model") is accepted too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from virnucpro.config import CHUNK_LENGTHS
from virnucpro.errors import ModelError
from virnucpro.models import caches
from virnucpro.models.classifier import MLPClassifier
from virnucpro.models.safe_load import check_state, safe_torch_load

_WHAT = "classifier"
# What the released pickles name, and what each name is rebuilt as (all inert to unpickle).
_PICKLED_CLASSES: dict[str, type] = {
    "__main__.MLPClassifier": MLPClassifier,
    "torch.nn.modules.linear.Linear": nn.Linear,
    "torch.nn.modules.batchnorm.BatchNorm1d": nn.BatchNorm1d,
    "torch.nn.modules.dropout.Dropout": nn.Dropout,
    "torch.nn.modules.activation.ReLU": nn.ReLU,
}


def default_classifier_path(chunk_len: int) -> Path:
    """Where `virnucpro models download` puts the classifier for this chunk length."""
    if chunk_len not in CHUNK_LENGTHS:
        raise ValueError(f"no released classifier for chunk length {chunk_len} "
                         f"(there are {CHUNK_LENGTHS[0]} and {CHUNK_LENGTHS[1]})")
    return caches.virnucpro_home() / f"{chunk_len}_model.pth"


def load_classifier(path: Path) -> MLPClassifier:
    """A fresh fp32 MLPClassifier in eval mode with the file's weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"classifier not found: {path} (default place: {caches.virnucpro_home()}, set by "
            "$VIRNUCPRO_HOME or $XDG_CACHE_HOME); get the released 300_model.pth / "
            "500_model.pth with `virnucpro models download`, or give the path of your copy"
        )
    loaded = safe_torch_load(path, what=_WHAT, allowed_classes=_PICKLED_CLASSES)
    state = _state_of(loaded, path)
    model = _model_for(state, path)
    state.setdefault("bn1.num_batches_tracked", torch.zeros((), dtype=torch.long))  # unused in eval
    layers = model.hidden_layer
    against = f"an MLPClassifier of {layers.in_features} inputs and {layers.out_features} hidden units"
    check_state(model, state, path, _WHAT, against)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def _state_of(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """Tensors by state-dict name, from a whole module or a (wrapped) plain state dict."""
    if isinstance(loaded, dict):
        for wrapper in ("state_dict", "model"):
            if wrapper in loaded and not _looks_like_state(loaded):
                return _state_of(loaded[wrapper], path)
        return {k.removeprefix("module."): v for k, v in loaded.items()}  # DataParallel
    if isinstance(loaded, MLPClassifier):
        return _module_tensors(loaded)
    raise ModelError(f"{_WHAT} {path} holds a {type(loaded).__name__}, neither an "
                     "MLPClassifier nor a state dict")


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


def _model_for(state: dict[str, torch.Tensor], path: Path) -> MLPClassifier:
    """An MLPClassifier sized from the shapes of its two Linear weights."""
    hidden_w, output_w = state.get("hidden_layer.weight"), state.get("output_layer.weight")
    if not all(isinstance(w, torch.Tensor) and w.dim() == 2 for w in (hidden_w, output_w)):
        raise ModelError(f"{_WHAT} {path} is not a VirNucPro MLPClassifier: it has no "
                         "hidden_layer.weight and output_layer.weight matrices")
    hidden_dim, input_dim = hidden_w.shape
    num_class = output_w.shape[0]
    if num_class != 2:
        raise ModelError(f"{_WHAT} {path} predicts {num_class} classes; VirNucPro's has 2 "
                         "(others, virus)")
    return MLPClassifier(input_dim, hidden_dim, num_class)
