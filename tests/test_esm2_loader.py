"""esm2_loader: where it looks, the formats it reads, and how it refuses bad files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import esm
import pytest
import torch
from esm_factory import load_with_fair_esm, make_fair_esm_model
from malicious_pickles import CreatesFile

from virnucpro.errors import ModelError
from virnucpro.models import demo
from virnucpro.models.esm2_loader import ESM2_3B_NAME, default_esm2_path, load_esm2, open_esm2
from virnucpro.models.formats import save_fair_esm_checkpoint
from virnucpro.models.protein_alphabet import encode_proteins

REL_TOL = 1e-5  # fp32 against fp32 fair-esm; see test_esm2.py for the measured margins


@pytest.fixture(scope="module")
def fair_model():
    return make_fair_esm_model(seed=21)


@pytest.fixture()
def checkpoint(tmp_path, fair_model):
    return save_fair_esm_checkpoint(fair_model, tmp_path / "esm2.pt")


def _proteins() -> list[str]:
    rng = random.Random(4)
    return ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(n)) for n in (9, 60, 166)]


@torch.no_grad()
def _fair_esm_pooled(model, proteins: list[str]) -> torch.Tensor:
    converter = esm.data.Alphabet.from_architecture("ESM-1b").get_batch_converter()
    rows = []
    for protein in proteins:
        _labels, _strs, tokens = converter([("p", protein)])
        last = model.num_layers
        hidden = model(tokens, repr_layers=[last])["representations"][last][0]
        rows.append(hidden[1 : min(len(protein), 1024) + 1].mean(0))
    return torch.stack(rows)


def _max_rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max())


def _save_model_dict(path: Path, state: dict, cfg=None) -> Path:
    torch.save({"model": state, "cfg": {"model": cfg}}, path)
    return path


def _fair_esm_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint, weights_only=False)["model"]


# --- where it looks -------------------------------------------------------------------------


def test_default_path_follows_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert default_esm2_path() == tmp_path / "hub" / "checkpoints" / f"{ESM2_3B_NAME}.pt"


def test_missing_default_file_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelError) as error:
        load_esm2()
    message = str(error.value)
    assert str(default_esm2_path()) in message
    assert "virnucpro models download" in message and "--esm-model" in message


def test_missing_given_file(tmp_path):
    with pytest.raises(ModelError, match="nowhere.pt"):
        load_esm2(tmp_path / "nowhere.pt")


def test_loads_from_the_default_location(tmp_path, monkeypatch, fair_model):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    default_esm2_path().parent.mkdir(parents=True)
    save_fair_esm_checkpoint(fair_model, default_esm2_path())
    assert load_esm2().num_layers == fair_model.num_layers


# --- what it builds ---------------------------------------------------------------------------


def test_architecture_and_dtype(checkpoint, fair_model):
    model = load_esm2(checkpoint)
    assert (model.num_layers, model.embed_dim, model.attention_heads) == (2, 64, 4)
    assert not model.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
    half = load_esm2(checkpoint, dtype=torch.bfloat16)
    assert half.layers[0].self_attn.qkv_proj.weight.dtype == torch.bfloat16
    assert torch.equal(half.rotary.inv_freq, fair_model.layers[1].self_attn.rot_emb.inv_freq)


def test_opening_gives_the_architecture_before_converting_any_weight(checkpoint, monkeypatch):
    """What a worker starts compiling from while the weights are still being converted."""
    from virnucpro.models import esm2_loader

    converted = []
    plain = esm2_loader._module_state
    monkeypatch.setattr(esm2_loader, "_module_state", lambda *a: converted.append(1) or plain(*a))
    opened = open_esm2(checkpoint)
    assert not converted
    assert opened.module().architecture == dict(opened.architecture)
    assert converted


def test_stored_dtype_keeps_the_files_values_exactly(checkpoint):
    """dtype=None (what a run uses) keeps the released file's fp16 weights as they are; cast
    to fp32 or bf16 afterwards (on the device) they equal a load straight into that dtype."""
    stored = load_esm2(checkpoint, dtype=None)
    assert all(p.dtype == torch.float16 for p in stored.parameters())
    for dtype in (torch.float32, torch.bfloat16):
        direct = load_esm2(checkpoint, dtype=dtype).state_dict()
        cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in stored.state_dict().items()}
        assert direct.keys() == cast.keys()
        assert all(torch.equal(direct[k], cast[k]) for k in direct)


def test_stored_dtype_of_a_mixed_file_is_fp32(tmp_path, checkpoint):
    """fp16 matrices with fp32 LayerNorms: no stored value may be rounded to fp16."""
    data = torch.load(checkpoint, weights_only=False)
    for key, tensor in data["model"].items():
        if "layer_norm" in key:
            data["model"][key] = tensor.float() + 1e-4  # values fp16 cannot hold
    mixed = tmp_path / "mixed.pt"
    torch.save(data, mixed)
    stored = load_esm2(mixed, dtype=None)
    assert all(p.dtype == torch.float32 for p in stored.parameters())
    direct = load_esm2(mixed).state_dict()
    assert all(torch.equal(direct[k], v) for k, v in stored.state_dict().items())


def test_our_own_module_written_in_the_released_format(tmp_path):
    """formats.save_fair_esm_checkpoint on virnucpro's ESM2 (what the full-size benchmarks
    write): read back unchanged by our loader, and computing what fair-esm computes from it,
    so q, k and v went to their own names."""
    model = demo.demo_esm().half()
    path = save_fair_esm_checkpoint(model, tmp_path / "esm2.pt")
    loaded = load_esm2(path, dtype=None)
    expected, got = model.state_dict(), loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)
    # fair-esm's own module, given the file's tensors (it has no LM head, which fair-esm's
    # loader would insist on).
    fair = esm.model.esm2.ESM2(num_layers=2, embed_dim=64, attention_heads=4, alphabet="ESM-1b")
    state = torch.load(path, weights_only=False)["model"]
    state = {k.removeprefix("encoder.sentence_encoder."): v.float() for k, v in state.items()}
    missing, unexpected = fair.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("lm_head.", "contact_head.")) for k in missing)
    proteins = _proteins()
    ours = loaded.float().pooled(*encode_proteins(proteins))
    assert _max_rel_err(ours, _fair_esm_pooled(fair.eval(), proteins)) < REL_TOL


def test_heads_from_shapes_without_config(tmp_path):
    """No cfg: heads = dim // 64, as every released ESM-2 has. Build one with 64-dim heads."""
    fair = make_fair_esm_model(num_layers=1, embed_dim=128, heads=2, seed=5)
    saved = save_fair_esm_checkpoint(fair, tmp_path / "with_cfg.pt")
    path = _save_model_dict(tmp_path / "no_cfg.pt", _fair_esm_state(saved))
    model = load_esm2(path)
    assert model.attention_heads == 2
    proteins = _proteins()
    ours = model.pooled(*encode_proteins(proteins))
    assert _max_rel_err(ours, _fair_esm_pooled(load_with_fair_esm(saved), proteins)) < REL_TOL


