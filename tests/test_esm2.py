"""virnucpro's ESM-2 module and protein encoder against fair-esm (the reference).

The model is a tiny random ESM-2 (2 layers, dim 64, 4 heads) saved in the released file format
and read by both loaders: fair-esm's own and ours. Every expected value comes from fair-esm.
"""

from __future__ import annotations

import random

import esm
import pytest
import torch
from esm_factory import load_with_fair_esm, make_fair_esm_model

from virnucpro.models import protein_alphabet as pa
from virnucpro.models.esm2_loader import load_esm2
from virnucpro.models.formats import save_fair_esm_checkpoint

# Tolerance for fp32 vs fp32: both sides run the same math in fp32 (eps 1.2e-7) but with a
# different operation order (fused QKV GEMM, SDPA's softmax/matmul, F.gelu vs the erf formula,
# the pooled sum). Measured differences are ~4e-7; 1e-5 leaves 25x headroom yet fails at once
# for a real numerics mistake: recomputing inv_freq in fp32 instead of taking the checkpoint's
# fp16-rounded values already gives ~5e-5 (test_recomputed_inv_freq_fails_the_tolerance).
REL_TOL = 1e-5
STANDARD = "ACDEFGHIKLMNPQRSTVWY"
LENGTHS = [1, 2, 3, 7, 30, 49, 99, 165, 166, 210, 299, 300]
LONG = 1100  # > 1024 residues: the pooled mean must stop at residue 1024
ALPHABET = esm.data.Alphabet.from_architecture("ESM-1b")


def _random_proteins(lengths: list[int], seed: int = 1, letters: str = STANDARD) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(letters) for _ in range(n)) for n in lengths]


def _fair_esm_tokens(protein: str) -> torch.Tensor:
    _labels, _strs, tokens = ALPHABET.get_batch_converter()([("p", protein)])
    return tokens  # [1, L + 2]


@torch.no_grad()
def _fair_esm_pooled(model, tokens: torch.Tensor, residues: int) -> torch.Tensor:
    """The original pipeline's pooling on fair-esm's output: last layer (after
    emb_layer_norm_after), mean over positions 1..min(L, 1024). tokens: [1, T]."""
    last = model.num_layers
    hidden = model(tokens, repr_layers=[last])["representations"][last][0]  # [T, D]
    return hidden[1 : min(residues, 1024) + 1].mean(0)


def _reference(model, proteins: list[str]) -> torch.Tensor:
    """fair-esm, one protein at a time (no padding anywhere): [B, D]."""
    return torch.stack([_fair_esm_pooled(model, _fair_esm_tokens(p), len(p)) for p in proteins])


def _max_rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max over proteins of ||a - b|| / ||b||."""
    return float(((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("esm") / "esm2_tiny.pt"
    return save_fair_esm_checkpoint(make_fair_esm_model(seed=0), path)


@pytest.fixture(scope="module")
def fair_esm_model(checkpoint):
    return load_with_fair_esm(checkpoint)


@pytest.fixture(scope="module")
def our_model(checkpoint):
    return load_esm2(checkpoint)


@pytest.fixture(scope="module")
def proteins():
    return _random_proteins(LENGTHS + [LONG])


@pytest.fixture(scope="module")
def reference(fair_esm_model, proteins):
    return _reference(fair_esm_model, proteins)


# --- the model ------------------------------------------------------------------------------


@torch.no_grad()
def test_padded_batch_matches_fair_esm(our_model, proteins, reference):
    tokens, lengths = pa.encode_proteins(proteins)  # one batch, right-padded to 1102 tokens
    err = _max_rel_err(our_model.pooled(tokens, lengths), reference)
    print(f"padded batch: max relative error {err:.2e}")
    assert err < REL_TOL


@torch.no_grad()
def test_one_by_one_matches_fair_esm(our_model, proteins, reference):
    pooled = torch.cat([our_model.pooled(*pa.encode_proteins([p])) for p in proteins])
    err = _max_rel_err(pooled, reference)
    print(f"one by one: max relative error {err:.2e}")
    assert err < REL_TOL


@torch.no_grad()
def test_forward_matches_fair_esm_at_every_real_position(our_model, fair_esm_model, proteins):
    """Per-token check of forward() on fair-esm's own padded batch (not only the mean)."""
    _labels, _strs, tokens = ALPHABET.get_batch_converter()([(str(i), p) for i, p in enumerate(proteins)])
    last = fair_esm_model.num_layers
    expected = fair_esm_model(tokens, repr_layers=[last])["representations"][last]  # [B, T, D]
    got = our_model(tokens)
    real = tokens.ne(pa.PAD)  # [B, T]
    err = _max_rel_err(got[real], expected[real])
    print(f"per token: max relative error {err:.2e}")
    assert err < REL_TOL


@torch.no_grad()
def test_pooling_stops_at_residue_1024(our_model, fair_esm_model):
    (protein,) = _random_proteins([LONG], seed=5)
    tokens, lengths = pa.encode_proteins([protein])
    ours = our_model.pooled(tokens, lengths)[0]
    last = fair_esm_model.num_layers
    hidden = fair_esm_model(tokens, repr_layers=[last])["representations"][last][0]
    truncated, whole = hidden[1:1025].mean(0), hidden[1 : LONG + 1].mean(0)
    assert _max_rel_err(ours, truncated) < REL_TOL
    assert _max_rel_err(ours, whole) > 100 * REL_TOL  # the rule is visible at this length


