"""The DNABERT-S tokenizer: a thin wrapper over the `tokenizers` library (Rust, parallel).

The real `tokenizer.json` is a BPE model (vocab 4096) with a Whitespace pre-tokenizer and the
template `[CLS] $A [SEP]`. It also embeds fixed padding and truncation to 2000 tokens, which
the original never applied (transformers switches them off per call unless asked): they are
switched off here, so a long frame is never cut and a batch is padded only to its longest.

Letters outside A/C/G/T (N, IUPAC codes, U, lower case, '-', '*') are not in the vocabulary.
Measured on the real file (tokenizers 0.23): EACH such letter becomes its own [UNK] (id 0);
a run is not fused (the model has fuse_unk=false): "ACGTNNNNACGT" -> [CLS] A C GT [UNK]
[UNK] [UNK] [UNK] A C GT [SEP]. The unknown letter also splits the BPE word, so the A/C/G/T
around it are merged separately.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

UNK_ID, CLS_ID, SEP_ID, PAD_ID, MASK_ID = 0, 1, 2, 3, 4
SPECIAL_TOKENS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]  # list index = id


class DnaTokenizer:
    """Encodes DNA strings to right-padded id batches for `DNABertS`."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        # The file's padding/truncation settings are never what we want (see module doc).
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: str | Path) -> DnaTokenizer:
        """Load an HF `tokenizer.json`. Raises OSError/ValueError; loaders wrap those."""
        return cls(Tokenizer.from_str(Path(path).read_bytes().decode("utf-8")))

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, seqs: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (ids LongTensor[B, T] padded with [PAD]=3, lengths LongTensor[B]).

        Lengths count [CLS] and [SEP]; T is the longest length in the batch.
        """
        encodings = self._tokenizer.encode_batch(list(seqs), add_special_tokens=True)
        id_lists = [encoding.ids for encoding in encodings]
        lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
        width = int(lengths.max()) if len(lengths) else 0
        ids = np.full((len(id_lists), width), PAD_ID, dtype=np.int64)
        flat = np.fromiter(chain.from_iterable(id_lists), dtype=np.int64,
                           count=int(lengths.sum()))
        # Row-major boolean assignment fills each row's first `length` slots in order.
        ids[np.arange(width)[None, :] < lengths[:, None]] = flat
        return torch.from_numpy(ids), torch.from_numpy(lengths)


# --- demo tokenizer ----------------------------------------------------------------------

_DEMO_VOCAB_SIZE = 64  # 5 special + 4 letters + 55 learned merges


def _demo_corpus(n_seqs: int = 200, length: int = 240) -> Iterator[str]:
    """Deterministic pseudo-random DNA from a fixed linear congruential generator.

    Written out rather than `random.Random(seed)` so the bytes cannot change with Python's
    random-module implementation. A bias towards repeats of the previous base gives the
    trainer clear winners (AA, TT, ...) instead of near-ties.
    """
    state = 20240601
    for _ in range(n_seqs):
        letters = []
        previous = 0
        for _ in range(length):
            state = (state * 1103515245 + 12345) % 2**31
            draw = state >> 16
            previous = previous if draw % 3 == 0 else draw % 4
            letters.append("ACGT"[previous])
        yield "".join(letters)


def build_demo_tokenizer(path: Path) -> None:
    """Write a small BPE tokenizer.json laid out like DNABERT-S's (same special ids, the same
    Whitespace pre-tokenizer and `[CLS] $A [SEP]` template, no padding/truncation).

    Trained by the `tokenizers` BPE trainer on a fixed corpus: the same bytes every time
    (checked across interpreter hash seeds). Used by `virnucpro predict --demo`.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=_DEMO_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,  # added first, so they get ids 0..4 in this order
        initial_alphabet=list("ACGT"),
        limit_alphabet=4,
        show_progress=False,
    )
    tokenizer.train_from_iterator(_demo_corpus(), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tokenizer.to_str(pretty=True), encoding="utf-8")