# --- Hugging Face format ---------------------------------------------------------------------

# Hugging Face EsmModel parameter names for each fair-esm name (as transformers publishes them).
_HF_LAYER_NAMES = {
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.out_proj": "attention.output.dense",
    "self_attn_layer_norm": "attention.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "final_layer_norm": "LayerNorm",
}


def _hf_state(fair_model, prefix: str, style: str) -> dict[str, torch.Tensor]:
    """style "v4": per-layer weight/bias names and inv_freq as the file holds it;
    "v5": LayerNorm gamma/beta and one fp32-recomputed inv_freq for all layers, as
    transformers 5's save_pretrained writes them; "no_inv_freq": no rotary buffer at all."""
    norm_names = ("gamma", "beta") if style == "v5" else ("weight", "bias")
    state = {
        f"{prefix}embeddings.word_embeddings.weight": fair_model.embed_tokens.weight,
        f"{prefix}encoder.emb_layer_norm_after.weight": fair_model.emb_layer_norm_after.weight,
        f"{prefix}encoder.emb_layer_norm_after.bias": fair_model.emb_layer_norm_after.bias,
        f"{prefix}contact_head.regression.weight": torch.zeros(1, 8),  # unused heads: ignored
        f"{prefix}pooler.dense.weight": torch.zeros(64, 64),
    }
    if style == "v5":
        head_dim = fair_model.embed_dim // fair_model.attention_heads
        recomputed = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        state[f"{prefix}encoder.layer.*.attention.self.rotary_embeddings.inv_freq"] = recomputed
    for i, layer in enumerate(fair_model.layers):
        hf = f"{prefix}encoder.layer.{i}."
        if style == "v4":
            state[f"{hf}attention.self.rotary_embeddings.inv_freq"] = layer.self_attn.rot_emb.inv_freq
        for ours, theirs in _HF_LAYER_NAMES.items():
            module = layer.get_submodule(ours)
            is_norm = "LayerNorm" in theirs
            state[f"{hf}{theirs}.{norm_names[0] if is_norm else 'weight'}"] = module.weight
            state[f"{hf}{theirs}.{norm_names[1] if is_norm else 'bias'}"] = module.bias
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


@pytest.mark.parametrize("filename,prefix,style", [
    ("model.safetensors", "esm.", "v4"),  # EsmForMaskedLM
    ("pytorch_model.bin", "", "v4"),  # EsmModel
    ("model.safetensors", "esm.", "v5"),
    ("model.safetensors", "", "no_inv_freq"),
])
@torch.no_grad()
def test_hugging_face_weights(tmp_path, fair_model, filename, prefix, style):
    """Whatever rotary buffer the file holds, the model computes with the original's
    fp16-rounded inv_freq, so it matches fair-esm on the released checkpoint."""
    from safetensors.torch import save_file

    state = _hf_state(fair_model, prefix, style)
    path = tmp_path / filename
    if filename.endswith(".safetensors"):
        save_file(state, path)
    else:
        torch.save(state, path)
    (tmp_path / "config.json").write_text(json.dumps({
        "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "token_dropout": True,
    }))
    proteins = _proteins()
    ours = load_esm2(path).pooled(*encode_proteins(proteins))
    assert _max_rel_err(ours, _fair_esm_pooled(fair_model, proteins)) < REL_TOL
    assert torch.equal(load_esm2(tmp_path).embed_tokens.weight, fair_model.embed_tokens.weight)


