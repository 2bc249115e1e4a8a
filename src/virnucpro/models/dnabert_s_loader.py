"""Find the DNABERT-S Hugging Face folder and load it as (DNABertS, DnaTokenizer).

The folder is what `huggingface_hub` keeps for `zhihan1996/DNABERT-S`: config.json,
model.safetensors or pytorch_model.bin (a plain state dict, keys with or without `bert.`),
tokenizer.json. Nothing from the hub's remote code is used or run: the architecture is
virnucpro's own (dnabert_s.py), and the .bin pickle is read by safe_torch_load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from virnucpro.errors import ModelError
from virnucpro.models import caches
from virnucpro.models.dna_tokenizer import DnaTokenizer
from virnucpro.models.dnabert_s import DNABertS
from virnucpro.models.safe_load import check_state, read_safetensors, safe_torch_load

DNABERT_S_REPO = "zhihan1996/DNABERT-S"
_WHAT = "DNABERT-S weights file"
_HOW_TO_GET = (
    "get it with `virnucpro models download` (on a machine with internet; it fills the "
    "Hugging Face cache), or pass the model folder with --dnabert-model FOLDER"
)
# Checkpoint parts the encoder does not use: the pooler and any pre-training heads.
_IGNORED_PREFIXES = ("pooler.", "cls.")
# Non-persistent buffers some BERT code versions still wrote into their state dicts.
_IGNORED_KEYS = {"embeddings.position_ids", "embeddings.token_type_ids"}


# --- finding the folder ------------------------------------------------------------------

def find_dnabert_s_folder(explicit: Path | None = None) -> Path:
    """The explicit folder if given, else the cached snapshot of DNABERT-S (offline)."""
    if explicit is not None:
        folder = Path(explicit).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelError(
                f"DNABERT-S folder {folder} has no config.json (expected a Hugging Face model "
                f"folder with config.json, pytorch_model.bin or model.safetensors, "
                f"tokenizer.json); {_HOW_TO_GET}"
            )
        return folder
    cache = caches.hf_hub_cache()
    folder = _snapshot_in_cache(cache)
    if folder is None:
        raise ModelError(
            f"DNABERT-S ({DNABERT_S_REPO}) is not in the Hugging Face cache {cache} "
            f"(set by HF_HUB_CACHE or HF_HOME); {_HOW_TO_GET}"
        )
    return folder


def _snapshot_in_cache(cache: Path) -> Path | None:
    """The `main` snapshot via huggingface_hub, else any snapshot holding a config.json."""
    from huggingface_hub import snapshot_download  # deferred: only needed on this path

    try:
        folder = Path(snapshot_download(DNABERT_S_REPO, cache_dir=cache, local_files_only=True))
        if (folder / "config.json").is_file():
            return folder
    except Exception:  # noqa: BLE001 - any failure here just means "not cached as main"
        pass
    # A snapshot fetched at a pinned revision has no refs/main: take the newest complete one.
    snapshots = cache / f"models--{DNABERT_S_REPO.replace('/', '--')}" / "snapshots"
    candidates = [d for d in snapshots.glob("*") if (d / "config.json").is_file()]
    return max(candidates, key=lambda d: d.stat().st_mtime) if candidates else None


# --- loading -----------------------------------------------------------------------------

def load_dnabert_s(folder: Path) -> tuple[DNABertS, DnaTokenizer]:
    """Build the encoder from config.json + weights and its tokenizer; eval mode, fp32, CPU.

    Built on the meta device and handed the file's tensors (widened to fp32), as ESM-2 is:
    a randomly initialised module first cost 2.3 s of a worker's start-up, all thrown away."""
    folder = Path(folder)
    with torch.device("meta"):
        model = DNABertS(**_read_config(folder / "config.json"))
    weights_file, state = _read_weights(folder)
    state = _encoder_keys(state)
    check_state(model, state, weights_file, _WHAT, "its config.json")
    state = {name: t.float() if t.is_floating_point() else t for name, t in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.eval().requires_grad_(False)
    tokenizer = _read_tokenizer(folder / "tokenizer.json")
    if tokenizer.vocab_size > model.embeddings.word_embeddings.num_embeddings:
        raise ModelError(
            f"DNABERT-S tokenizer {folder / 'tokenizer.json'} has {tokenizer.vocab_size} "
            f"tokens but the model only {model.embeddings.word_embeddings.num_embeddings}: "
            "the tokenizer and the weights do not belong together"
        )
    return model, tokenizer


def _read_config(path: Path) -> dict[str, Any]:
    """config.json -> DNABertS keyword arguments."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"DNABERT-S config not found: {path}; {_HOW_TO_GET}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"DNABERT-S config {path} is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ModelError(f"DNABERT-S config {path} is not a JSON object")
    fields = {
        "vocab_size": "vocab_size", "hidden": "hidden_size", "layers": "num_hidden_layers",
        "heads": "num_attention_heads", "intermediate": "intermediate_size",
    }
    kwargs: dict[str, Any] = {arg: _positive_int(config, key, path) for arg, key in fields.items()}
    kwargs["type_vocab"] = _positive_int(config, "type_vocab_size", path, default=2)
    eps = config.get("layer_norm_eps", 1e-12)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise ModelError(f"DNABERT-S config {path}: layer_norm_eps must be a positive number")
    kwargs["ln_eps"] = float(eps)
    if kwargs["hidden"] % kwargs["heads"]:
        raise ModelError(f"DNABERT-S config {path}: hidden_size {kwargs['hidden']} is not a "
                         f"multiple of num_attention_heads {kwargs['heads']}")
    return kwargs


def _positive_int(config: dict, key: str, path: Path, default: int | None = None) -> int:
    value = config.get(key, default)
    if value is None:
        raise ModelError(f"DNABERT-S config {path} lacks {key}")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"DNABERT-S config {path}: {key} must be a positive integer, "
                         f"got {value!r}")
    return value


def _read_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """model.safetensors if present (no pickle at all), else pytorch_model.bin."""
    safetensors_file = folder / "model.safetensors"
    if safetensors_file.is_file():
        return safetensors_file, read_safetensors(safetensors_file, _WHAT)
    bin_file = folder / "pytorch_model.bin"
    if not bin_file.is_file():
        raise ModelError(f"DNABERT-S weights not found in {folder} (neither model.safetensors "
                         f"nor pytorch_model.bin); {_HOW_TO_GET}")
    state = safe_torch_load(bin_file, what=_WHAT, mmap=True)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelError(f"{_WHAT} {bin_file} is not a state dict (a mapping of names to tensors)")
    return bin_file, state


def _encoder_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip an optional `bert.` prefix; drop the pooler, heads and stale buffers."""
    kept = {}
    for key, tensor in state.items():
        key = key.removeprefix("bert.")
        if key.startswith(_IGNORED_PREFIXES) or key in _IGNORED_KEYS:
            continue
        kept[key] = tensor
    return kept


def _read_tokenizer(path: Path) -> DnaTokenizer:
    if not path.is_file():
        raise ModelError(f"DNABERT-S tokenizer not found: {path}; {_HOW_TO_GET}")
    try:
        return DnaTokenizer.from_file(path)
    except Exception as exc:  # noqa: BLE001 - the Rust library raises plain Exception
        raise ModelError(f"DNABERT-S tokenizer {path} is not a readable tokenizer.json: "
                         f"{exc}") from None
