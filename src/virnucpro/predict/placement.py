"""Put a run's models on their compute device: the predictor, ready, with ESM-2 compiled and
warmed up while its weights were read and copied.

The weights are copied tensor by tensor in their stored dtype (fp16 for the released 3B: half
the bytes of fp32 over the bus) and cast on the device, not on the host's cores, which several
workers share while they all start at once.

Compiling ESM-2's layers (tracing, then loading the kernels from the on-disk cache) takes
seconds of CPU time that need only the module's structure, shapes and dtypes, not its
values. So `start_esm` builds an empty module of the right shape on the device as soon as the
checkpoint's architecture is known and compiles it on a thread while the weights are read
from disk and then copied in: start-up pays for the slower of the two instead of both. The
compiled code reads the parameters as inputs (Inductor does not freeze them into constants
unless asked), so the values copied in afterwards are the ones it computes with.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from virnucpro.engine.background import in_background, quick_thread_switching
from virnucpro.models.bundle import ModelBundle
from virnucpro.models.esm2 import ESM2, standard_inv_freq
from virnucpro.models.protein_alphabet import encode_proteins
from virnucpro.predict.budget import MIN_GPU_BATCH_TOKENS, batch_tokens_for
from virnucpro.predict.compile import compile_packed_layers, warm_up_frames
from virnucpro.predict.fp8 import check_fp8_device, fp8_linears
from virnucpro.predict.packing import pack_proteins
from virnucpro.predict.precision import Precision
from virnucpro.predict.predictor import FramePredictor

log = logging.getLogger("virnucpro")


@dataclass(frozen=True)
class Placement:
    predictor: FramePredictor
    copy_seconds: float  # ESM-2's weights to the device
    compile_seconds: float | None  # compiling ESM-2 and its warm-up, on the thread beside reading and copying; None: not compiled
    warm_up_seconds: float | None = None  # then the whole predictor's warm-up shard (DNABERT-S, classifier too)


def start_esm(architecture: dict, device: torch.device, precision: Precision, *, compile: bool = False,
              fp8_keep: tuple[str, ...] = ()) -> "EsmOnDevice":
    """ESM-2 built empty on `device` from its architecture alone, and (with `compile`, on the
    packed path) compiled and warmed up on a background thread from now on: call this as soon
    as the checkpoint's shape is known, then read the weights and hand them to place_predictor.
    With fp8, the linear layers but those in `fp8_keep` are fp8 ones (predict/fp8.py)."""
    if precision.fp8:
        check_fp8_device(device)
    dtype, compiles, keep = _settings(precision, compile, fp8_keep)
    return EsmOnDevice(architecture, device, dtype, beside=_compile_and_warm_up_esm if compiles else None,
                       fp8_keep=keep)


def _settings(precision: Precision, compile: bool, fp8_keep: tuple[str, ...]) -> tuple:
    """(dtype, compiled, fp8 layers kept in bf16 or None) of ESM-2's device module for these
    choices: what start_esm builds, and what place_predictor checks a started one against."""
    return precision.esm_dtype, bool(compile and precision.packed), fp8_keep if precision.fp8 else None


def place_predictor(bundle: ModelBundle, device: torch.device, precision: Precision, *,
                    batch_tokens: int | None = None, compile: bool = False,
                    fp8_keep: tuple[str, ...] = (), esm: "EsmOnDevice | None" = None) -> Placement:
    """The bundle's models on `device`, as a ready FramePredictor whose batch budget is sized
    from the memory left once they are resident (unless `batch_tokens` pins it).

    esm: ESM-2's device module from start_esm (with the same precision, compile and fp8_keep),
    begun and compiling while the bundle was read; when None it is started here, so compiling
    still overlaps the copy of the weights. Once compiled, a small warm-up shard runs through
    the whole predictor, so every kernel exists before the first real shard."""
    if esm is None:
        esm = start_esm(bundle.esm.architecture, device, precision, compile=compile, fp8_keep=fp8_keep)
    elif esm.settings != _settings(precision, compile, fp8_keep):
        esm.abandon()
        raise ValueError(f"ESM-2 was started for {esm.settings}, not {_settings(precision, compile, fp8_keep)}")
    copy_seconds = esm.fill(bundle.esm)  # waits for the compile thread too
    # DNABERT-S keeps fp32 weights under autocast; the classifier is tiny, and fp32 keeps its
    # scores comparable to the original's. (After ESM-2's fill: nothing may fail in between.)
    dnabert = bundle.dnabert.to(device=device, dtype=precision.dnabert_dtype).eval()
    classifier = bundle.classifier.to(device=device, dtype=torch.float32).eval()

    def ready(tokens: int) -> FramePredictor:
        return FramePredictor(bundle.tokenizer, dnabert, esm.module, classifier, device, precision, tokens)

    warm_up_seconds = None
    if esm.compile_seconds is not None:
        t0 = time.perf_counter()
        ready(batch_tokens or MIN_GPU_BATCH_TOKENS).predict(warm_up_frames())
        warm_up_seconds = time.perf_counter() - t0
    predictor = ready(batch_tokens or batch_tokens_for(device, esm.module.embed_dim))
    return Placement(predictor, copy_seconds, esm.compile_seconds, warm_up_seconds)


def esm_on_device(esm: ESM2, device: torch.device, dtype: torch.dtype, *,
                  while_copying: Callable[[ESM2], None] | None = None,
                  fp8_keep: tuple[str, ...] | None = None) -> tuple[ESM2, float]:
    """`esm` (any host dtype) as an eval-mode module on `device` in `dtype`, and the seconds
    its weights took to copy (see EsmOnDevice)."""
    placed = EsmOnDevice(esm.architecture, device, dtype, beside=while_copying, fp8_keep=fp8_keep)
    seconds = placed.fill(esm)
    return placed.module, seconds


class EsmOnDevice:
    """ESM-2's module on `device` in `dtype`, built from its architecture before its weights
    exist: `beside(module)` starts at once on a background thread (compiling needs the
    structure, shapes and dtypes only), and `fill` later copies the weights in.

    Until then the rotary buffer holds the standard frequencies and the weights are
    uninitialised memory: a warm-up forward pass computes garbage, which is all compiling
    needs. The copy and the warm-up's kernels queue on the same CUDA stream, so they run in
    the order they were issued, and every forward pass after `fill` sees the real weights.
    fp8_keep: when given, the linear layers (but those it names) become fp8 ones, quantised as
    their weights arrive.
    """

    def __init__(self, architecture: dict, device: torch.device, dtype: torch.dtype, *,
                 beside: Callable[[ESM2], None] | None = None,
                 fp8_keep: tuple[str, ...] | None = None) -> None:
        self.module = _empty_module(architecture, device, dtype)
        self.quantised = ({prefix: new for prefix, _, new in fp8_linears(self.module, fp8_keep)}
                          if fp8_keep is not None else {})
        if fp8_keep is None:  # fp8's linear layers are their own kind
            _use_fused_kernels(self.module, device, dtype)
        self.settings = (dtype, beside is not None, fp8_keep)  # checked by place_predictor
        self.compile_seconds: float | None = None
        self._done = (in_background(lambda: _timed(beside, self.module), "compile-while-loading")
                      if beside else None)

    def abandon(self) -> None:
        """When the weights will never come (reading them failed): let the thread beside
        finish before the caller's error unwinds, so nothing keeps using the device behind
        it; what the thread raised is logged, the caller's error being the news."""
        try:
            self._wait()
        except BaseException as beside:  # noqa: BLE001 - likely a consequence of the same fault
            log.debug("also failed beside: %s: %s", type(beside).__name__, beside)

    def fill(self, source: ESM2) -> float:
        """Copy `source`'s buffers and weights in (each in its stored dtype, cast on the
        device), wait for the thread beside, re-raising what it raised; the copy's seconds."""
        t0 = time.perf_counter()
        try:
            if source.architecture != self.module.architecture:
                raise ValueError(f"ESM-2 weights of {source.architecture} for a module of "
                                 f"{self.module.architecture}")
            device = self.module.embed_tokens.weight.device
            targets = dict(self.module.named_buffers())  # fp8 layers add buffers of their own
            with torch.no_grad():
                for name, src in source.named_buffers():
                    targets[name].copy_(src)
            _copy_parameters(source, self.module, device, self.quantised)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the casts are queued
        except BaseException:
            self.abandon()  # the thread uses the module: let it finish before the error unwinds
            raise
        copy_seconds = time.perf_counter() - t0
        self._wait()
        _check_deferred_biases(self.module)
        return copy_seconds

    def _wait(self) -> None:
        """Wait for the thread beside once (later calls return at once); re-raise its error."""
        done, self._done = self._done, None
        if done is not None:
            self.compile_seconds = done()


