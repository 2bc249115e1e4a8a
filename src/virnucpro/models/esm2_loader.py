"""Find and load ESM-2 checkpoints into virnucpro's own `ESM2` module.

Formats read:
  - fair-esm's .pt (what `esm.pretrained` downloads into the torch hub cache): a pickle
    {"model": state_dict, "cfg": {"model": <config object>}, ...}, keys prefixed
    `encoder.sentence_encoder.` or `encoder.`, weights fp16. Unpickled by `safe_torch_load`,
    which builds tensors and inert config stand-ins only and never runs code from the file.
  - Hugging Face EsmModel / EsmForMaskedLM weights (.safetensors or .bin), with config.json
    beside them for the head count: esm2_hf.py maps them onto fair-esm's names first.
Every problem is a ModelError naming the file and what is wrong with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from virnucpro.errors import ModelError
from virnucpro.models import caches
from virnucpro.models.esm2 import ESM2
from virnucpro.models.esm2_hf import from_hugging_face, hf_config, is_hugging_face, with_original_rotary
from virnucpro.models.protein_alphabet import ALPHABET_SIZE
from virnucpro.models.safe_load import check_state, read_safetensors, safe_torch_load

ESM2_3B_NAME = "esm2_t36_3B_UR50D"
_WHAT = "ESM-2 checkpoint"
_HEAD_DIM_FALLBACK = 64  # every released ESM-2 uses 64-dim heads
_FAIR_ESM_PREFIXES = ("encoder.sentence_encoder.", "encoder.")
# Weights of heads virnucpro does not run; present in the released files, safe to skip.
_UNUSED_PREFIXES = ("lm_head.", "contact_head.", "pooler.", "embeddings.position_ids")
_LAYER_INDEX = re.compile(r"^layers\.(\d+)\.")
_FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", f"{ESM2_3B_NAME}.pt")
_ROTARY = "rotary.inv_freq_bits"  # ESM2's one rotary buffer; fair-esm has one per layer
_COPIED = ("embed_tokens.weight", "emb_layer_norm_after.weight", "emb_layer_norm_after.bias")
_COPIED_PER_LAYER = (
    "self_attn.out_proj.weight", "self_attn.out_proj.bias",
    "self_attn_layer_norm.weight", "self_attn_layer_norm.bias",
    "final_layer_norm.weight", "final_layer_norm.bias",
    "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
)


def default_esm2_path() -> Path:
    """Where fair-esm caches the 3B checkpoint: $TORCH_HOME/hub/checkpoints (~/.cache/torch)."""
    return caches.torch_hub_checkpoints() / f"{ESM2_3B_NAME}.pt"


def load_esm2(path: Path | str | None = None, *, dtype: torch.dtype | None = torch.float32) -> ESM2:
    """Load an ESM-2 checkpoint (default: the 3B model in the torch hub cache).

    path: a fair-esm .pt, a Hugging Face .safetensors/.bin, or a Hugging Face model folder.
    Returns an eval-mode module on the CPU with parameters in `dtype` (fp32 unless asked;
    None: the dtype the file stores them in) and the checkpoint's own rotary inv_freq values.
    A .pt file is memory-mapped, and the module is built on the meta device and then handed
    the converted tensors, so host memory peaks near one copy of the weights instead of a
    random init plus a copy; with dtype=None most tensors are not even copied.
    """
    return open_esm2(path).module(dtype)


@dataclass(frozen=True)
class Esm2File:
    """An opened, checked ESM-2 checkpoint whose architecture is known but whose weights are
    not yet converted (a .pt stays memory-mapped): what a worker needs to start compiling
    ESM-2 while the weights are still being read."""

    path: Path
    named: Mapping[str, torch.Tensor]  # fair-esm names, unused heads dropped
    architecture: Mapping[str, Any]  # ESM2 constructor arguments

    def module(self, dtype: torch.dtype | None = torch.float32) -> ESM2:
        """The eval-mode module on the CPU, parameters in `dtype` (None: the stored dtype)."""
        return _build(self.named, self.architecture, dtype or _stored_dtype(self.named), self.path)


def open_esm2(path: Path | str | None = None) -> Esm2File:
    """Open and check an ESM-2 checkpoint (see load_esm2) without converting its weights."""
    path = _weights_file(default_esm2_path() if path is None else Path(path))
    state, cfg = _read_checkpoint(path)
    _check_all_tensors(state, path)
    from_hf = is_hugging_face(state)
    named = _drop_unused(from_hugging_face(state) if from_hf else _strip_fair_esm_prefixes(state))
    arch = _architecture(named, cfg, path)
    if from_hf:
        head_dim = arch["embed_dim"] // arch["attention_heads"]
        named = with_original_rotary(named, arch["num_layers"], head_dim)
    _check_names_and_shapes(named, arch, path)
    return Esm2File(path, named, arch)


def _check_names_and_shapes(named: Mapping[str, torch.Tensor], arch: Mapping[str, Any], path: Path) -> None:
    """The file's tensors against the module's own state dict (seen under fair-esm's names)."""
    with torch.device("meta"):
        expected = fair_esm_names(ESM2(**arch).state_dict(), arch["num_layers"])
    check_state(expected, named, path, _WHAT, f"ESM-2 ({arch['num_layers']} layers, dim {arch['embed_dim']})")


def _stored_dtype(named: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The floating dtype of the file's weights (fp16 in the released checkpoint); fp32 when
    they differ (e.g. fp16 matrices with fp32 norms), so that no stored value is rounded."""
    stored = {t.dtype for t in named.values() if t.is_floating_point()}
    if len(stored) == 1 and (only := stored.pop()) in (torch.float16, torch.bfloat16, torch.float32):
        return only
    return torch.float32


def _weights_file(path: Path) -> Path:
    """The file to read: `path` itself, or the weights inside a Hugging Face model folder."""
    if path.is_dir():
        for name in _FOLDER_WEIGHTS:
            if (path / name).is_file():
                return path / name
        raise ModelError(
            f"ESM-2 model folder {path} holds none of {', '.join(_FOLDER_WEIGHTS)}; pass "
            f"`--esm-model PATH` naming the weights file, or get {ESM2_3B_NAME}.pt with "
            "`virnucpro models download`"
        )
    if not path.is_file():
        raise ModelError(_missing_message(path))
    return path


def _missing_message(path: Path) -> str:
    where = f"ESM-2 3B weights ({ESM2_3B_NAME}.pt) not found at {path}"
    if path == default_esm2_path():
        where += " (the torch hub cache: $TORCH_HOME/hub/checkpoints, TORCH_HOME defaults to ~/.cache/torch)"
    return (
        f"{where}. Get them with `virnucpro models download` (needs internet), "
        "or pass `--esm-model PATH` pointing at a copy of the file."
    )


# --- reading -------------------------------------------------------------------------------


def _read_checkpoint(path: Path) -> tuple[Mapping[str, Any], Any]:
    """(state dict, architecture config or None) from any supported file format."""
    if path.suffix == ".safetensors":
        return read_safetensors(path, _WHAT), hf_config(path, _WHAT)
    loaded = safe_torch_load(path, what=_WHAT, allow_config_objects=True, mmap=True)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        cfg = loaded.get("cfg")
        model_cfg = _config_value(cfg, "model") if cfg is not None else None
        return loaded["model"], model_cfg
    if isinstance(loaded, Mapping) and loaded and all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        return loaded, hf_config(path, _WHAT)  # a bare state dict, e.g. Hugging Face pytorch_model.bin
    raise ModelError(
        f"{_WHAT} {path} is not an ESM-2 checkpoint: expected a dict with a 'model' state dict "
        f"(fair-esm format) or a state dict of tensors, found {type(loaded).__name__}"
    )


def _config_value(cfg: Any, name: str) -> Any:
    """An attribute of a config that may be a dict, an InertConfig stand-in for an
    argparse.Namespace, or a stand-in for an omegaconf DictConfig (values under _content)."""
    if cfg is None:
        return None
    if isinstance(cfg, Mapping):
        return cfg.get(name)
    value = getattr(cfg, name, None)
    if value is None:
        content = getattr(cfg, "_content", None)
        if isinstance(content, Mapping) and name in content:
            node = content[name]
            value = getattr(node, "_val", node)
    return value


# --- names ----------------------------------------------------------------------------------


def _check_all_tensors(state: Mapping[str, Any], path: Path) -> None:
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ModelError(
            f"{_WHAT} {path} is not an ESM-2 checkpoint: its state dict holds non-tensors "
            f"({', '.join(not_tensors[:3])})"
        )


def _drop_unused(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in named.items() if not k.startswith(_UNUSED_PREFIXES)}


def _strip_fair_esm_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fair-esm names with the `encoder.sentence_encoder.` / `encoder.` prefix stripped."""
    return {_strip_fair_esm_prefix(str(k)): v for k, v in state.items()}


def _strip_fair_esm_prefix(name: str) -> str:
    for prefix in _FAIR_ESM_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def fair_esm_names(state: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """An ESM2 state dict under fair-esm's names and layout (the inverse of `_module_state`):
    q, k and v apart, and the one rotary inv_freq, as floats, in every layer. The loader checks
    a file against it; formats.py writes checkpoints with it."""
    named = {}
    for name, tensor in state.items():
        if name == _ROTARY:
            for i in range(num_layers):
                named[f"layers.{i}.self_attn.rot_emb.inv_freq"] = tensor.view(torch.float32)
        elif ".qkv_proj." in name:
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                named[name.replace("qkv_proj", part)] = piece
        else:
            named[name] = tensor
    return named


# --- architecture ---------------------------------------------------------------------------


def _architecture(named: Mapping[str, torch.Tensor], cfg: Any, path: Path) -> dict[str, Any]:
    """ESM2 constructor arguments, from the config where present, else from tensor shapes."""
    embed = named.get("embed_tokens.weight")
    if embed is None or embed.ndim != 2:
        some = ", ".join(sorted(named)[:4]) or "nothing"
        raise ModelError(
            f"{_WHAT} {path} is not an ESM-2 checkpoint: no token embedding "
            f"(embed_tokens.weight); it holds {some}"
        )
    vocab, dim = embed.shape
    if vocab != ALPHABET_SIZE:
        raise ModelError(
            f"{_WHAT} {path} has a {vocab}-token vocabulary; ESM-2 uses {ALPHABET_SIZE} tokens"
        )
    indices = {int(m.group(1)) for k in named if (m := _LAYER_INDEX.match(k))}
    num_layers = max(indices) + 1 if indices else 0
    heads = _config_value(cfg, "encoder_attention_heads") or dim // _HEAD_DIM_FALLBACK
    token_dropout = _config_value(cfg, "token_dropout")
    _check_config_agrees(cfg, num_layers, dim, path)
    if num_layers == 0 or heads <= 0 or dim % heads or (dim // heads) % 2:
        raise ModelError(
            f"{_WHAT} {path} has an impossible shape: {num_layers} layers, dim {dim}, "
            f"{heads} heads (the head size must be a whole, even number)"
        )
    return {
        "num_layers": num_layers,
        "embed_dim": int(dim),
        "attention_heads": int(heads),
        "alphabet_size": int(vocab),
        "token_dropout": True if token_dropout is None else bool(token_dropout),
    }


def _check_config_agrees(cfg: Any, num_layers: int, dim: int, path: Path) -> None:
    for name, found in (("encoder_layers", num_layers), ("encoder_embed_dim", dim)):
        declared = _config_value(cfg, name)
        if declared is not None and int(declared) != found:
            raise ModelError(
                f"{_WHAT} {path} is inconsistent: its config says {name}={declared} but its "
                f"weights have {found}"
            )


# --- conversion -----------------------------------------------------------------------------


def _build(
    named: Mapping[str, torch.Tensor], arch: Mapping[str, Any], dtype: torch.dtype, path: Path
) -> ESM2:
    """The module, built on the meta device and handed the file's (checked) tensors."""
    with torch.device("meta"):
        model = ESM2(**arch)
    model.load_state_dict(_module_state(named, arch["num_layers"], dtype, path), strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _module_state(
    named: Mapping[str, torch.Tensor], num_layers: int, dtype: torch.dtype, path: Path
) -> dict[str, torch.Tensor]:
    """Our module's state dict: q/k/v fused, everything cast to dtype, inv_freq kept exact."""
    state = {name: named[name].to(dtype) for name in _COPIED}
    for i in range(num_layers):
        layer = f"layers.{i}."
        attn = f"{layer}self_attn."
        for part in ("weight", "bias"):
            state[f"{attn}qkv_proj.{part}"] = _fuse_qkv(named, attn, part, dtype)
        state.update({f"{layer}{name}": named[f"{layer}{name}"].to(dtype) for name in _COPIED_PER_LAYER})
    state[_ROTARY] = _shared_inv_freq_bits(named, num_layers, path)
    return state


def _fuse_qkv(
    named: Mapping[str, torch.Tensor], attn: str, part: str, dtype: torch.dtype
) -> torch.Tensor:
    """[q; k; v] stacked along the output dimension, written straight into the target dtype
    (no full-size intermediate copy in the source dtype)."""
    pieces = [named[f"{attn}{p}_proj.{part}"] for p in ("q", "k", "v")]
    rows = pieces[0].shape[0]
    fused = torch.empty((3 * rows, *pieces[0].shape[1:]), dtype=dtype)  # [3D] or [3D, D]
    for i, piece in enumerate(pieces):
        fused[i * rows : (i + 1) * rows].copy_(piece)
    return fused


def _shared_inv_freq_bits(named: Mapping[str, torch.Tensor], num_layers: int, path: Path) -> torch.Tensor:
    """The checkpoint's inv_freq (fp16-rounded in the real file), widened to fp32 exactly and
    kept as int32 bits. ESM2 holds one for all layers, so the layers must agree, as they do in
    every released file."""
    per_layer = [_valid_inv_freq(named, f"layers.{i}.", path) for i in range(num_layers)]
    for i, values in enumerate(per_layer):
        if not torch.equal(values, per_layer[0]):
            raise ModelError(
                f"{_WHAT} {path} stores different rotary frequencies (rot_emb.inv_freq) in "
                f"layers 0 and {i}; virnucpro computes one set of rotary angles for all layers, "
                "as every released ESM-2 allows"
            )
    return per_layer[0].contiguous().view(torch.int32)


def _valid_inv_freq(named: Mapping[str, torch.Tensor], layer: str, path: Path) -> torch.Tensor:
    values = named[f"{layer}self_attn.rot_emb.inv_freq"].to(torch.float32)
    if not bool(torch.isfinite(values).all()) or not bool((values > 0).all()):
        raise ModelError(f"{_WHAT} {path} has invalid rotary frequencies in {layer}: {values.tolist()}")
    return values
