"""`virnucpro models download`: fetch the real models into the caches the loaders read.

Needs internet access (compute nodes often have none: run it once on a login node; the
caches are plain folders you can copy; caches.py says where they are). Every file lands under
a temporary name first (layout.open_temp) and is renamed only once complete, and the
classifier is checked by the safe loader before it is kept, so an interrupted download never
leaves a file that looks valid.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from virnucpro.config import CHUNK_LENGTHS, MODEL_CHOICES
from virnucpro.errors import ModelError
from virnucpro.layout import open_temp, remove_quietly
from virnucpro.models import caches
from virnucpro.models.classifier_loader import default_classifier_path, load_classifier
from virnucpro.models.dnabert_s_loader import DNABERT_S_REPO
from virnucpro.models.esm2_loader import default_esm2_path

ESM2_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/esm2_t36_3B_UR50D.pt"
CLASSIFIER_URL = "https://github.com/Li-Jing-1997/VirNucPro/raw/main/{chunk_len}_model.pth"


def _download_url(url: str, dest: Path, validate: Callable[[Path], object] | None = None) -> None:
    partial: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial, handle = open_temp(dest.parent, dest.name, text=False)
        handle.close()
        torch.hub.download_url_to_file(url, str(partial), progress=True)
        if validate is not None:
            validate(partial)
        os.replace(partial, dest)
        partial = None
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - network errors come in many types; all mean the same here
        raise ModelError(f"download of {url} failed: {exc}") from None
    finally:
        if partial is not None:
            remove_quietly(partial)


def download_esm2(log: Callable[[str], None]) -> Path:
    dest = default_esm2_path()
    if dest.is_file():
        log(f"ESM-2 3B already present: {dest}")
        return dest
    log(f"downloading ESM-2 3B (5.7 GB) to {dest}")
    _download_url(ESM2_URL, dest)
    return dest


def download_dnabert_s(log: Callable[[str], None]) -> Path:
    from huggingface_hub import snapshot_download

    cache = caches.hf_hub_cache()  # where the loader will look, whatever huggingface_hub read at import
    log(f"downloading DNABERT-S ({DNABERT_S_REPO}) into the Hugging Face cache {cache}")
    try:
        folder = snapshot_download(
            DNABERT_S_REPO, cache_dir=cache,
            allow_patterns=["config.json", "pytorch_model.bin", "tokenizer.json"],
        )
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"download of {DNABERT_S_REPO} from the Hugging Face hub failed: {exc}") from None
    return Path(folder)


def download_classifiers(log: Callable[[str], None]) -> list[Path]:
    paths = []
    for chunk_len in CHUNK_LENGTHS:
        dest = default_classifier_path(chunk_len)
        if dest.is_file():
            log(f"classifier {chunk_len} already present: {dest}")
        else:
            log(f"downloading {chunk_len}_model.pth to {dest}")
            _download_url(CLASSIFIER_URL.format(chunk_len=chunk_len), dest, validate=load_classifier)
        paths.append(dest)
    return paths


def download(only: list[str] | None, log: Callable[[str], None]) -> None:
    wanted = only or list(MODEL_CHOICES)
    steps = {"esm": download_esm2, "dnabert": download_dnabert_s, "classifier": download_classifiers}
    for name in MODEL_CHOICES:
        if name in wanted:
            steps[name](log)
