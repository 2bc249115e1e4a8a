"""Tiny random models for `virnucpro predict --demo`: the whole pipeline offline in seconds.

They have the real architectures at toy sizes, with weights drawn from a fixed seed, so a demo
run is reproducible byte for byte. Their predictions mean nothing biologically, and the CLI
says so on screen.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from virnucpro.models.classifier import MLPClassifier
from virnucpro.models.dna_tokenizer import DnaTokenizer, build_demo_tokenizer
from virnucpro.models.dnabert_s import DNABertS
from virnucpro.models.esm2 import ESM2

DEMO_SEED = 20240601
DEMO_ESM = dict(num_layers=2, embed_dim=64, attention_heads=4)
DEMO_DNABERT = dict(hidden=64, layers=2, heads=4, intermediate=128)
DEMO_CLASSIFIER_HIDDEN = 32


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Overwrite every floating parameter with seeded noise (LayerNorm scales around 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("weight") and p.dim() == 1:  # norm scales
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return module


def demo_tokenizer() -> DnaTokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        build_demo_tokenizer(path)
        return DnaTokenizer.from_file(path)


def demo_esm() -> ESM2:
    return _randomise(ESM2(**DEMO_ESM), DEMO_SEED).eval()


def demo_dnabert(vocab_size: int) -> DNABertS:
    return _randomise(DNABertS(vocab_size=vocab_size, **DEMO_DNABERT), DEMO_SEED + 1).eval()


def demo_classifier(input_dim: int) -> MLPClassifier:
    model = _randomise(MLPClassifier(input_dim, DEMO_CLASSIFIER_HIDDEN, 2), DEMO_SEED + 2)
    gen = torch.Generator().manual_seed(DEMO_SEED + 3)
    with torch.no_grad():  # BatchNorm statistics are buffers: give them plausible values
        model.bn1.running_mean.copy_(0.1 * torch.randn(DEMO_CLASSIFIER_HIDDEN, generator=gen))
        model.bn1.running_var.copy_(0.5 + torch.rand(DEMO_CLASSIFIER_HIDDEN, generator=gen))
    return model.eval()
