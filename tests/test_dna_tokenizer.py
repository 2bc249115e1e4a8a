"""DnaTokenizer on the real DNABERT-S tokenizer.json (found by golden.py) and the demo one.

Oracles: the `tokenizers` library encoding one sequence at a time with padding and
truncation explicitly off, and counts that follow from the SPEC (one [UNK] per letter).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from golden import real_tokenizer
from tokenizers import Tokenizer

from virnucpro.models.dna_tokenizer import DnaTokenizer, build_demo_tokenizer

SEQS = ["ACGTACGGTACCATGA" * 5, "A", "", "ACGTNNNNACGT", "GATTACARYKMSWBDHVGATTACA",
        "TTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTT", "ACGU"]


def _library_ids(path: Path, seq: str) -> list[int]:
    plain = Tokenizer.from_file(str(path))
    plain.no_padding()
    plain.no_truncation()
    return plain.encode(seq).ids


def _check_batch(tokenizer: DnaTokenizer, path: Path, seqs: list[str]) -> None:
    ids, lengths = tokenizer.encode_batch(seqs)
    assert ids.dtype == torch.int64 and lengths.dtype == torch.int64
    expected = [_library_ids(path, s) for s in seqs]
    assert lengths.tolist() == [len(e) for e in expected]
    assert ids.shape == (len(seqs), max(map(len, expected)))  # padded to the longest only
    for row, want in zip(ids.tolist(), expected):
        assert row[: len(want)] == want
        assert row[0] == 1 and want[-1] == 2  # [CLS] ... [SEP]
        assert set(row[len(want):]) <= {3}  # right padding with [PAD]


def test_real_batch_matches_library_and_template() -> None:
    real = real_tokenizer()
    tokenizer = DnaTokenizer.from_file(real)
    assert tokenizer.vocab_size == 4096
    _check_batch(tokenizer, real, SEQS)


def test_real_padding_and_truncation_are_off() -> None:
    """The file embeds Fixed(2000) padding and truncation at 2000: both must be gone.
    3000 N give 3000 [UNK] (one per letter), so 3002 tokens: truncation would cut to 2000."""
    real = real_tokenizer()
    settings = json.loads(real.read_text())
    assert settings["padding"] and settings["truncation"]["max_length"] == 2000
    tokenizer = DnaTokenizer.from_file(real)
    ids, lengths = tokenizer.encode_batch(["N" * 3000, "ACGT"])
    assert lengths.tolist()[0] == 3002 and ids.shape == (2, 3002)
    assert ids[0, 1:3001].eq(0).all()
    short_ids, short_lengths = tokenizer.encode_batch(["ACGT"])
    assert short_ids.shape[1] == int(short_lengths[0]) < 10  # no padding to 2000


def test_real_unknown_letters_one_unk_each() -> None:
    """Finding on the real file: every non-ACGT letter is its own [UNK] (runs not fused)."""
    real = real_tokenizer()
    tokenizer = DnaTokenizer.from_file(real)
    cases = {"ACGTNNNNACGT": 4, "ACGTRYKMACGT": 4, "N": 1, "acgt": 4, "ACGTNACGT": 1,
             "ACG-T": 1, "ACGU": 1}
    ids, lengths = tokenizer.encode_batch(list(cases))
    for row, n, unk in zip(ids, lengths, cases.values()):
        assert int((row[1: int(n) - 1] == 0).sum()) == unk
    # A-C-G-T letters never become [UNK].
    ids, lengths = tokenizer.encode_batch(["ACGT" * 50 + "GGCCTTAA" * 20])
    assert not ids[0, : int(lengths[0])].eq(0).any()


@pytest.fixture()
def demo(tmp_path: Path) -> Path:
    path = tmp_path / "tokenizer.json"
    build_demo_tokenizer(path)
    return path


def test_demo_tokenizer_layout(demo: Path) -> None:
    settings = json.loads(demo.read_text())
    assert settings["padding"] is None and settings["truncation"] is None
    assert [(t["id"], t["content"]) for t in settings["added_tokens"]] == [
        (0, "[UNK]"), (1, "[CLS]"), (2, "[SEP]"), (3, "[PAD]"), (4, "[MASK]")]
    vocab = settings["model"]["vocab"]
    assert all(letter in vocab for letter in "ACGT")
    assert len(settings["model"]["merges"]) >= 24  # "a few dozen merges"
    assert settings["model"]["type"] == "BPE" and settings["model"]["unk_token"] == "[UNK]"


def test_demo_tokenizer_splits_and_wraps_like_the_real_one(demo: Path) -> None:
    """Same pre-tokenisation and template as the real tokenizer."""
    real = real_tokenizer()
    settings, real_settings = json.loads(demo.read_text()), json.loads(real.read_text())
    assert settings["pre_tokenizer"] == real_settings["pre_tokenizer"]
    for key in ("single", "special_tokens"):
        assert settings["post_processor"][key] == real_settings["post_processor"][key]


def test_demo_tokenizer_encodes(demo: Path) -> None:
    tokenizer = DnaTokenizer.from_file(demo)
    assert tokenizer.vocab_size == len(json.loads(demo.read_text())["model"]["vocab"])
    _check_batch(tokenizer, demo, SEQS)
    ids, lengths = tokenizer.encode_batch(["ACGTNNNNACGT"])
    assert int((ids[0] == 0).sum()) == 4  # same [UNK] rule as the real file
    ids, lengths = tokenizer.encode_batch([])
    assert ids.shape == (0, 0) and lengths.shape == (0,)


def test_demo_tokenizer_is_deterministic(tmp_path: Path, demo: Path) -> None:
    """Same bytes when rebuilt, also in a fresh interpreter with another hash seed."""
    again = tmp_path / "again.json"
    build_demo_tokenizer(again)
    assert again.read_bytes() == demo.read_bytes()
    other = tmp_path / "other.json"
    code = ("from pathlib import Path; from virnucpro.models.dna_tokenizer import "
            f"build_demo_tokenizer; build_demo_tokenizer(Path({str(other)!r}))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert other.read_bytes() == demo.read_bytes()
