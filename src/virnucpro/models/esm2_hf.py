"""ESM-2 in Hugging Face format (EsmModel / EsmForMaskedLM): its names mapped to fair-esm's.

The documented download is fair-esm's .pt; the same weights are published on the Hugging Face
hub as `facebook/esm2_t36_3B_UR50D`, and users who have that copy can point --esm-model at it.
This module turns such a state dict (and the config.json beside it) into the fair-esm names
and config that esm2_loader reads, with the rotary frequencies the original computes with.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from virnucpro.errors import ModelError
from virnucpro.models.esm2 import standard_inv_freq

_SHARED_INV_FREQ = "<inv_freq shared by all layers>"

# Hugging Face EsmModel name (after an optional "esm." prefix) -> fair-esm name.
_RENAMES = (
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
# config.json name -> the fair-esm config name esm2_loader reads.
_CONFIG_NAMES = {
    "encoder_layers": "num_hidden_layers",
    "encoder_embed_dim": "hidden_size",
    "encoder_attention_heads": "num_attention_heads",
    "token_dropout": "token_dropout",
}


def is_hugging_face(state: Mapping[str, Any]) -> bool:
    return any(str(k).endswith("embeddings.word_embeddings.weight") for k in state)


def hf_config(path: Path, what: str) -> dict[str, Any] | None:
    """config.json beside a Hugging Face weights file, under fair-esm's config names."""
    config_file = path.parent / "config.json"
    if not config_file.is_file():
        return None
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_file} (config of {what} {path}) is unreadable: {exc}") from None
    return {ours: raw[theirs] for ours, theirs in _CONFIG_NAMES.items() if theirs in raw}


def from_hugging_face(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors under fair-esm's names. A rotary inv_freq stored once for all layers
    (transformers 5 writes `encoder.layer.*.attention.self.rotary_embeddings.inv_freq`) is set
    aside for `with_original_rotary`."""
    named = {}
    for key, value in state.items():
        name = str(key).removeprefix("esm.")
        if name.startswith("encoder.layer.*.") and name.endswith("rotary_embeddings.inv_freq"):
            named[_SHARED_INV_FREQ] = value
        else:
            named[_fair_esm_name(name)] = value
    return named


def _fair_esm_name(name: str) -> str:
    # transformers 5 saves LayerNorm parameters under their TensorFlow-era names.
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
    for pattern, replacement in _RENAMES:
        renamed, count = re.subn(pattern, replacement, name)
        if count:
            return renamed
    return name  # left as is: reported as unexpected unless it is an unused head


def with_original_rotary(
    named: dict[str, torch.Tensor], num_layers: int, head_dim: int
) -> dict[str, torch.Tensor]:
    """Give every layer the inv_freq the original (fair-esm) checkpoint holds.

    The fair-esm file stores inv_freq fp16-rounded, and those rounded values are what the
    original pipeline computes with. Hugging Face files may hold them per layer, once for all
    layers, or not at all (transformers 5 treats it as recomputable), and a recomputed copy is
    unrounded fp32. Rounding to fp16 maps a copy of either kind onto the original values; with
    none stored, the standard values (the same formula, fp16-rounded) are the original's.
    """
    named = dict(named)
    shared = named.pop(_SHARED_INV_FREQ, None)
    for i in range(num_layers):
        key = f"layers.{i}.self_attn.rot_emb.inv_freq"
        stored = named.get(key, shared)
        if stored is None:
            stored = standard_inv_freq(head_dim)
        named[key] = stored.to(torch.float16).to(torch.float32)
    return named
