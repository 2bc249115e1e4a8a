"""The task the engine runs on every device: a shard of frames -> its stored result.

Built inside each worker by `make_frame_task(config, device)`: the models are loaded there,
once per device, so the parent never touches a GPU. Frames whose embeddings are already known
(from the original VirNucPro's files) skip both encoders; the classifier then runs over the
whole shard at once, so a shard's scores do not depend on which of its frames were reused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from virnucpro.config import RunConfig
from virnucpro.engine.devices import resolve_dtype
from virnucpro.models.load import load_bundle
from virnucpro.stages.classify import FramePredictions, FramePredictor, PreparedShard
from virnucpro.stages.types import Frame
from virnucpro.store import ShardResult


@dataclass(frozen=True)
class KnownEmbeddings:
    """Embeddings of some frames of a shard, computed by an earlier run."""

    rows: np.ndarray  # [K] positions in the shard
    dna: np.ndarray  # [K, D_dna] float32
    protein: np.ndarray  # [K, D_esm] float32


@dataclass(frozen=True)
class ShardWork:
    index: int
    frames: list[Frame]
    known: KnownEmbeddings | None = None


@dataclass(frozen=True)
class _Prepared:
    work: ShardWork
    missing: np.ndarray  # rows the encoders must compute
    encoders: PreparedShard


class FrameTask:
    def __init__(self, predictor: FramePredictor, keep_embeddings: bool, info: dict) -> None:
        self.predictor = predictor
        self.keep_embeddings = keep_embeddings
        self.info = info

    def prepare(self, work: ShardWork) -> _Prepared:
        missing = np.arange(len(work.frames))
        if work.known is not None:
            missing = np.setdiff1d(missing, work.known.rows)
        return _Prepared(work, missing, self.predictor.prepare([work.frames[i] for i in missing]))

    def run(self, prepared: _Prepared) -> ShardResult:
        work = prepared.work
        if work.known is None:
            p = self.predictor.run(prepared.encoders, self.keep_embeddings)
        else:
            p = self.predictor.classify_embeddings(*self._all_embeddings(prepared), self.keep_embeddings)
        return ShardResult(work.index, [f.id for f in work.frames], p.score1, p.score2,
                           p.dna_embeddings, p.protein_embeddings)

    def _all_embeddings(self, prepared: _Prepared) -> tuple[np.ndarray, np.ndarray]:
        known = prepared.work.known
        n = len(prepared.work.frames)
        dna = np.empty((n, known.dna.shape[1]), dtype=np.float32)
        protein = np.empty((n, known.protein.shape[1]), dtype=np.float32)
        dna[known.rows], protein[known.rows] = known.dna, known.protein
        if len(prepared.missing):
            computed: FramePredictions = self.predictor.run(prepared.encoders, keep_embeddings=True)
            dna[prepared.missing] = computed.dna_embeddings
            protein[prepared.missing] = computed.protein_embeddings
        return dna, protein


def make_frame_task(config: RunConfig, device: torch.device) -> FrameTask:
    """Load the models on `device` and wrap them as the engine's task (runs in the worker)."""
    t0 = time.perf_counter()
    bundle = load_bundle(config.models, config.chunk_len, config.demo)
    t1 = time.perf_counter()
    dtype = resolve_dtype(config.precision, device, config.reference)
    predictor = FramePredictor(bundle, device, dtype, reference=config.reference,
                               batch_tokens=config.batch_tokens, compile=config.compile)
    startup = {"read models": round(t1 - t0, 2),
               "models to device": round(time.perf_counter() - t1, 2),
               "of which ESM-2 weights copied": round(predictor.copy_seconds, 2)}
    if predictor.compiled:  # on a thread beside the copy
        startup["of which compile and warm-up, beside the copy"] = round(predictor.compile_seconds, 2)
    info = {
        "identity": dict(bundle.identity),
        "demo_models": tuple(bundle.demo_models),
        "dtype": str(dtype).removeprefix("torch."),
        "feature_dims": bundle.feature_dims(),
        "batch_tokens": predictor.batch_tokens,
        "startup_s": startup,
    }
    return FrameTask(predictor, config.save_embeddings, info)