def _timed(fn: Callable[[ESM2], None], module: ESM2) -> float:
    """fn(module)'s seconds. Threads switch often meanwhile: compiling is Python from end to end,
    and would otherwise hold up the reading beside it at every torch call (the convoy effect,
    engine/background.py)."""
    t0 = time.perf_counter()
    with quick_thread_switching():
        fn(module)
    return time.perf_counter() - t0


def _compile_and_warm_up_esm(esm: ESM2) -> None:
    """Compile the packed layers and run them on a few proteins of different lengths, once
    all together and once without the longest (so both attention kernels run,
    models/packed_attention.py): every kernel of the packed path then exists, for any batch."""
    compile_packed_layers(esm)
    proteins = sorted((f.aa for f in warm_up_frames()), key=len)
    for batch in (proteins, proteins[:-1]):
        packed = pack_proteins(*encode_proteins(batch))
        with torch.inference_mode():  # as FramePredictor.run calls it: the same compiled graph
            esm.pooled_packed(packed.to(esm.embed_tokens.weight.device))


# GPU generations (compute capability major) on which the fused kernels were measured: H100
# and H200. Elsewhere ESM-2 keeps PyTorch's own kernels.
FUSED_GENERATIONS = (9,)
# ESM-2's fused GPU kernels, by name (VIRNUCPRO_FUSED_KERNELS picks: "0" for none, "1" for
# these, or a comma-separated list of names): the rotation and attention of the packed path in
# one kernel (models/rotary_attention.py); fc1 and its GELU as one cuBLASLt GEMM with the GELU
# in the epilogue (models/linear_gelu.py); out_proj's and fc2's products added into the
# residual stream by their GEMMs (models/residual_gemm.py), with the LayerNorms as a kernel of
# their own (models/layer_norm.py), where the weights' biases allow it (_check_deferred_biases).
FUSED_KERNELS = ("rotary_attention", "gelu_in_gemm", "residual_in_gemm")
# Known, not on by default in bf16: the exact erf GELU as a kernel of its own after fc1
# (models/gelu.py), the path before gelu_in_gemm. The two are alternatives: the one named
# replaces the other in the default set ("1,gelu"); naming both is an error.
OPTIONAL_KERNELS = ("gelu",)
GELU_CHOICES = ("gelu", "gelu_in_gemm")
# fp16's default set keeps the erf kernel. fp16 rounds 8x finer than bf16, so the epilogue's
# tanh form no longer hides under the rounding it saves: measured on an H200, the worst ESM-2
# cosine to fp32 went from 0.99999987 to 0.99999985 with it (bf16: unchanged or better), and
# whoever picks fp16 picks it for its precision (benchmarks/RESULTS.md, issue 15, eleventh session).
FP16_FUSED_KERNELS = ("rotary_attention", "gelu", "residual_in_gemm")


