"""Frames -> class probabilities: tokenize, embed with both encoders, concatenate, classify.

One FramePredictor lives on one device and holds every model, loaded once (the original
reloaded its models for every 10,000 frames). The fast path batches by a token budget; the
reference path reproduces the original algorithm (fp32, DNABERT-S one frame per forward call,
ESM-2 in fair-esm's length-sorted 2048-token batches) so speed-ups can be measured against it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from virnucpro.config import REFERENCE_ESM_TOKENS_PER_BATCH
from virnucpro.engine.devices import MIN_GPU_BATCH_TOKENS, batch_tokens_for
from virnucpro.engine.batching import budget_batches, one_by_one, packed_batches, reference_batches
from virnucpro.models.bundle import ModelBundle
from virnucpro.models.classifier import class_probabilities
from virnucpro.models.esm2 import ESM2, PackedBatch, pack_proteins
from virnucpro.models.placement import esm_on_device
from virnucpro.models.protein_alphabet import encode_proteins
from virnucpro.stages.types import Frame


@dataclass(frozen=True)
class FramePredictions:
    """Per-frame results in the order of the frames given; scores are float32 softmax."""

    score1: np.ndarray  # P(others)
    score2: np.ndarray  # P(virus)
    dna_embeddings: np.ndarray | None = None
    protein_embeddings: np.ndarray | None = None


log = logging.getLogger("virnucpro")

# a batch's device-side input -> pooled embeddings [B, D] in fp32
PoolFn = Callable[["TokenBatch | PackedBatch"], torch.Tensor]


class FramePredictor:
    def __init__(
        self,
        bundle: ModelBundle,
        device: torch.device,
        dtype: torch.dtype,
        *,
        reference: bool,
        batch_tokens: int | None = None,
        compile: bool | str = False,
    ) -> None:
        self.device = device
        self.reference = reference
        # Packed (padding-free) ESM-2 batches through flash varlen attention, where that
        # kernel exists: CUDA in bf16/fp16. Elsewhere length-sorted padded batches.
        self.packed = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and not reference
        self.oom_splits = 0  # batches halved after running out of device memory
        self.fp16_overflows = 0  # shards whose DNABERT-S pass was redone in fp32
        self.tokenizer = bundle.tokenizer
        # DNABERT-S (~3% of the FLOPs) keeps fp32 weights; on a GPU's fast path its GEMMs run
        # in fp16 under autocast whatever --precision says: at the same speed as bf16, its
        # embeddings came out far closer to fp32 (worst-frame cosine 0.99999 vs 0.9991, largest
        # relative error 4e-3 vs 4e-2; benchmarks/RESULTS.md). A shard whose fp16 pass
        # overflows is redone in fp32.
        self.dnabert = bundle.dnabert.to(device=device, dtype=torch.float32).eval()
        self.dna_autocast = device.type == "cuda" and dtype != torch.float32 and not reference
        if not self.dna_autocast:
            self.dnabert.to(dtype=dtype)
        # The classifier is tiny; fp32 keeps its scores comparable to the original's.
        self.classifier = bundle.classifier.to(device=device, dtype=torch.float32).eval()
        self.compiled = bool(compile) and self.packed
        self.compile_seconds = 0.0  # compiling and the warm-up shard, on its own thread
        # Enough for the warm-up's few frames; sized from the free memory once ESM-2 is resident.
        self.batch_tokens = batch_tokens or MIN_GPU_BATCH_TOKENS
        # Compiled on an empty copy while the weights are copied in (models/placement.py):
        # the first shard then runs at full speed, and start-up pays for the slower of the
        # two instead of both.
        mode = None if compile is True else compile
        compile_beside = (lambda esm: self._compile(esm, mode)) if self.compiled else None
        self.esm, self.copy_seconds = esm_on_device(bundle.esm, device, dtype, while_copying=compile_beside)
        self.batch_tokens = batch_tokens or batch_tokens_for(device, self.esm.embed_dim)

    def _compile(self, esm: ESM2, mode: str | None) -> None:
        """Compile ESM-2's packed layers and run a small shard through everything, so every
        kernel is compiled (or fetched from the on-disk cache) and loaded before real work."""
        t0 = time.perf_counter()
        compile_packed_layers(esm, mode=mode)
        self.esm = esm
        self.predict(warm_up_frames())
        self.compile_seconds = time.perf_counter() - t0

    def prepare(self, frames: Sequence[Frame]) -> PreparedShard:
        """Host-side work for a shard (tokenize, plan batches, pin memory). Thread-safe and
        free of device work, so a worker can prepare the next shard while this one runs."""
        if not frames:
            return PreparedShard(0, None, None)
        dna_ids, dna_lengths = self.tokenizer.encode_batch([f.nt for f in frames])
        tokens, lengths = encode_proteins([f.aa for f in frames])
        if self.reference:
            dna_plan = one_by_one(len(frames))
            # fair-esm counts residues + 1 against its 2048-token budget
            esm_plan = reference_batches(lengths.numpy() - 2, REFERENCE_ESM_TOKENS_PER_BATCH, 1)
        elif self.packed:
            dna_plan = budget_batches(dna_lengths.numpy(), self.batch_tokens)
            esm_plan = packed_batches(lengths.numpy(), self.batch_tokens)
        else:
            dna_plan = budget_batches(dna_lengths.numpy(), self.batch_tokens)
            esm_plan = budget_batches(lengths.numpy(), self.batch_tokens)
        pin = self.device.type == "cuda"
        dna = EncoderInput(dna_ids, dna_lengths, packed=False, pin=pin)
        protein = EncoderInput(tokens, lengths, packed=self.packed, pin=pin)
        dna.plan(dna_plan)
        protein.plan(esm_plan)
        return PreparedShard(len(frames), dna, protein)

    @torch.inference_mode()
    def run(self, prepared: PreparedShard, keep_embeddings: bool = False) -> FramePredictions:
        """Device-side work: both encoders, concatenation, classifier; one copy back."""
        if prepared.count == 0:
            empty = np.zeros(0, dtype=np.float32)
            return FramePredictions(empty, empty.copy())
        dna = self._pool_all(self._pool_dna, prepared.dna, prepared.count)
        protein = self._pool_all(self._pool_protein, prepared.protein, prepared.count)
        finite = torch.isfinite(dna).all()  # checked once per shard, with the results' copy
        result = self._classify(dna, protein, keep_embeddings)
        if self.dna_autocast and not bool(finite):
            self.fp16_overflows += 1
            dna = self._pool_all(self._pool_dna_fp32, prepared.dna, prepared.count)
            result = self._classify(dna, protein, keep_embeddings)
        return result

    @torch.inference_mode()
    def classify_embeddings(self, dna: np.ndarray, protein: np.ndarray,
                            keep_embeddings: bool = False) -> FramePredictions:
        """Classifier only, on embeddings computed earlier (e.g. by the original VirNucPro):
        dna [N, D_dna] and protein [N, D_esm] float32 rows, one per frame."""
        to_device = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.device)
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
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.dna_autocast):
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
                self.compiled = False
                return self.esm.pooled_packed(batch)
        ids = batch.ids.to(self.device, non_blocking=True)
        return self.esm.pooled(ids, batch.lengths.to(self.device, non_blocking=True))

    def _pool_all(self, pool: PoolFn, encoder: EncoderInput, count: int) -> torch.Tensor:
        """Run `pool` over the planned batches; scatter rows back into input order."""
        out: torch.Tensor | None = None
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
                self.oom_splits += 1
                continue
            if out is None:
                out = torch.empty(count, pooled.shape[1], dtype=torch.float32, device=self.device)
            out[torch.from_numpy(rows).to(self.device, non_blocking=True)] = pooled
        assert out is not None
        return out


def warm_up_frames() -> list[Frame]:
    """A few frames of different lengths (proteins of 8, 49 and 166 residues, the codons to
    match): enough to compile every kernel of the packed path for any batch size."""
    residues = "ACDEFGHIKLMNPQRSTVWY"
    frames = []
    for n, length in enumerate((8, 49, 166)):
        aa = "M" + (residues * 9)[n : n + length - 1]
        frames.append(Frame(f"warm_up_{n}", ("ATG" + "GCA" * (length - 1))[: 3 * length], aa))
    return frames


def compile_packed_layers(esm: torch.nn.Module, mode: str | None = None) -> None:
    """torch.compile each ESM-2 layer's packed forward (fuses LayerNorm, rotary, GELU and
    residual adds around the GEMMs). Token counts vary per batch: dynamic shapes, so one
    compilation serves every batch; the layers share code, so they share the compiled graph.

    In Inductor's deterministic mode: otherwise each process times its candidate reduction
    kernels (LayerNorm's block size and warps) on its own GPU and keeps the fastest, and those
    candidates sum in different orders. Two workers could then compute the same shard with
    different roundings, and results would depend on the device count (seen on 4 H200s: the
    1-, 2- and 4-GPU result files differed)."""
    options = compile_options(mode)
    for layer in esm.layers:
        layer.forward_packed = torch.compile(layer.forward_packed, dynamic=True, options=options)


def compile_options(mode: str | None) -> dict:
    """Inductor options: those of `mode` (None: the default), made deterministic where this
    PyTorch has the switch (older ones get a warning)."""
    import torch._inductor
    import torch._inductor.config

    options = dict(torch._inductor.list_mode_options(mode, dynamic=True)) if mode else {}
    if hasattr(torch._inductor.config, "deterministic"):
        options["deterministic"] = True
    else:
        log.warning("this PyTorch (%s) has no deterministic mode for torch.compile: results may "
                    "differ in the last bits between devices; --no-compile avoids that",
                    torch.__version__)
    return options


def uncompile_packed_layers(esm: torch.nn.Module) -> None:
    """Drop the compiled wrappers: the class's own (eager) method shows through again."""
    for layer in esm.layers:
        layer.__dict__.pop("forward_packed", None)


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
