"""DNABertS + its loader against the independent per-sequence reference (dnabert_reference.py).

Tolerances (fp32 vs fp32, same weights, different operation order): SDPA and batched
matmuls sum in a different order than the reference's per-head loop, so results differ by
rounding only. fp32 unit roundoff is 6e-8; outputs are LayerNorm outputs of magnitude up to
~5, after 2 layers of dot products over <= 256 terms. Measured maxima over every case
below (demo and real tokenizer, 12 heads, `bert.` prefix; batched and one-by-one): pooled
1.9e-6, per-token hidden 5.5e-6; the fp32 reference itself is 5e-7 from an fp64 run.
We allow POOLED_ATOL = 1e-5 and HIDDEN_ATOL = 3e-5 (~5x margin each). Real mistakes are far
larger: in test_tolerance_separates_bugs a reversed slope order or visible pad keys move the
pooled vector by ~1 (measured 0.96 and 1.07); the test demands > 100x the tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dnabert_factory import make_dnabert_folder, read_folder
from dnabert_reference import reference_embedding, reference_hidden, reference_slopes
from golden import golden_case, real_tokenizer
from malicious_pickles import PAYLOADS, WRITERS, write_pickle

from virnucpro.errors import ModelError
from virnucpro.models.dnabert_s import DNABertS, alibi_slopes
from virnucpro.models.dnabert_s_loader import (
    DNABERT_S_REPO,
    find_dnabert_s_folder,
    load_dnabert_s,
)

POOLED_ATOL = 1e-5
HIDDEN_ATOL = 3e-5

# Frame-like sequences for the demo tokenizer: varied lengths, N runs and IUPAC letters.
DEMO_SEQS = [
    "ACGT" * 40,
    "A",
    "",
    "GATTACA" * 9 + "NNNNNN" + "CCGGTA" * 7,
    "TTTTTTTTTTGGGGGGCCCAAAATACGRYKMACGTACGATCGTAGCTAGCTAGCATCGATCGAT",
    "ACGTTGCA" * 31,
]


def _real_frames(limit: int | None = None) -> list[str]:
    """Kept-frame nucleotide sequences from the golden edge cases (N runs, IUPAC, ...)."""
    path = golden_case("edge_cases", 500) / "identified_nucleotide.fa"
    seqs = [line.strip() for line in path.read_text().splitlines()
            if line and not line.startswith(">")]
    return seqs[:limit]


def _assert_matches_reference(folder: Path, seqs: list[str]) -> None:
    """Package pooled/hidden, batched and one-by-one, vs the fp32 reference per sequence."""
    model, tokenizer = load_dnabert_s(folder)
    config, state = read_folder(folder)
    ids, lengths = tokenizer.encode_batch(seqs)
    with torch.inference_mode():
        pooled = model.pooled(ids, lengths)
        hidden = model(ids, lengths)
    assert pooled.dtype == torch.float32 and pooled.shape == (len(seqs), config["hidden_size"])
    for i in range(len(seqs)):
        n = int(lengths[i])
        row = ids[i, :n].tolist()
        assert row[0] == 1 and row[-1] == 2
        expected_hidden = reference_hidden(state, config, row)
        expected = expected_hidden.mean(dim=0)
        torch.testing.assert_close(hidden[i, :n], expected_hidden, rtol=0, atol=HIDDEN_ATOL)
        torch.testing.assert_close(pooled[i], expected, rtol=0, atol=POOLED_ATOL)
        with torch.inference_mode():
            alone = model.pooled(ids[i:i + 1, :n], lengths[i:i + 1])[0]
        torch.testing.assert_close(alone, expected, rtol=0, atol=POOLED_ATOL)


# --- numerics against the reference -------------------------------------------------------

def test_demo_tokenizer_batched_and_single_match_reference(tmp_path: Path) -> None:
    folder = make_dnabert_folder(tmp_path / "m", tokenizer="demo", seed=1)
    _assert_matches_reference(folder, DEMO_SEQS)


def test_real_tokenizer_real_frames_match_reference(tmp_path: Path) -> None:
    real_tokenizer()  # make_dnabert_folder copies it from there
    folder = make_dnabert_folder(tmp_path / "m", tokenizer="real", seed=2)
    frames = _real_frames()
    assert any("N" in f for f in frames), "the edge cases should include N runs"
    _assert_matches_reference(folder, frames)


def test_bert_prefix_and_safetensors_load(tmp_path: Path) -> None:
    prefixed = make_dnabert_folder(tmp_path / "p", prefix="bert.", seed=3)
    _assert_matches_reference(prefixed, DEMO_SEQS[:4])
    safetensors = make_dnabert_folder(tmp_path / "s", weights="safetensors", seed=4)
    assert not (safetensors / "pytorch_model.bin").exists()
    _assert_matches_reference(safetensors, DEMO_SEQS[:4])


def test_weights_stored_in_fp16_load_as_fp32_on_the_cpu(tmp_path: Path) -> None:
    """The module is built on the meta device and handed the file's tensors: half-precision
    files are widened (exactly) to the fp32 the encoder computes in, and nothing is left on the
    meta device."""
    folder = make_dnabert_folder(tmp_path / "m", seed=5)
    _, state = read_folder(folder)
    half = {name: t.half() if t.is_floating_point() else t for name, t in state.items()}
    torch.save(half, folder / "pytorch_model.bin")
    model, _ = load_dnabert_s(folder)
    loaded = dict(model.named_parameters())
    assert {t.device.type for t in model.state_dict().values()} == {"cpu"}
    for name, tensor in loaded.items():
        stored = next(v for k, v in half.items() if k.endswith(name))
        assert tensor.dtype == torch.float32 and torch.equal(tensor, stored.float()), name


def test_twelve_heads_slopes_and_numerics(tmp_path: Path) -> None:
    spec_slopes = [2.0 ** -k for k in range(1, 9)] + [2.0 ** -x for x in (0.5, 1.5, 2.5, 3.5)]
    assert alibi_slopes(12) == pytest.approx(spec_slopes, rel=1e-15)
    assert reference_slopes(12) == pytest.approx(spec_slopes, rel=1e-15)
    folder = make_dnabert_folder(tmp_path / "m", hidden=96, heads=12, intermediate=64,
                                 layers=1, seed=5)
    _assert_matches_reference(folder, DEMO_SEQS)


@pytest.mark.parametrize("heads", [1, 2, 3, 5, 6, 8, 12, 16, 20, 24, 40])
def test_slopes_generalise_like_mosaicbert(heads: int) -> None:
    assert alibi_slopes(heads) == pytest.approx(reference_slopes(heads), rel=1e-15)


def test_tolerance_separates_bugs(tmp_path: Path) -> None:
    """The tolerances above are far below the effect of plausible mistakes."""
    folder = make_dnabert_folder(tmp_path / "m", seed=6)
    model, tokenizer = load_dnabert_s(folder)
    config, state = read_folder(folder)
    ids, lengths = tokenizer.encode_batch([DEMO_SEQS[0], DEMO_SEQS[3]])
    right = reference_embedding(state, config, ids[1, : int(lengths[1])].tolist())
    # Bug 1: slopes assigned to heads in reverse order.
    model.alibi_slopes = tuple(reversed(model.alibi_slopes))
    model._slopes_on.clear()
    with torch.inference_mode():
        reversed_slopes = model.pooled(ids[1:], lengths[1:])[0]
    assert (reversed_slopes - right).abs().max() > 100 * POOLED_ATOL
    # Bug 2: padding keys visible (pretend the short sequence fills the batch width).
    model.alibi_slopes = tuple(reversed(model.alibi_slopes))
    model._slopes_on.clear()
    full = torch.full_like(lengths[1:], ids.shape[1])
    with torch.inference_mode():
        hidden = model(ids[1:], full)[0, : int(lengths[1])].mean(dim=0)
    assert (hidden - right).abs().max() > 100 * POOLED_ATOL


def test_bf16_cast_runs_and_stays_close(tmp_path: Path) -> None:
    """Casting to bf16 must work (fp32 slopes, bias, softmax and pooling; bf16 linears).
    bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.4%) on O(1) activations through 2
    layers: measured max |bf16 - fp32| = 0.037 here. 0.1 absolute (~2.7x) catches breakage
    (NaN, an -inf leaking, a wrong bias), not bf16 rounding."""
    folder = make_dnabert_folder(tmp_path / "m", seed=7)
    model, tokenizer = load_dnabert_s(folder)
    ids, lengths = tokenizer.encode_batch(DEMO_SEQS)
    with torch.inference_mode():
        fp32 = model.pooled(ids, lengths)
        bf16 = model.to(torch.bfloat16).pooled(ids, lengths)
    assert bf16.dtype == torch.float32
    assert model.alibi_slopes == tuple(alibi_slopes(4))
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=0.1)


def test_parameter_names_match_the_real_key_list() -> None:
    """The full-size module has exactly the SPEC key list (pooler aside) and 117 M params."""
    with torch.device("meta"):
        model = DNABertS()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["embeddings.word_embeddings.weight"] == (4096, 768)
    assert shapes["encoder.layer.11.attention.self.Wqkv.weight"] == (2304, 768)
    assert shapes["encoder.layer.11.mlp.gated_layers.weight"] == (6144, 768)
    assert shapes["encoder.layer.11.mlp.wo.weight"] == (768, 3072)
    assert "encoder.layer.0.mlp.gated_layers.bias" not in shapes
    assert len(shapes) == 4 + 12 * 11
    assert 116e6 < sum(v.numel() for v in model.parameters()) < 118e6


# --- loader: finding the folder -----------------------------------------------------------

def _fake_hub_cache(cache: Path, source: Path) -> Path:
    """Lay out `source` as huggingface_hub caches a repo: refs/main -> snapshots/<hash>."""
    repo = cache / f"models--{DNABERT_S_REPO.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.parent.mkdir(parents=True)
    source.rename(snapshot)
    return snapshot


def test_find_folder_explicit_and_hf_cache(tmp_path: Path, monkeypatch) -> None:
    folder = make_dnabert_folder(tmp_path / "m")
    assert find_dnabert_s_folder(folder) == folder
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snapshot = _fake_hub_cache(tmp_path / "hf" / "hub", folder)
    assert find_dnabert_s_folder().resolve() == snapshot.resolve()
    model, _ = load_dnabert_s(find_dnabert_s_folder())
    assert isinstance(model, DNABertS)
    # A snapshot fetched at a pinned revision has no refs/main: still found.
    (snapshot.parents[1] / "refs" / "main").unlink()
    assert find_dnabert_s_folder().resolve() == snapshot.resolve()
    # HF_HUB_CACHE wins over HF_HOME.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelError) as err:
        find_dnabert_s_folder()
    message = str(err.value)
    assert str(tmp_path / "empty") in message
    assert "virnucpro models download" in message and "--dnabert-model" in message


def test_find_folder_explicit_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="config.json"):
        find_dnabert_s_folder(tmp_path / "nowhere")


# --- loader: broken folders ---------------------------------------------------------------

@pytest.mark.parametrize("victim", ["config.json", "pytorch_model.bin", "tokenizer.json"])
def test_missing_file_is_named(tmp_path: Path, victim: str) -> None:
    folder = make_dnabert_folder(tmp_path / "m")
    (folder / victim).unlink()
    with pytest.raises(ModelError) as err:
        load_dnabert_s(folder)
    assert victim in str(err.value) and "virnucpro models download" in str(err.value)


@pytest.mark.parametrize("victim", ["config.json", "pytorch_model.bin", "tokenizer.json"])
def test_corrupt_file_is_named(tmp_path: Path, victim: str) -> None:
    folder = make_dnabert_folder(tmp_path / "m")
    (folder / victim).write_bytes(b"\x00garbage{")
    with pytest.raises(ModelError, match=victim.replace(".", r"\.")):
        load_dnabert_s(folder)


def test_corrupt_safetensors_is_named(tmp_path: Path) -> None:
    folder = make_dnabert_folder(tmp_path / "m", weights="safetensors")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match=r"model\.safetensors"):
        load_dnabert_s(folder)


def test_wrong_shapes_and_missing_keys(tmp_path: Path) -> None:
    folder = make_dnabert_folder(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 96  # weights were written for 128
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"pytorch_model\.bin.*wrongly shaped.*gated_layers"):
        load_dnabert_s(folder)

    folder = make_dnabert_folder(tmp_path / "k")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["encoder.layer.1.mlp.wo.bias"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"missing tensor.*encoder\.layer\.1\.mlp\.wo\.bias"):
        load_dnabert_s(folder)

    folder = make_dnabert_folder(tmp_path / "l", layers=3)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 2  # a third layer in the weights means a wrong config
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"unexpected tensor.*encoder\.layer\.2\."):
        load_dnabert_s(folder)


def test_config_without_a_required_field(tmp_path: Path) -> None:
    folder = make_dnabert_folder(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    del config["num_attention_heads"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"config\.json lacks num_attention_heads"):
        load_dnabert_s(folder)


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("writer", WRITERS)
def test_malicious_weights_are_refused(tmp_path: Path, payload: type, writer: str) -> None:
    folder = make_dnabert_folder(tmp_path / "m")
    target = tmp_path / "pwned"
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["pooler.dense.bias"] = payload(target)
    write_pickle(folder / "pytorch_model.bin", state, writer)
    with pytest.raises(ModelError, match=r"pytorch_model\.bin"):
        load_dnabert_s(folder)
    assert not target.exists()
