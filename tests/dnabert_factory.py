"""Tiny random DNABERT-S checkpoints in the real Hugging Face folder format.

Built from the key list and shapes of SPEC.md section 3, not from virnucpro's module, so a
wrong parameter name in the package shows up as a load failure. Every tensor is random,
LayerNorms included (ones/zeros would hide a swapped weight/bias or a missing norm).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from golden import SHARED_DIR


def shared_file(relative: str) -> Path | None:
    """A file of the project's shared folder (third-party data not kept in the repo), which
    sits beside the repository, as tests/golden.py finds it."""
    path = SHARED_DIR / relative
    return path if path.is_file() else None


def real_tokenizer_path() -> Path | None:
    return shared_file("models/dnabert-s_tokenizer.json")


def dnabert_state_dict(vocab_size: int, hidden: int, layers: int, intermediate: int,
                       seed: int, type_vocab: int = 2) -> dict[str, torch.Tensor]:
    """Random weights under the checkpoint's own key names (no prefix), pooler included."""
    g = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def layer_norm(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1.0 + normal(hidden, std=0.2),
                f"{prefix}.bias": normal(hidden, std=0.1)}

    # Linear weights with std ~1/sqrt(fan_in) keep activations O(1); attention logits then
    # spread over a few units, so softmax, ALiBi and masking all visibly matter.
    state = {
        "embeddings.word_embeddings.weight": normal(vocab_size, hidden, std=1.0),
        "embeddings.token_type_embeddings.weight": normal(type_vocab, hidden, std=0.5),
        **layer_norm("embeddings.LayerNorm"),
    }
    for n in range(layers):
        p = f"encoder.layer.{n}"
        state.update({
            f"{p}.attention.self.Wqkv.weight": normal(3 * hidden, hidden, std=1.5 * hidden**-0.5),
            f"{p}.attention.self.Wqkv.bias": normal(3 * hidden, std=0.1),
            f"{p}.attention.output.dense.weight": normal(hidden, hidden, std=hidden**-0.5),
            f"{p}.attention.output.dense.bias": normal(hidden, std=0.1),
            **layer_norm(f"{p}.attention.output.LayerNorm"),
            f"{p}.mlp.gated_layers.weight": normal(2 * intermediate, hidden, std=hidden**-0.5),
            f"{p}.mlp.wo.weight": normal(hidden, intermediate, std=intermediate**-0.5),
            f"{p}.mlp.wo.bias": normal(hidden, std=0.1),
            **layer_norm(f"{p}.mlp.layernorm"),
        })
    state["pooler.dense.weight"] = normal(hidden, hidden, std=hidden**-0.5)
    state["pooler.dense.bias"] = normal(hidden, std=0.1)
    return state


def hf_config(vocab_size: int, hidden: int, layers: int, heads: int,
              intermediate: int) -> dict:
    """A config.json shaped like DNABERT-S's, extra fields included (the loader skips them)."""
    return {
        "_name_or_path": "zhihan1996/DNABERT-S",
        "alibi_starting_size": 512,
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.0,
        "auto_map": {"AutoConfig": "configuration_bert.BertConfig",
                     "AutoModel": "bert_layers.BertModel"},
        "classifier_dropout": None,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.28.0",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def _write_tokenizer(folder: Path, which: str) -> int:
    """Put tokenizer.json in the folder; return its vocabulary size."""
    target = folder / "tokenizer.json"
    if which == "real":
        source = real_tokenizer_path()
        if source is None:
            raise FileNotFoundError("the real DNABERT-S tokenizer.json is not available")
        shutil.copyfile(source, target)  # into a test's temporary folder only
    elif which == "demo":
        from virnucpro.models.dna_tokenizer import build_demo_tokenizer

        build_demo_tokenizer(target)
    else:
        raise ValueError(f"tokenizer must be 'demo' or 'real', not {which!r}")
    return len(json.loads(target.read_text())["model"]["vocab"])


def make_dnabert_folder(path: Path, vocab_size: int | None = None, hidden: int = 64,
                        layers: int = 2, heads: int = 4, intermediate: int = 128,
                        seed: int = 0, tokenizer: str = "demo", prefix: str = "",
                        weights: str = "bin") -> Path:
    """Write config.json, weights (pytorch_model.bin or model.safetensors), tokenizer.json.

    vocab_size defaults to the tokenizer's. prefix (e.g. "bert.") goes before every key.
    Returns the folder.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_vocab = _write_tokenizer(folder, tokenizer)
    vocab_size = vocab_size or tokenizer_vocab
    config = hf_config(vocab_size, hidden, layers, heads, intermediate)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = dnabert_state_dict(vocab_size, hidden, layers, intermediate, seed)
    state = {prefix + key: tensor for key, tensor in state.items()}
    if weights == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    elif weights == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"))
    else:
        raise ValueError(f"weights must be 'bin' or 'safetensors', not {weights!r}")
    return folder


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