def fused_kernels(device: torch.device, dtype: torch.dtype) -> tuple[str, ...]:
    """The fused kernels ESM-2 runs on `device` in `dtype`: on a CUDA GPU of a generation
    they were measured on, in half precision, those the user has not turned off. A frame's
    numbers then depend only on the GPU's generation, never on the number of GPUs."""
    if not (device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
            and torch.cuda.get_device_capability(device)[0] in FUSED_GENERATIONS):
        return ()
    default = FP16_FUSED_KERNELS if dtype == torch.float16 else FUSED_KERNELS
    chosen = os.environ.get("VIRNUCPRO_FUSED_KERNELS", "1").strip()
    if chosen in ("0", ""):
        return ()
    names = tuple(dict.fromkeys(name.strip() for name in chosen.split(",")))
    if unknown := set(names) - set(FUSED_KERNELS) - set(OPTIONAL_KERNELS) - {"1"}:
        raise ValueError(f"VIRNUCPRO_FUSED_KERNELS: unknown kernel(s) {sorted(unknown)}; "
                         f"known: {', '.join(FUSED_KERNELS + OPTIONAL_KERNELS)}, 1 for the default set, or 0 for none")
    if set(GELU_CHOICES) <= set(names):
        raise ValueError("VIRNUCPRO_FUSED_KERNELS: gelu and gelu_in_gemm are two ways to compute the same "
                         "GELU; name one")
    if "1" not in names:
        return names
    # the default set, with any others named beside it; a GELU named replaces the default's
    named_gelu = set(GELU_CHOICES) & set(names)
    kept = tuple(name for name in default if not (named_gelu and name in GELU_CHOICES))
    return tuple(dict.fromkeys(kept + tuple(name for name in names if name != "1")))


