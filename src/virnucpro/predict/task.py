"""The task the engine runs on every device: a shard of frames -> its result.

Built inside each worker by `make_frame_task(config, device)`: the models are loaded there,
once per device, so the parent never touches a GPU. Frames whose embeddings are already known
(from the original VirNucPro's files) skip both encoders; the classifier then runs over the
whole shard at once, so a shard's scores do not depend on which of its frames were reused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from virnucpro.config import RunConfig
from virnucpro.models.bundle import load_bundle
from virnucpro.predict.placement import EsmOnDevice, place_predictor, start_esm
from virnucpro.predict.precision import Precision
from virnucpro.predict.predictor import FramePredictor, PreparedShard
from virnucpro.stages.types import Frame, KnownEmbeddings
from virnucpro.store import ShardResult


def frame_cost(frame: Frame) -> int:
    """GPU cost of a frame, in ESM-2 tokens (ESM-2 is ~97% of the FLOPs): its protein with
    <cls> and <eos>."""
    return len(frame.aa) + 2


@dataclass(frozen=True)
class DeviceInfo:
    """What a worker reports once its models are on its device (sent to the parent)."""

    identity: dict[str, str]  # model name -> file identity (or "demo"): enters the fingerprint
    demo_models: tuple[str, ...]  # models that are random stand-ins
    dtype: str  # ESM-2's compute dtype, e.g. "bfloat16"
    feature_dims: tuple[int, int]  # (DNABERT-S width, ESM-2 width)
    batch_tokens: int
    startup_s: dict[str, float] = field(default_factory=dict)  # seconds per start-up phase

    def agreed(self) -> tuple:
        """What every device of one run must share: the same models and numerics."""
        return (self.identity, self.dtype, self.feature_dims)


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
    def __init__(self, predictor: FramePredictor, keep_embeddings: bool, info: DeviceInfo) -> None:
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
            p = computed = self.predictor.run(prepared.encoders, self.keep_embeddings)
        else:
            dna, protein, computed = self._all_embeddings(prepared)
            p = self.predictor.classify_embeddings(dna, protein, self.keep_embeddings)
        return ShardResult(work.index, [f.id for f in work.frames], p.score1, p.score2,
                           p.dna_embeddings, p.protein_embeddings,
                           reused=0 if work.known is None else len(work.known.rows),
                           batches_halved=computed.batches_halved if computed else 0,
                           redone_in_fp32=bool(computed and computed.redone_in_fp32))

    def _all_embeddings(self, prepared: _Prepared):
        """Known rows from the earlier run, the rest computed; and the computing's result."""
        known = prepared.work.known
        n = len(prepared.work.frames)
        dna = np.empty((n, known.dna.shape[1]), dtype=np.float32)
        protein = np.empty((n, known.protein.shape[1]), dtype=np.float32)
        dna[known.rows], protein[known.rows] = known.dna, known.protein
        computed = None
        if len(prepared.missing):
            computed = self.predictor.run(prepared.encoders, keep_embeddings=True)
            dna[prepared.missing] = computed.dna_embeddings
            protein[prepared.missing] = computed.protein_embeddings
        return dna, protein, computed


def make_frame_task(config: RunConfig, device: torch.device) -> FrameTask:
    """Load the models on `device` and wrap them as the engine's task (runs in the worker)."""
    t0 = time.perf_counter()
    precision = Precision.resolve(config.precision, device, config.reference)
    started: list[tuple[EsmOnDevice, float]] = []  # ESM-2's device module, and seconds to build it

    def start(architecture: dict) -> None:  # compiling starts while the weights are read
        t = time.perf_counter()
        esm = start_esm(architecture, device, precision, compile=config.compile)
        started.append((esm, time.perf_counter() - t))

    try:
        bundle = load_bundle(config.models, config.chunk_len, config.demo, on_esm_architecture=start)
    except BaseException:
        for esm, _ in started:  # reading failed after ESM-2 began compiling: let that end first
            esm.abandon()
        raise
    t1 = time.perf_counter()
    (esm, building), = started
    placed = place_predictor(bundle, device, precision, batch_tokens=config.batch_tokens,
                             compile=config.compile, esm=esm)
    startup = {"read models": round(t1 - t0 - building, 2),
               "ESM-2 built empty on the device, amid the reading": round(building, 2),
               "models to device": round(time.perf_counter() - t1, 2),
               "of which ESM-2 weights copied": round(placed.copy_seconds, 2)}
    if placed.compile_seconds is not None:
        startup["compile ESM-2 and warm it up, on a thread beside reading and copying"] = round(placed.compile_seconds, 2)
        startup["of models to device, the whole predictor's warm-up"] = round(placed.warm_up_seconds or 0.0, 2)
    info = DeviceInfo(dict(bundle.identity), tuple(bundle.demo_models), precision.name,
                      bundle.feature_dims(), placed.predictor.batch_tokens, startup)
    return FrameTask(placed.predictor, config.save_embeddings, info)
