"""Frames -> class probabilities: tokenize, embed with both encoders, concatenate, classify.

One FramePredictor lives on one device and holds every model, loaded once (the original
reloaded its models for every 10,000 frames). The fast path batches by a token budget; the
reference path reproduces the original algorithm (fp32, DNABERT-S one frame per forward call,
ESM-2 in fair-esm's length-sorted 2048-token batches) so speed-ups can be measured against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from virnucpro.config import REFERENCE_ESM_TOKENS_PER_BATCH
from virnucpro.engine.batching import budget_batches, one_by_one, reference_batches
from virnucpro.models.bundle import ModelBundle
from virnucpro.models.classifier import class_probabilities
from virnucpro.models.protein_alphabet import encode_proteins
from virnucpro.stages.types import Frame


@dataclass(frozen=True)
class FramePredictions:
    """Per-frame results in the order of the frames given; scores are float32 softmax."""

    score1: np.ndarray  # P(others)
    score2: np.ndarray  # P(virus)
    is_virus: np.ndarray  # argmax of the logits' softmax, ties -> others
    dna_embeddings: np.ndarray | None = None
    protein_embeddings: np.ndarray | None = None


# (token ids [B, T], lengths [B]) -> pooled embeddings [B, D] in fp32
PoolFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class FramePredictor:
    def __init__(
        self,
        bundle: ModelBundle,
        device: torch.device,
        dtype: torch.dtype,
        *,
        reference: bool,
        batch_tokens: int,
    ) -> None:
        self.device = device
        self.reference = reference
        self.batch_tokens = batch_tokens
        self.tokenizer = bundle.tokenizer
        self.esm = bundle.esm.to(device=device, dtype=dtype).eval()
        self.dnabert = bundle.dnabert.to(device=device, dtype=dtype).eval()
        # The classifier is tiny; fp32 keeps its scores comparable to the original's.
        self.classifier = bundle.classifier.to(device=device, dtype=torch.float32).eval()

    def prepare(self, frames: Sequence[Frame]) -> PreparedShard:
        """Host-side work for a shard (tokenize, plan batches, pin memory). Thread-safe and
        free of device work, so a worker can prepare the next shard while this one runs."""
        if not frames:
            return PreparedShard(0, [], [])
        dna_ids, dna_lengths = self.tokenizer.encode_batch([f.nt for f in frames])
        tokens, lengths = encode_proteins([f.aa for f in frames])
        if self.reference:
            dna_plan = one_by_one(len(frames))
            # fair-esm counts residues + 1 against its 2048-token budget
            esm_plan = reference_batches(lengths.numpy() - 2, REFERENCE_ESM_TOKENS_PER_BATCH, 1)
        else:
            dna_plan = budget_batches(dna_lengths.numpy(), self.batch_tokens)
            esm_plan = budget_batches(lengths.numpy(), self.batch_tokens)
        pin = self.device.type == "cuda"
        return PreparedShard(
            count=len(frames),
            dna=_cut_batches(dna_ids, dna_lengths, dna_plan, pin),
            protein=_cut_batches(tokens, lengths, esm_plan, pin),
        )

    @torch.inference_mode()
    def run(self, prepared: PreparedShard, keep_embeddings: bool = False) -> FramePredictions:
        """Device-side work: both encoders, concatenation, classifier; one copy back."""
        if prepared.count == 0:
            empty = np.zeros(0, dtype=np.float32)
            return FramePredictions(empty, empty.copy(), np.zeros(0, dtype=bool))
        dna = self._pool_in_batches(self.dnabert.pooled, prepared.dna, prepared.count)
        protein = self._pool_in_batches(self.esm.pooled, prepared.protein, prepared.count)
        features = torch.cat([dna, protein], dim=1)  # [N, D_dna + D_esm]
        probs = class_probabilities(self.classifier, features).float().cpu().numpy()
        score1 = np.ascontiguousarray(probs[:, 0], dtype=np.float32)
        score2 = np.ascontiguousarray(probs[:, 1], dtype=np.float32)
        return FramePredictions(
            score1=score1,
            score2=score2,
            is_virus=score2 > score1,
            dna_embeddings=dna.cpu().numpy() if keep_embeddings else None,
            protein_embeddings=protein.cpu().numpy() if keep_embeddings else None,
        )

    def predict(self, frames: Sequence[Frame], keep_embeddings: bool = False) -> FramePredictions:
        return self.run(self.prepare(frames), keep_embeddings)

    def _pool_in_batches(self, pool: PoolFn, batches: list[TokenBatch], count: int) -> torch.Tensor:
        """Run `pool` over the batches and scatter the rows back into input order."""
        out: torch.Tensor | None = None
        for batch in batches:
            ids = batch.ids.to(self.device, non_blocking=True)
            lengths = batch.lengths.to(self.device, non_blocking=True)
            pooled = pool(ids, lengths).float()
            if out is None:
                out = torch.empty(count, pooled.shape[1], dtype=torch.float32, device=self.device)
            out[batch.rows.to(self.device, non_blocking=True)] = pooled
        assert out is not None
        return out


@dataclass(frozen=True)
class TokenBatch:
    rows: torch.Tensor  # [B] positions of these sequences in the shard
    ids: torch.Tensor  # [B, T] right-padded token ids, T = longest in this batch
    lengths: torch.Tensor  # [B] real tokens per row, specials included


@dataclass(frozen=True)
class PreparedShard:
    count: int
    dna: list[TokenBatch]
    protein: list[TokenBatch]


def _cut_batches(
    ids: torch.Tensor, lengths: torch.Tensor, plan: list[np.ndarray], pin: bool
) -> list[TokenBatch]:
    batches = []
    for index in plan:
        rows = torch.from_numpy(index)
        batch_lengths = lengths[rows]
        batch_ids = ids[rows, : int(batch_lengths.max())]
        if pin:  # page-locked host memory lets the copy to the GPU run asynchronously
            rows, batch_ids, batch_lengths = rows.pin_memory(), batch_ids.pin_memory(), batch_lengths.pin_memory()
        batches.append(TokenBatch(rows, batch_ids, batch_lengths))
    return batches
