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

    @torch.inference_mode()
    def predict(self, frames: Sequence[Frame], keep_embeddings: bool = False) -> FramePredictions:
        if not frames:
            empty = np.zeros(0, dtype=np.float32)
            return FramePredictions(empty, empty.copy(), np.zeros(0, dtype=bool))
        dna = self._embed_dna([f.nt for f in frames])
        protein = self._embed_protein([f.aa for f in frames])
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

    def _embed_dna(self, seqs: list[str]) -> torch.Tensor:
        ids, lengths = self.tokenizer.encode_batch(seqs)
        if self.reference:
            batches = one_by_one(len(seqs))
        else:
            batches = budget_batches(lengths.numpy(), self.batch_tokens)
        return self._pool_in_batches(self.dnabert.pooled, ids, lengths, batches)

    def _embed_protein(self, proteins: list[str]) -> torch.Tensor:
        tokens, lengths = encode_proteins(proteins)
        if self.reference:
            # fair-esm counts residues + 1 against its 2048-token budget
            residues = lengths.numpy() - 2
            batches = reference_batches(residues, REFERENCE_ESM_TOKENS_PER_BATCH, extra_toks=1)
        else:
            batches = budget_batches(lengths.numpy(), self.batch_tokens)
        return self._pool_in_batches(self.esm.pooled, tokens, lengths, batches)

    def _pool_in_batches(
        self, pool: PoolFn, ids: torch.Tensor, lengths: torch.Tensor, batches: list[np.ndarray]
    ) -> torch.Tensor:
        """Run `pool` over index batches and scatter the rows back into input order."""
        out: torch.Tensor | None = None
        for index in batches:
            rows = torch.from_numpy(index)
            batch_lengths = lengths[rows]
            width = int(batch_lengths.max())
            batch_ids = ids[rows, :width].to(self.device, non_blocking=True)
            pooled = pool(batch_ids, batch_lengths.to(self.device, non_blocking=True)).float()
            if out is None:
                out = torch.empty(len(ids), pooled.shape[1], dtype=torch.float32, device=self.device)
            out[rows.to(self.device)] = pooled
        assert out is not None
        return out
