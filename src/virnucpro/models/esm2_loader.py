"""Find and load ESM-2 checkpoints into virnucpro's own `ESM2` module.

Formats read:
  - fair-esm's .pt (what `esm.pretrained` downloads into the torch hub cache): a pickle
    {"model": state_dict, "cfg": {"model": <config object>}, ...}, keys prefixed
    `encoder.sentence_encoder.` or `encoder.`, weights fp16. Unpickled by `safe_torch_load`,
    which builds tensors and inert config stand-ins only and never runs code from the file.
  - Hugging Face EsmModel / EsmForMaskedLM weights (.safetensors or .bin), with config.json
    beside them for the head count.
Every problem is a ModelError naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from virnucpro.errors import ModelError
from virnucpro.models.esm2 import ESM2
from virnucpro.models.protein_alphabet import ALPHABET_SIZE
from virnucpro.models.safe_load import safe_torch_load

ESM2_3B_NAME = "esm2_t36_3B_UR50D"
_WHAT = "ESM-2 checkpoint"
_HEAD_DIM_FALLBACK = 64  # every released ESM-2 uses 64-dim heads
_FAIR_ESM_PREFIXES = ("encoder.sentence_encoder.", "encoder.")
# Weights of heads virnucpro does not run; present in the released files, safe to skip.
_UNUSED_PREFIXES = ("lm_head.", "contact_head.", "pooler.", "embeddings.position_ids")
_LAYER_INDEX = re.compile(r"^layers\.(\d+)\.")
_HF_SHARED_INV_FREQ = "<inv_freq shared by all layers>"
_FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", f"{ESM2_3B_NAME}.pt")

# Hugging Face EsmModel name (after an optional "esm." prefix) -> fair-esm name.
_HF_RENAMES = (
    (r"^embeddings\.word_embeddings\.", "embed_tokens."),
    (r"^encoder\.emb_layer_norm_after\.", "emb_layer_norm_after."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.self_attn.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.self_attn.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.self_attn.v_proj."),
    (
        r"^encoder\.layer\.(\d+)\.attention\.self\.rotary_embeddings\.inv_freq$",
        r"layers.\1.self_attn.rot_emb.inv_freq",
    ),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.self_attn.out_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.LayerNorm\.", r"layers.\1.self_attn_layer_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.fc2."),
    (r"^encoder\.layer\.(\d+)\.LayerNorm\.", r"layers.\1.final_layer_norm."),
)


def default_esm2_path() -> Path:
    """Where fair-esm caches the 3B checkpoint: $TORCH_HOME/hub/checkpoints (~/.cache/torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{ESM2_3B_NAME}.pt"


def load_esm2(path: Path | str | None = None, *, dtype: torch.dtype | None = torch.float32) -> ESM2:
    """Load an ESM-2 checkpoint (default: the 3B model in the torch hub cache).

    path: a fair-esm .pt, a Hugging Face .safetensors/.bin, or a Hugging Face model folder.
    Returns an eval-mode module on the CPU with parameters in `dtype` (fp32 unless asked;
    None: the dtype the file stores them in) and the checkpoint's own rotary inv_freq values.
    A .pt file is memory-mapped, and the module is built on the meta device and then handed
    the converted tensors, so host memory peaks near one copy of the weights instead of a
    random init plus a copy; with dtype=None most tensors are not even copied.
    """
    path = _weights_file(default_esm2_path() if path is None else Path(path))
    state, cfg = _read_checkpoint(path)
    _check_all_tensors(state, path)
    if _is_hugging_face(state):
        named = _from_hugging_face(state)
        arch = _architecture(named, cfg, path)
        named = _with_original_rotary(named, arch)
    else:
        named = _from_fair_esm(state)
        arch = _architecture(named, cfg, path)
    module_state = _module_state(named, arch, dtype or _stored_dtype(named), path)
    return _build(arch, module_state)


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
        return _read_safetensors(path), _hf_config(path)
    loaded = safe_torch_load(path, what=_WHAT, allow_config_objects=True, mmap=True)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        cfg = loaded.get("cfg")
        model_cfg = _config_value(cfg, "model") if cfg is not None else None
        return loaded["model"], model_cfg
    if isinstance(loaded, Mapping) and loaded and all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        return loaded, _hf_config(path)  # a bare state dict, e.g. Hugging Face pytorch_model.bin
    raise ModelError(
        f"{_WHAT} {path} is not an ESM-2 checkpoint: expected a dict with a 'model' state dict "
        f"(fair-esm format) or a state dict of tensors, found {type(loaded).__name__}"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{_WHAT} {path} is not a readable safetensors file: {exc}") from None


def _hf_config(path: Path) -> dict[str, Any] | None:
    """config.json beside a Hugging Face weights file, mapped to fair-esm's config names."""
    config_file = path.parent / "config.json"
    if not config_file.is_file():
        return None
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_file} (config of {_WHAT} {path}) is unreadable: {exc}") from None
    names = {
        "encoder_layers": "num_hidden_layers",
        "encoder_embed_dim": "hidden_size",
        "encoder_attention_heads": "num_attention_heads",
        "token_dropout": "token_dropout",
    }
    return {ours: raw[theirs] for ours, theirs in names.items() if theirs in raw}


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


def _from_fair_esm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fair-esm names with the `encoder.sentence_encoder.` / `encoder.` prefix stripped."""
    return _drop_unused({_strip_fair_esm_prefix(str(k)): v for k, v in state.items()})


def _strip_fair_esm_prefix(name: str) -> str:
    for prefix in _FAIR_ESM_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _is_hugging_face(state: Mapping[str, Any]) -> bool:
    return any(str(k).endswith("embeddings.word_embeddings.weight") for k in state)


def _from_hugging_face(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face EsmModel names mapped to fair-esm's. Rotary inv_freq is set aside under
    _HF_SHARED_INV_FREQ when stored once for all layers (transformers 5 writes
    `encoder.layer.*.attention.self.rotary_embeddings.inv_freq`)."""
    named = {}
    for key, value in state.items():
        name = str(key).removeprefix("esm.")
        if name.startswith("encoder.layer.*.") and name.endswith("rotary_embeddings.inv_freq"):
            named[_HF_SHARED_INV_FREQ] = value
        else:
            named[_hf_name(name)] = value
    return _drop_unused(named)


def _hf_name(name: str) -> str:
    # transformers 5 saves LayerNorm parameters under their TensorFlow-era names.
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
    for pattern, replacement in _HF_RENAMES:
        renamed, count = re.subn(pattern, replacement, name)
        if count:
            return renamed
    return name  # left as is: reported as unexpected unless it is an unused head


def _with_original_rotary(
    named: dict[str, torch.Tensor], arch: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Give every layer the inv_freq the original (fair-esm) checkpoint holds.

    The fair-esm file stores inv_freq fp16-rounded, and those rounded values are what the
    original pipeline computes with. Hugging Face files may hold them per layer, once for all
    layers, or not at all (transformers 5 treats it as recomputable), and a recomputed copy is
    unrounded fp32. Rounding to fp16 maps a copy of either kind onto the original values; with
    none stored, the same formula rounded to fp16 gives them.
    """
    named = dict(named)
    shared = named.pop(_HF_SHARED_INV_FREQ, None)
    head_dim = arch["embed_dim"] // arch["attention_heads"]
    for i in range(arch["num_layers"]):
        key = f"layers.{i}.self_attn.rot_emb.inv_freq"
        stored = named.get(key, shared)
        if stored is None:
            stored = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        named[key] = stored.to(torch.float16).to(torch.float32)
    return named


# --- architecture and checks ----------------------------------------------------------------


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


def _expected_shapes(arch: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """fair-esm name -> shape of every tensor the model needs."""
    dim = arch["embed_dim"]
    half_head = dim // arch["attention_heads"] // 2
    shapes: dict[str, tuple[int, ...]] = {
        "embed_tokens.weight": (ALPHABET_SIZE, dim),
        "emb_layer_norm_after.weight": (dim,),
        "emb_layer_norm_after.bias": (dim,),
    }
    for i in range(arch["num_layers"]):
        layer = f"layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{layer}self_attn.{proj}.weight"] = (dim, dim)
            shapes[f"{layer}self_attn.{proj}.bias"] = (dim,)
        shapes[f"{layer}self_attn.rot_emb.inv_freq"] = (half_head,)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[f"{layer}{norm}.weight"] = (dim,)
            shapes[f"{layer}{norm}.bias"] = (dim,)
        shapes[f"{layer}fc1.weight"] = (4 * dim, dim)
        shapes[f"{layer}fc1.bias"] = (4 * dim,)
        shapes[f"{layer}fc2.weight"] = (dim, 4 * dim)
        shapes[f"{layer}fc2.bias"] = (dim,)
    return shapes


def _check_tensors(named: Mapping[str, torch.Tensor], arch: Mapping[str, Any], path: Path) -> None:
    expected = _expected_shapes(arch)
    problems = []
    missing = sorted(set(expected) - set(named))
    unexpected = sorted(set(named) - set(expected))
    if missing:
        problems.append(f"{len(missing)} missing tensor(s) ({', '.join(missing[:4])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) ({', '.join(unexpected[:4])})")
    wrong = [
        f"{k} is {tuple(named[k].shape)}, expected {shape}"
        for k, shape in expected.items()
        if k in named and tuple(named[k].shape) != shape
    ]
    if wrong:
        problems.append(f"{len(wrong)} wrongly shaped tensor(s) ({'; '.join(wrong[:3])})")
    if problems:
        raise ModelError(
            f"{_WHAT} {path} does not match ESM-2 ({arch['num_layers']} layers, dim "
            f"{arch['embed_dim']}): {'; '.join(problems)}"
        )


# --- conversion -----------------------------------------------------------------------------


def _module_state(
    named: Mapping[str, torch.Tensor], arch: Mapping[str, Any], dtype: torch.dtype, path: Path
) -> dict[str, torch.Tensor]:
    """Our module's state dict: q/k/v fused, everything cast to dtype, inv_freq kept exact."""
    _check_tensors(named, arch, path)
    state = {
        name: named[name].to(dtype)
        for name in ("embed_tokens.weight", "emb_layer_norm_after.weight", "emb_layer_norm_after.bias")
    }
    for i in range(arch["num_layers"]):
        state.update(_layer_state(named, f"layers.{i}.", dtype, path))
    return state


def _layer_state(
    named: Mapping[str, torch.Tensor], layer: str, dtype: torch.dtype, path: Path
) -> dict[str, torch.Tensor]:
    attn = f"{layer}self_attn."
    state = {f"{attn}qkv_proj.{p}": _fuse_qkv(named, attn, p, dtype) for p in ("weight", "bias")}
    state[f"{attn}rotary.inv_freq_bits"] = _inv_freq_bits(named[f"{attn}rot_emb.inv_freq"], layer, path)
    copied = [
        "self_attn.out_proj.weight", "self_attn.out_proj.bias",
        "self_attn_layer_norm.weight", "self_attn_layer_norm.bias",
        "final_layer_norm.weight", "final_layer_norm.bias",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
    ]
    state.update({f"{layer}{name}": named[f"{layer}{name}"].to(dtype) for name in copied})
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


def _inv_freq_bits(inv_freq: torch.Tensor, layer: str, path: Path) -> torch.Tensor:
    """The checkpoint's inv_freq (fp16-rounded in the real file), widened to fp32 exactly."""
    values = inv_freq.to(torch.float32)
    if not bool(torch.isfinite(values).all()) or not bool((values > 0).all()):
        raise ModelError(f"{_WHAT} {path} has invalid rotary frequencies in {layer}: {values.tolist()}")
    return values.contiguous().view(torch.int32)


def _build(arch: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> ESM2:
    with torch.device("meta"):
        model = ESM2(**arch)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