def _use_fused_kernels(esm: ESM2, device: torch.device, dtype: torch.dtype) -> None:
    """Turn ESM-2's fused kernels on where they apply: the attention kernel takes heads of a
    power of two of at least 32 elements (ESM-2 3B's are 64)."""
    chosen = fused_kernels(device, dtype)
    for layer in esm.layers:
        head = layer.self_attn.head_dim
        layer.self_attn.fused_rotary_attention = ("rotary_attention" in chosen and head >= 32
                                                  and head & (head - 1) == 0)
        layer.fused_gelu = "gelu" in chosen
        layer.gelu_in_gemm = "gelu_in_gemm" in chosen
    esm.residual_in_gemm = "residual_in_gemm" in chosen


# The residual-in-GEMM path may add at most this much, relative, to the stream's rounding
# error bound (ESM2.deferred_bias_ratio); above it the model runs the plain path. The random
# weights of the benchmarks give ~0.20 (their worst cosine to fp32 0.999969 -> 0.999966); in a
# CPU experiment with cancelling biases (tests/test_residual_gemm.py) the error grew 1.27x at
# a ratio of 1.5 and 2.2x at 5.
DEFERRED_BIAS_LIMIT = 0.25


def _check_deferred_biases(esm: ESM2) -> None:
    """With the real weights in: keep the residual-in-GEMM path only where the biases it holds
    apart are small beside the embeddings (checked once; the plain path compiles at its first
    batch if the warm-up compiled the other)."""
    if not esm.residual_in_gemm:
        return
    ratio = esm.deferred_bias_ratio()
    if ratio > DEFERRED_BIAS_LIMIT:
        esm.residual_in_gemm = False
        log.info("ESM-2 runs its residual adds apart from the GEMMs: its biases are %.2f of its "
                 "embeddings' scale (the in-GEMM path is kept up to %.2f)", ratio, DEFERRED_BIAS_LIMIT)


def _empty_module(architecture: dict, device: torch.device, dtype: torch.dtype) -> ESM2:
    """The architecture on `device`, parameters in `dtype`, values uninitialised but for the
    rotary frequencies (the standard ones until the checkpoint's are copied in)."""
    with torch.device("meta"):
        target = ESM2(**architecture)
    target = target.to(dtype=dtype).to_empty(device=device)  # int32 rotary bits stay int32
    with torch.no_grad():
        head_dim = target.embed_dim // target.attention_heads
        target.rotary.inv_freq_bits.copy_(standard_inv_freq(head_dim).view(torch.int32))
    return target.eval().requires_grad_(False)


@torch.no_grad()
def _copy_parameters(source: ESM2, target: ESM2, device: torch.device, quantised: dict) -> None:
    """Each parameter moved in its stored dtype, then cast where it lives; those of layers
    turned fp8 (`quantised`: parameter prefix -> Fp8Linear) are quantised there instead."""
    targets = dict(target.named_parameters())
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, src in source.named_parameters():
        prefix, _, kind = name.rpartition(".")
        if prefix in quantised:
            pending.setdefault(prefix, {})[kind] = src.to(device)
            if len(pending[prefix]) == 2:  # weight and bias are both here
                parts = pending.pop(prefix)
                quantised[prefix].load(parts["weight"], parts["bias"])
        else:
            targets.pop(name).copy_(src.to(device))
    assert not pending and not targets, (sorted(pending), sorted(targets))
