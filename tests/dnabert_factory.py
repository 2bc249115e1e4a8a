"""Tiny random DNABERT-S checkpoints in the real Hugging Face folder format, written by
virnucpro.models.formats; this adds what only the test suite knows: where the real tokenizer
is (the shared folder beside the repository), and how to read a folder back for the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from golden import SHARED_DIR

from virnucpro.models import formats


def shared_file(relative: str) -> Path | None:
    """A file of the project's shared folder (third-party data not kept in the repo), which
    sits beside the repository, as tests/golden.py finds it."""
    path = SHARED_DIR / relative
    return path if path.is_file() else None


def real_tokenizer_path() -> Path | None:
    return shared_file("models/dnabert-s_tokenizer.json")


def make_dnabert_folder(path: Path, *, tokenizer: str = "demo", **kwargs) -> Path:
    """formats.make_dnabert_folder, where tokenizer="real" means the released tokenizer.json
    from the shared folder."""
    if tokenizer == "real":
        tokenizer = real_tokenizer_path()
        if tokenizer is None:
            raise FileNotFoundError("the real DNABERT-S tokenizer.json is not available")
    return formats.make_dnabert_folder(path, tokenizer=tokenizer, **kwargs)


def read_folder(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, state dict) as written, for the reference implementation."""
    config = json.loads((Path(folder) / "config.json").read_text())
    bin_file = Path(folder) / "pytorch_model.bin"
    if bin_file.is_file():
        state = torch.load(bin_file, map_location="cpu", weights_only=True)
    else:
        from safetensors.torch import load_file

        state = load_file(str(Path(folder) / "model.safetensors"))
    return config, state
