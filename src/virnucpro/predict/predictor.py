"""Frames -> class probabilities: tokenize, embed with both encoders, concatenate, classify.

One FramePredictor lives on one device and holds every model, loaded once (the original
reloaded its models for every 10,000 frames). The fast path batches by a token budget; the
reference path reproduces the original algorithm (fp32, DNABERT-S one frame per forward call,
ESM-2 in fair-esm's length-sorted 2048-token batches) so speed-ups can be measured against it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from virnucpro.config import REFERENCE_ESM_TOKENS_PER_BATCH
from virnucpro.models.classifier import MLPClassifier, class_probabilities
from virnucpro.models.dna_tokenizer import DnaTokenizer
from virnucpro.models.dnabert_s import DNABertS
from virnucpro.models.esm2 import ESM2, PackedBatch
from virnucpro.models.protein_alphabet import encode_proteins
from virnucpro.predict.batching import budget_batches, one_by_one, packed_batches, reference_batches
from virnucpro.predict.compile import is_compiled, uncompile_packed_layers
from virnucpro.predict.packing import pack_proteins
from virnucpro.predict.precision import Precision
from virnucpro.stages.types import Frame


@dataclass(frozen=True)
class FramePredictions:
    """Per-frame results in the order of the frames given; scores are float32 softmax."""

    score1: np.ndarray  # P(others)
    score2: np.ndarray  # P(virus)
    dna_embeddings: np.ndarray | None = None
    protein_embeddings: np.ndarray | None = None
    batches_halved: int = 0  # batches split in two after running out of device memory
    redone_in_fp32: bool = False  # DNABERT-S overflowed fp16 and was run again in fp32


log = logging.getLogger("virnucpro")

# a batch's device-side input -> pooled embeddings [B, D] in fp32
PoolFn = Callable[["TokenBatch | PackedBatch"], torch.Tensor]


class FramePredictor:
    """Every model of a run on one device, ready: frames in, class probabilities out.

    Built by `predict.placement.place_predictor` (models copied in, ESM-2 compiled while they
    were read and copied); its parts are already on `device` in the precision's dtypes."""

    def __init__(self, tokenizer: DnaTokenizer, dnabert: DNABertS, esm: ESM2, classifier: MLPClassifier,
                 device: torch.device, precision: Precision, batch_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.dnabert = dnabert
        self.esm = esm
        self.classifier = classifier
        self.device = device
        self.precision = precision
        self.batch_tokens = batch_tokens

    @property
    def compiled(self) -> bool:
        return is_compiled(self.esm)

    def prepare(self, frames: Sequence[Frame]) -> PreparedShard:
        """Host-side work for a shard (tokenize, plan batches, pin memory). Thread-safe and
        free of device work, so a worker can prepare the next shard while this one runs."""
        if not frames:
            return PreparedShard(0, None, None)
        dna_ids, dna_lengths = self.tokenizer.encode_batch([f.nt for f in frames])
        tokens, lengths = encode_proteins([f.aa for f in frames])
        if self.precision.reference:
            dna_plan = one_by_one(len(frames))
            # fair-esm counts residues + 1 against its 2048-token budget
            esm_plan = reference_batches(lengths.numpy() - 2, REFERENCE_ESM_TOKENS_PER_BATCH, 1)
        elif self.precision.packed:
            dna_plan = budget_batches(dna_lengths.numpy(), self.batch_tokens)
            esm_plan = packed_batches(lengths.numpy(), self.batch_tokens)
        else:
            dna_plan = budget_batches(dna_lengths.numpy(), self.batch_tokens)
            esm_plan = budget_batches(lengths.numpy(), self.batch_tokens)
        pin = self.device.type == "cuda"
        dna = EncoderInput(dna_ids, dna_lengths, packed=False, pin=pin)
        protein = EncoderInput(tokens, lengths, packed=self.precision.packed, pin=pin)
        dna.plan(dna_plan)
        protein.plan(esm_plan)
        return PreparedShard(len(frames), dna, protein)

    @torch.inference_mode()
    def run(self, prepared: PreparedShard, keep_embeddings: bool = False) -> FramePredictions:
        """Device-side work: both encoders, concatenation, classifier; one copy back."""
        if prepared.count == 0:
            empty = np.zeros(0, dtype=np.float32)
            return FramePredictions(empty, empty.copy())
        dna, halved_dna = self._pool_all(self._pool_dna, prepared.dna, prepared.count)
        protein, halved_esm = self._pool_all(self._pool_protein, prepared.protein, prepared.count)
        finite = torch.isfinite(dna).all()  # checked once per shard, with the results' copy
        result = self._classify(dna, protein, keep_embeddings)
        redo = self.precision.dnabert_autocast and not bool(finite)
        if redo:
            dna, halved_again = self._pool_all(self._pool_dna_fp32, prepared.dna, prepared.count)
            result = self._classify(dna, protein, keep_embeddings)
            halved_dna += halved_again
        return replace(result, batches_halved=halved_dna + halved_esm, redone_in_fp32=redo)

    @torch.inference_mode()
    def classify_embeddings(self, dna: np.ndarray, protein: np.ndarray,
                            keep_embeddings: bool = False) -> FramePredictions:
        """Classifier only, on embeddings computed earlier (e.g. by the original VirNucPro):
        dna [N, D_dna] and protein [N, D_esm] float32 rows, one per frame."""
        def to_device(rows: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(self.device)

        return self._classify(to_device(dna), to_device(protein), keep_embeddings)

    def _classify(self, dna: torch.Tensor, protein: torch.Tensor, keep_embeddings: bool) -> FramePredictions:
        features = torch.cat([dna, protein], dim=1)  # [N, D_dna + D_esm]
        probs = class_probabilities(self.classifier, features).float().cpu().numpy()
        score1 = np.ascontiguousarray(probs[:, 0], dtype=np.float32)
        score2 = np.ascontiguousarray(probs[:, 1], dtype=np.float32)
        return FramePredictions(
            score1=score1,
            score2=score2,
            dna_embeddings=dna.cpu().numpy() if keep_embeddings else None,
            protein_embeddings=protein.cpu().numpy() if keep_embeddings else None,
        )

    def predict(self, frames: Sequence[Frame], keep_embeddings: bool = False) -> FramePredictions:
        return self.run(self.prepare(frames), keep_embeddings)

    def _pool_dna(self, batch: "TokenBatch | PackedBatch") -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.precision.dnabert_autocast):
            return self._pool_dna_fp32(batch)

    def _pool_dna_fp32(self, batch: "TokenBatch | PackedBatch") -> torch.Tensor:
        assert isinstance(batch, TokenBatch)
        ids = batch.ids.to(self.device, non_blocking=True)
        return self.dnabert.pooled(ids, batch.lengths.to(self.device, non_blocking=True))

    def _pool_protein(self, batch: "TokenBatch | PackedBatch") -> torch.Tensor:
        if isinstance(batch, PackedBatch):
            batch = batch.to(self.device, non_blocking=True)
            try:
                return self.esm.pooled_packed(batch)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # compilation fails lazily, at the first call
                if not self.compiled:
                    raise
                # Speed is not worth a failed run: carry on with the same layers, eager.
                log.warning("torch.compile failed on %s (%s: %s); continuing without it",
                            self.device, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                uncompile_packed_layers(self.esm)
                return self.esm.pooled_packed(batch)
        ids = batch.ids.to(self.device, non_blocking=True)
        return self.esm.pooled(ids, batch.lengths.to(self.device, non_blocking=True))

    def _pool_all(self, pool: PoolFn, encoder: EncoderInput, count: int) -> tuple[torch.Tensor, int]:
        """Run `pool` over the planned batches; scatter rows back into input order. Also
        returns how many batches were halved after running out of memory."""
        out: torch.Tensor | None = None
        halved = 0
        pending = list(encoder.batches)
        while pending:
            rows, batch = pending.pop(0)
            try:
                pooled = pool(batch).float()
            except torch.OutOfMemoryError:
                if len(rows) == 1:
                    raise
                # Too big for the memory left: halve it and retry; no frame is lost.
                torch.cuda.empty_cache() if self.device.type == "cuda" else None
                half = len(rows) // 2
                pending[:0] = [encoder.cut(rows[:half]), encoder.cut(rows[half:])]
                halved += 1
                continue
            if out is None:
                out = torch.empty(count, pooled.shape[1], dtype=torch.float32, device=self.device)
            out[torch.from_numpy(rows).to(self.device, non_blocking=True)] = pooled
        assert out is not None
        return out, halved


@dataclass(frozen=True)
class TokenBatch:
    ids: torch.Tensor  # [B, T] right-padded token ids, T = longest in this batch
    lengths: torch.Tensor  # [B] real tokens per row, specials included


class EncoderInput:
    """One encoder's tokens for a shard and its batches, as (rows, device-ready input).

    Keeps the shard's tokens so a batch can be cut again, smaller, after an out-of-memory.
    """

    def __init__(self, ids: torch.Tensor, lengths: torch.Tensor, *, packed: bool, pin: bool) -> None:
        self.ids, self.lengths, self.packed, self.pin = ids, lengths, packed, pin
        self.batches: list[tuple[np.ndarray, TokenBatch | PackedBatch]] = []

    def plan(self, plan: list[np.ndarray]) -> None:
        self.batches = [self.cut(rows) for rows in plan]

    def cut(self, rows: np.ndarray) -> tuple[np.ndarray, TokenBatch | PackedBatch]:
        index = torch.from_numpy(rows)
        lengths = self.lengths[index]
        ids = self.ids[index, : int(lengths.max())]
        batch: TokenBatch | PackedBatch
        if self.packed:
            batch = pack_proteins(ids, lengths)
            # page-locked host memory lets the copy to the GPU run asynchronously
            batch = batch.pin_memory() if self.pin else batch
        else:
            batch = TokenBatch(ids.pin_memory(), lengths.pin_memory()) if self.pin else TokenBatch(ids, lengths)
        return rows, batch


@dataclass(frozen=True)
class PreparedShard:
    count: int
    dna: EncoderInput | None
    protein: EncoderInput | None
