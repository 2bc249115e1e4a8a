"""Tiny random fair-esm ESM-2 models: the reference the tests compare virnucpro's ESM-2 with.

The real esm2_t36_3B_UR50D.pt cannot be downloaded here, so tests build small models with the
same architecture in fair-esm itself (the reference), save them the way the released file is
laid out (virnucpro.models.formats.save_fair_esm_checkpoint: fp16 weights, prefixed keys, a
pickled config object, fp16-rounded inv_freq), and load them back through virnucpro's loader
and through fair-esm's own loader.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import esm
import torch

FAIR_ESM_NAME = "esm2_t2_tiny_test"  # fair-esm's loader keys its ESM-2 path on the "esm2" prefix


def make_fair_esm_model(
    num_layers: int = 2, embed_dim: int = 64, heads: int = 4, seed: int = 0
) -> esm.model.esm2.ESM2:
    """fair-esm ESM2 with every parameter random and fp16-representable.

    Random (not default-init) LayerNorm weights and biases make a test notice a LayerNorm or
    bias mix-up; fp16-representable values make the fair-esm model identical to what a saved
    fp16 checkpoint holds. inv_freq is rounded to fp16 like the released checkpoints.
    """
    model = esm.model.esm2.ESM2(
        num_layers=num_layers, embed_dim=embed_dim, attention_heads=heads,
        alphabet="ESM-1b", token_dropout=True,
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(_random_values(name, param, generator).half().float())
        for layer in model.layers:
            rotary = layer.self_attn.rot_emb
            rotary.inv_freq.copy_(rotary.inv_freq.half().float())
            rotary._seq_len_cached = None  # drop any cos/sin table built from the old values
    return model.eval()


def _random_values(name: str, param: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(param.shape, generator=generator)
    if "layer_norm" in name and name.endswith("weight"):
        return 1.0 + 0.2 * noise  # around 1, so activations keep their scale
    if name.endswith("bias"):
        return 0.1 * noise
    if param.ndim == 2 and "embed_tokens" not in name:
        return noise * param.shape[1] ** -0.5  # unit-variance outputs for unit-variance inputs
    return noise


def load_with_fair_esm(path: Path) -> esm.model.esm2.ESM2:
    """The reference: fair-esm's own loader reading the file (fp16 values into an fp32 model).
    The file is one this test suite just wrote, so a full unpickle is safe here."""
    data = torch.load(str(path), map_location="cpu", weights_only=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Regression weights not found")
        model, _alphabet = esm.pretrained.load_model_and_alphabet_core(FAIR_ESM_NAME, data)
    return model.eval()