def test_folder_without_weights(tmp_path):
    with pytest.raises(ModelError, match="model.safetensors"):
        load_esm2(tmp_path)


# --- refusals -------------------------------------------------------------------------------


def test_truncated_file(checkpoint):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=str(checkpoint)):
        load_esm2(checkpoint)


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "esm2.pt"
    path.write_text("<html>404 Not Found</html>")
    with pytest.raises(ModelError, match="esm2.pt"):
        load_esm2(path)


def test_another_models_state_dict(tmp_path):
    bert = {
        "bert.embeddings.word_embeddings.weight": torch.zeros(4101, 768),
        "bert.encoder.layer.0.attention.self.query.weight": torch.zeros(768, 768),
    }
    path = _save_model_dict(tmp_path / "other.pt", bert)
    with pytest.raises(ModelError, match="not an ESM-2 checkpoint"):
        load_esm2(path)


def test_a_plain_tensor(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ModelError, match="not an ESM-2 checkpoint"):
        load_esm2(path)


def test_missing_tensor(tmp_path, checkpoint):
    state = _fair_esm_state(checkpoint)
    del state["encoder.sentence_encoder.layers.1.fc2.bias"]
    path = _save_model_dict(tmp_path / "missing.pt", state)
    with pytest.raises(ModelError, match=r"missing tensor.*layers\.1\.fc2\.bias"):
        load_esm2(path)


def test_a_missing_tensor_is_refused_when_the_file_is_opened(tmp_path, checkpoint):
    """Before a worker starts compiling from the file's architecture."""
    state = _fair_esm_state(checkpoint)
    del state["encoder.sentence_encoder.layers.0.fc1.weight"]
    with pytest.raises(ModelError, match=r"missing tensor.*layers\.0\.fc1\.weight"):
        open_esm2(_save_model_dict(tmp_path / "missing.pt", state))


def test_missing_inv_freq(tmp_path, checkpoint):
    state = _fair_esm_state(checkpoint)
    del state["encoder.sentence_encoder.layers.0.self_attn.rot_emb.inv_freq"]
    path = _save_model_dict(tmp_path / "no_rotary.pt", state)
    with pytest.raises(ModelError, match="rot_emb.inv_freq"):
        load_esm2(path)


def test_layers_with_different_rotary_frequencies(tmp_path, checkpoint):
    """The model keeps one rotary table for all layers; a file whose layers disagree (no
    released one does) is refused rather than computed with the wrong angles."""
    data = torch.load(checkpoint, weights_only=False)  # with its config: 4 heads of 16
    key = "encoder.sentence_encoder.layers.1.self_attn.rot_emb.inv_freq"
    data["model"][key] = data["model"][key] * 1.5
    path = tmp_path / "rotary.pt"
    torch.save(data, path)
    with pytest.raises(ModelError, match=r"rotary.pt stores different rotary frequencies.*layers 0 and 1"):
        load_esm2(path)


def test_unexpected_tensor(tmp_path, checkpoint):
    state = _fair_esm_state(checkpoint)
    state["encoder.sentence_encoder.layers.0.self_attn.bias_k"] = torch.zeros(1, 1, 64)
    path = _save_model_dict(tmp_path / "extra.pt", state)
    with pytest.raises(ModelError, match="unexpected tensor"):
        load_esm2(path)


def test_wrong_shape(tmp_path, checkpoint):
    state = _fair_esm_state(checkpoint)
    state["encoder.sentence_encoder.layers.0.fc1.weight"] = torch.zeros(128, 64, dtype=torch.half)
    path = _save_model_dict(tmp_path / "shape.pt", state)
    with pytest.raises(ModelError, match=r"wrongly shaped.*fc1\.weight"):
        load_esm2(path)


def test_config_disagrees_with_weights(tmp_path, checkpoint):
    import argparse

    cfg = argparse.Namespace(encoder_layers=36, encoder_embed_dim=64, encoder_attention_heads=4)
    path = _save_model_dict(tmp_path / "cfg.pt", _fair_esm_state(checkpoint), cfg)
    with pytest.raises(ModelError, match="encoder_layers=36"):
        load_esm2(path)


def test_malicious_pickle_is_refused_without_running(tmp_path, checkpoint):
    target = tmp_path / "pwned.txt"
    state = _fair_esm_state(checkpoint)
    path = tmp_path / f"{ESM2_3B_NAME}.pt"
    torch.save({"model": state, "cfg": {"model": None}, "args": CreatesFile(target)}, path)
    assert not target.exists()
    with pytest.raises(ModelError, match="refused"):
        load_esm2(path)
    assert not target.exists()
