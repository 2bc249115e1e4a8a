"""Write models in the released file formats, for tests and benchmarks.

The real weights cannot be downloaded everywhere, so the tests and the full-size benchmarks
write models with random weights (tiny or full-size) exactly as the released files are laid
out, and read them back through the loaders:
  - ESM-2 as fair-esm's .pt: fp16 tensors under prefixed fair-esm names, an argparse config;
  - DNABERT-S as a Hugging Face folder: config.json, pytorch_model.bin or model.safetensors,
    tokenizer.json;
  - the classifier as a whole module pickled by a training script, class `__main__.MLPClassifier`.
No prediction run uses this module.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn

from virnucpro.models.dna_tokenizer import build_demo_tokenizer
from virnucpro.models.esm2 import ESM2
from virnucpro.models.esm2_loader import fair_esm_names

# --- ESM-2 -----------------------------------------------------------------------------------


def save_fair_esm_checkpoint(model: nn.Module, path: Path, prefix: str = "encoder.sentence_encoder.") -> Path:
    """torch.save the model as the released file is laid out: fp16 tensors, prefixed keys, LM
    head under `encoder.`, no contact head (fair-esm ships it in a separate file), and the
    config as a pickled argparse.Namespace.

    model: virnucpro's ESM2, or fair-esm's (whose state dict already has fair-esm's names);
    either has the num_layers, embed_dim, attention_heads and token_dropout attributes.
    """
    state = model.state_dict()
    if isinstance(model, ESM2):
        state = fair_esm_names(state, model.num_layers)
    tensors = {}
    for name, tensor in state.items():
        if name.startswith("contact_head."):
            continue
        key = f"encoder.{name}" if name.startswith("lm_head.") else prefix + name
        tensors[key] = tensor.detach().to("cpu", torch.float16, copy=True)
    config = argparse.Namespace(
        encoder_layers=model.num_layers,
        encoder_embed_dim=model.embed_dim,
        encoder_attention_heads=model.attention_heads,
        token_dropout=model.token_dropout,
    )
    torch.save({"model": tensors, "cfg": {"model": config}}, path)
    return Path(path)


# --- DNABERT-S -------------------------------------------------------------------------------


def dnabert_state_dict(vocab_size: int, hidden: int, layers: int, intermediate: int,
                       seed: int, type_vocab: int = 2) -> dict[str, torch.Tensor]:
    """Random weights under the checkpoint's own key names (no prefix), pooler included.

    Built from the key list and shapes of SPEC.md section 3, not from virnucpro's module, so a
    wrong parameter name in the package shows up as a load failure. Every tensor is random,
    LayerNorms included (ones/zeros would hide a swapped weight/bias or a missing norm).
    """
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


def _write_tokenizer(folder: Path, tokenizer: str | Path) -> int:
    """Put tokenizer.json in the folder (the demo one, or a copy of the given file); return
    its vocabulary size."""
    target = folder / "tokenizer.json"
    if tokenizer == "demo":
        build_demo_tokenizer(target)
    else:
        shutil.copyfile(tokenizer, target)
    return len(json.loads(target.read_text())["model"]["vocab"])


def make_dnabert_folder(path: Path, vocab_size: int | None = None, hidden: int = 64,
                        layers: int = 2, heads: int = 4, intermediate: int = 128,
                        seed: int = 0, tokenizer: str | Path = "demo", prefix: str = "",
                        weights: str = "bin") -> Path:
    """Write config.json, weights (pytorch_model.bin or model.safetensors), tokenizer.json.

    tokenizer: "demo" (built here) or the path of a tokenizer.json to copy (the real one).
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


# --- the classifier --------------------------------------------------------------------------

# Run as a script, so that its class really is `__main__.MLPClassifier`, exactly the kind of
# file VirNucPro's 300_model.pth / 500_model.pth are; written as an independent training
# script would be (its own class, the original's attribute names).
TRAINING_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import torch.nn as nn

    class MLPClassifier(nn.Module):
        def __init__(self, input_dim, hidden_dim, num_class):
            super().__init__()
            self.hidden_layer = nn.Linear(input_dim, hidden_dim)
            self.bn1 = nn.BatchNorm1d(hidden_dim)
            self.relu = nn.ReLU()
            self.dropout = nn.Dropout(0.5)
            self.output_layer = nn.Linear(hidden_dim, num_class)

        def forward(self, x):
            x = self.hidden_layer(x)
            x = self.bn1(x)
            x = self.relu(x)
            x = self.dropout(x)
            return self.output_layer(x)

    input_dim, hidden_dim, seed = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    torch.manual_seed(seed)
    model = MLPClassifier(input_dim, hidden_dim, 2)
    # Non-trivial running statistics, as training leaves them.
    model.bn1.running_mean.normal_(0, 0.3)
    model.bn1.running_var.uniform_(0.5, 2.0)
    model.bn1.weight.data.normal_(1, 0.2)
    model.bn1.bias.data.normal_(0, 0.2)
    model.bn1.num_batches_tracked += 1234
    features = torch.randn(64, input_dim)
    model.eval()
    with torch.no_grad():
        probabilities = torch.softmax(model(features), dim=1)
    torch.save(model, sys.argv[1])
    torch.save({"features": features, "probabilities": probabilities,
                "state_dict": model.state_dict()}, sys.argv[2])
""")


def save_released_classifier(folder: Path, input_dim: int = 3328, hidden_dim: int = 512,
                             seed: int = 0, name: str = "500_model.pth") -> tuple[Path, dict]:
    """Write a whole-module pickle like the released file; return (path, recorded I/O):
    {"features", "probabilities", "state_dict"} as the training script computed them."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "train.py"
    script.write_text(TRAINING_SCRIPT)
    model_file, expected_file = folder / name, folder / f"{name}.expected.pt"
    subprocess.run([sys.executable, str(script), str(model_file), str(expected_file),
                    str(input_dim), str(hidden_dim), str(seed)],
                   check=True, cwd=folder, timeout=120)
    return model_file, torch.load(expected_file, weights_only=True)