@torch.no_grad()
def test_mask_tokens_rescale_like_fair_esm(our_model, fair_esm_model):
    """Token dropout: <mask> embeddings zeroed and the rest scaled by 0.88 / (1 - ratio),
    with a different ratio per row of one padded batch."""
    proteins = _random_proteins([40, 120, 9, 200], seed=7)
    tokens, lengths = pa.encode_proteins(proteins)
    tokens[0, [3, 10, 11]] = pa.MASK
    tokens[2, 1:5] = pa.MASK  # nearly half of a short protein
    tokens[3, 150] = pa.MASK  # row 1 keeps no mask: ratio 0 next to masked rows
    reference = torch.stack([
        _fair_esm_pooled(fair_esm_model, tokens[i : i + 1, : int(n)], int(n) - 2)
        for i, n in enumerate(lengths)
    ])
    ours = our_model.pooled(tokens, lengths)
    err = _max_rel_err(ours, reference)
    print(f"with <mask>: max relative error {err:.2e}")
    assert err < REL_TOL
    unmasked = _reference(fair_esm_model, [proteins[0]])[0]
    assert _max_rel_err(ours[0], unmasked) > 100 * REL_TOL  # the masks did change the result


@pytest.mark.parametrize("prefix", ["encoder.sentence_encoder.", "encoder."])
@torch.no_grad()
def test_both_key_prefixes_load(tmp_path, prefix):
    fair = make_fair_esm_model(seed=3)
    path = save_fair_esm_checkpoint(fair, tmp_path / "esm2.pt", prefix=prefix)
    proteins = _random_proteins([12, 80, 166], seed=3)
    ours = load_esm2(path).pooled(*pa.encode_proteins(proteins))
    assert _max_rel_err(ours, _reference(load_with_fair_esm(path), proteins)) < REL_TOL


@torch.no_grad()
def test_recomputed_inv_freq_fails_the_tolerance(checkpoint, proteins, reference):
    """Shows the tolerance can fail: fp32-recomputed rotary frequencies (what a fresh
    RotaryEmbedding holds) instead of the checkpoint's fp16-rounded ones."""
    model = load_esm2(checkpoint)
    head_dim = model.layers[0].self_attn.head_dim
    exact = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    model.rotary.inv_freq_bits.copy_(exact.view(torch.int32))
    err = _max_rel_err(model.pooled(*pa.encode_proteins(proteins)), reference)
    print(f"recomputed inv_freq: max relative error {err:.2e}")
    assert err > REL_TOL


def test_inv_freq_is_the_checkpoints(our_model, fair_esm_model):
    got = our_model.rotary.inv_freq  # one for all layers, which all store the same
    assert got.dtype == torch.float32
    for theirs in fair_esm_model.layers:
        assert torch.equal(got, theirs.self_attn.rot_emb.inv_freq)


@torch.no_grad()
def test_bf16_cast_keeps_fp32_rotary(checkpoint, fair_esm_model):
    model = load_esm2(checkpoint)
    before = model.rotary.inv_freq.clone()
    model = model.to(torch.bfloat16)
    assert model.layers[0].fc1.weight.dtype == torch.bfloat16
    assert torch.equal(model.rotary.inv_freq, before)
    proteins = _random_proteins([20, 166, 300], seed=11)
    pooled = model.pooled(*pa.encode_proteins(proteins))
    assert pooled.dtype == torch.float32
    # bf16 keeps 8 significant bits (eps 3.9e-3); through 2 layers the pooled vector moves
    # ~1e-2 relative (measured). 5e-2 only checks the low-precision path is sane, not exact.
    assert _max_rel_err(pooled, _reference(fair_esm_model, proteins)) < 5e-2


@torch.no_grad()
def test_a_batch_without_padding_matches_fair_esm(our_model, fair_esm_model):
    proteins = _random_proteins([50, 50, 50], seed=13)
    tokens, lengths = pa.encode_proteins(proteins)
    assert not tokens.eq(pa.PAD).any()
    pooled = our_model.pooled(tokens, lengths)
    assert _max_rel_err(pooled, _reference(fair_esm_model, proteins)) < REL_TOL


# --- the protein alphabet ------------------------------------------------------------------


def test_alphabet_constants_are_fair_esms():
    assert list(pa.TOKENS) == ALPHABET.all_toks
    assert (
        ALPHABET.cls_idx, ALPHABET.padding_idx, ALPHABET.eos_idx, ALPHABET.unk_idx, ALPHABET.mask_idx,
    ) == (pa.CLS, pa.PAD, pa.EOS, pa.UNK, pa.MASK)
    assert len(ALPHABET) == pa.ALPHABET_SIZE


def test_encoder_matches_fair_esm_batch_converter():
    letters = "".join(ALPHABET.all_toks[4:31])  # all 27 residue letters, including X B U Z O . -
    proteins = _random_proteins([1, 5, 166, 3, 77, 0, 300], seed=17, letters=letters)
    _labels, _strs, expected = ALPHABET.get_batch_converter()([(str(i), p) for i, p in enumerate(proteins)])
    tokens, lengths = pa.encode_proteins(proteins)
    assert tokens.dtype == torch.int64 and lengths.dtype == torch.int64
    assert torch.equal(tokens, expected)
    assert lengths.tolist() == [len(p) + 2 for p in proteins]
    assert torch.equal(lengths, expected.ne(ALPHABET.padding_idx).sum(1))


def test_unknown_letters_become_unk():
    """fair-esm's BatchConverter raises KeyError on such letters; its Alphabet.get_idx maps
    them to <unk>, which is what we follow (one token per character)."""
    protein = "MJ*kZé?"
    tokens, lengths = pa.encode_proteins([protein])
    expected = [ALPHABET.cls_idx] + [ALPHABET.get_idx(c) for c in protein] + [ALPHABET.eos_idx]
    assert tokens[0].tolist() == expected
    assert lengths.tolist() == [len(protein) + 2]


def test_encoder_on_no_proteins():
    tokens, lengths = pa.encode_proteins([])
    assert tokens.shape == (0, 2) and lengths.shape == (0,)
