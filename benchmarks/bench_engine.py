"""One GPU at full size: ESM-2 3B and DNABERT-S with random weights (same FLOPs as the real
models), on frames cut from real genomes, fast path and reference path side by side.

    python benchmarks/bench_engine.py --out benchmarks/bench_engine.json

Workloads (from ../shared/data/genomes; --genomes to point elsewhere):
  reads  150 bp reads, both strands, chunk length 300 (~49-aa proteins)
  contigs 150 bp .. 20 kb pieces, chunk length 500 (~166-aa proteins)

Reports per stage tokens/s and frames/s, the share of the bf16 matmul rate measured in the
same run (a burst of ten 8192^3 products, and the same product sustained for 3 s), peak
memory, GPU busy % (NVML), the reference path's frames/s on the same frames and the ratio,
and fidelity of each fast precision against the fp32 reference, frame by frame.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_stages  # noqa: E402  (workload writers shared with the CPU benchmark)

from virnucpro.models import demo  # noqa: E402
from virnucpro.models.bundle import ModelBundle  # noqa: E402
from virnucpro.models.classifier import MLPClassifier  # noqa: E402
from virnucpro.models.dna_tokenizer import DnaTokenizer  # noqa: E402
from virnucpro.models.dnabert_s import DNABertS  # noqa: E402
from virnucpro.models.esm2 import ESM2  # noqa: E402
from virnucpro.predict.placement import place_predictor  # noqa: E402
from virnucpro.predict.precision import Precision  # noqa: E402
from virnucpro.predict.predictor import FramePredictor  # noqa: E402
from virnucpro.stages.chunk import iter_chunks  # noqa: E402
from virnucpro.stages.read import read_records  # noqa: E402
from virnucpro.stages.translate import select_frames  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO.parent / "shared" / "models" / "dnabert-s_tokenizer.json"
# name -> (dtype, torch.compile: False | True | a compile mode)
VARIANTS = {
    "bf16_packed_eager": (torch.bfloat16, False),
    "fp16_packed_eager": (torch.float16, False),
    "bf16_packed_compiled": (torch.bfloat16, True),
    "fp16_packed_compiled": (torch.float16, True),
}
ESM_3B = dict(num_layers=36, embed_dim=2560, attention_heads=40)
DNABERT_S = dict(vocab_size=4096, hidden=768, layers=12, heads=12, intermediate=3072)


# ---------------------------------------------------------------- models and workloads
def randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights with unit-variance outputs (as trained networks roughly have), norms near 1."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(0.02 * noise)
            elif "embed" in name:
                p.copy_(noise)
            else:
                p.copy_(noise * p.shape[1] ** -0.5)
    return module


def full_size_bundle(tokenizer: DnaTokenizer, seed: int = 0) -> ModelBundle:
    with torch.device("cuda"):
        esm = randomise(ESM2(**ESM_3B), seed)
        dnabert = randomise(DNABertS(**DNABERT_S), seed + 1)
        clf = randomise(MLPClassifier(768 + 2560, 512, 2), seed + 2)
    # The released weights are fp16: round the random ones the same way.
    with torch.no_grad():
        for p in esm.parameters():
            p.copy_(p.half().float())
    return ModelBundle(esm.eval(), dnabert.eval(), tokenizer, clf.eval())


BASES_WRITTEN: dict[str, int] = {}  # workload kind -> bases of its last written FASTA


def frames_of(kind: str, bases: int, work: Path) -> list:
    path = work / f"{kind}.fa"
    BASES_WRITTEN[kind] = bench_stages.write_workload(path, "reads150" if kind == "reads" else "contigs", bases)
    chunk_len = 300 if kind == "reads" else 500
    chunks = list(iter_chunks(read_records(path), chunk_len, on_empty=lambda _id: None))
    return select_frames(chunks)


# ---------------------------------------------------------------- measurement helpers
class BusySampler:
    """NVML utilisation samples every 50 ms while active (mean = GPU busy %)."""

    def __init__(self, index: int = 0) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception:  # noqa: BLE001 - no NVML: busy % is simply not reported
            self._nvml = None

    def __enter__(self) -> "BusySampler":
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._nvml is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def mean_ms(fn, repeats: int) -> float:
    """GPU milliseconds (CUDA events) of one call of fn, the mean of `repeats` calls launched
    back to back (the caller warms fn up first)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def timed(fn, warmup: int = 1) -> tuple[float, object]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, out


PROBE_SIZE = 8192  # the matrix-rate probe: products of two random bf16 PROBE_SIZE^2 matrices
PROBE_FLOPS = 2 * PROBE_SIZE**3


def _probe_operands() -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's two matrices, their product run three times to warm up."""
    a, b = (torch.randn(PROBE_SIZE, PROBE_SIZE, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    return a, b


def _products_seconds(a: torch.Tensor, b: torch.Tensor, n: int) -> float:
    """GPU seconds (CUDA events) of n products a @ b launched back to back."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3


def matmul_rate() -> float:
    """Measured dense bf16 matmul TFLOP/s (8192^3, random data, median of 10)."""
    a, b = _probe_operands()
    times = [_products_seconds(a, b, 1) for _ in range(10)]
    return PROBE_FLOPS / float(np.median(times)) / 1e12


def matmul_rate_sustained(seconds: float = 3.0) -> float:
    """The same matmul back to back for about `seconds` (as long as an ESM-2 measurement
    runs), TFLOP/s over the last two thirds: the clocks a sustained load gets under the GPU's
    power limit. matmul_rate's ten products take ~15 ms and catch whatever clocks the GPU has
    at that moment: on an H200 two such probes in one call read 761 and 797 TFLOP/s."""
    a, b = _probe_operands()
    n = max(30, int(seconds / (_products_seconds(a, b, 20) / 20)))
    _products_seconds(a, b, n // 3)  # the first third: the clocks settle
    return PROBE_FLOPS * (n - n // 3) / _products_seconds(a, b, n - n // 3) / 1e12


def esm_flops(proteins: list[str]) -> float:
    """Forward FLOPs: 24 D^2 per token per layer in GEMMs + 4 T D for attention."""
    layers, dim = ESM_3B["num_layers"], ESM_3B["embed_dim"]
    total = 0.0
    for p in proteins:
        t = len(p) + 2
        total += t * layers * (24 * dim * dim + 4 * t * dim)
    return total


def esm_stage(predictor: FramePredictor, frames: list) -> tuple[float, torch.Tensor]:
    prepared = predictor.prepare(frames)
    with torch.inference_mode():
        return timed(lambda: predictor._pool_all(predictor._pool_protein, prepared.protein, prepared.count)[0])


def dna_stage(predictor: FramePredictor, frames: list) -> tuple[float, torch.Tensor]:
    prepared = predictor.prepare(frames)
    with torch.inference_mode():
        return timed(lambda: predictor._pool_all(predictor._pool_dna, prepared.dna, prepared.count)[0])


def whole_predict(predictor: FramePredictor, frames: list, shard: int) -> float:
    """Prepare + run per shard (host work included, no overlap), as the in-process worker."""
    shards = [frames[i : i + shard] for i in range(0, len(frames), shard)]
    predictor.predict(shards[0][:64])  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in shards:
        predictor.predict(s)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


KERNEL_KINDS = (  # (kind, substrings of CUDA kernel names), first match wins
    ("attention", ("fmha", "flash", "attention", "attn")),
    ("gemm", ("nvjet", "gemm", "xmma", "cutlass", "sm90_", "cublas")),
    ("layer_norm", ("layer_norm",)),
    ("gelu", ("gelu",)),
    ("rotary", ("cat_mul_neg", "rotary")),
)


def profile_one_batch(predictor: FramePredictor, frames: list) -> dict:
    """CUDA kernels of one full ESM-2 batch, by kind (GEMM, attention, LayerNorm, GELU, rotary,
    other) and the top ones by name: where the time goes besides the GEMMs."""
    from torch.profiler import ProfilerActivity, profile

    prepared = predictor.prepare(frames)
    _rows, batch = prepared.protein.batches[0]
    with torch.inference_mode():
        predictor._pool_protein(batch)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            predictor._pool_protein(batch)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70), flush=True)
    kernels: dict[str, float] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name] = kernels.get(event.name, 0.0) + event.device_time_total / 1e3  # ms
    total = sum(kernels.values())
    kinds: dict[str, float] = {}
    for name, ms in kernels.items():
        kind = next((k for k, keys in KERNEL_KINDS if any(key in name.lower() for key in keys)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + ms
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:15]
    return {"batch_tokens": int(batch.tokens.shape[0]), "cuda_ms": round(total, 2),
            "share_by_kind": {k: round(v / total, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top_kernels_ms": {name[:90]: round(ms, 3) for name, ms in top}}


def fidelity(fast: torch.Tensor, ref: torch.Tensor) -> dict:
    cos = torch.nn.functional.cosine_similarity(fast.double(), ref.double(), dim=1)
    rel = (fast.double() - ref.double()).norm(dim=1) / ref.double().norm(dim=1)
    worst = int(cos.argmin())
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "rel_err_max": float(rel.max()), "worst_frame_index": worst}


# ---------------------------------------------------------------- the run
def bench_workload(kind: str, frames: list, bundle: ModelBundle, args, rate: float, sustained: float) -> dict:
    dev = torch.device("cuda", 0)
    proteins = [f.aa for f in frames]
    tokens = sum(len(p) + 2 for p in proteins)
    flops = esm_flops(proteins)
    out: dict = {"frames": len(frames), "esm_tokens": tokens,
                 "mean_protein_len": round(float(np.mean([len(p) for p in proteins])), 1)}

    def share(seconds: float, of: float = rate) -> float:
        return round(flops / seconds / 1e12 / of, 3)

    variants = {}
    budgets = [int(b) if b else None for b in args.batch_tokens.split(",")]  # None: the device's own
    kernel_sets = args.fused_kernels.split(";") if args.fused_kernels else [None]  # None: as the env says
    settings = list(itertools.product(budgets, kernel_sets))
    for base_name, (repeat, (budget, kernels)) in itertools.product(args.variants.split(","), enumerate(settings)):
        name = base_name
        if len(budgets) > 1:
            name += f"@{budget or 'auto'}"
        if kernels is not None and len(kernel_sets) > 1:
            name += f"[{kernels}]"
        if len(settings) > 1:
            name += f"#{repeat}"
        if kernels is not None:
            os.environ["VIRNUCPRO_FUSED_KERNELS"] = kernels  # read where the model is placed
        dtype, compile_ = VARIANTS[base_name]
        b = copy.copy(bundle)
        b.esm, b.dnabert = copy.deepcopy(bundle.esm), copy.deepcopy(bundle.dnabert)
        torch.cuda.reset_peak_memory_stats()
        t_build = time.perf_counter()
        precision = Precision(dtype, dnabert_autocast=dtype != torch.float32, packed=dtype != torch.float32,
                              reference=False)
        predictor = place_predictor(b, dev, precision, batch_tokens=budget, compile=compile_).predictor
        if compile_:
            predictor.predict(frames[:256])  # compile outside the timed region
        build = time.perf_counter() - t_build
        with BusySampler() as busy:
            seconds, emb = esm_stage(predictor, frames)
        variants[name] = {
            "esm_seconds": round(seconds, 3), "esm_tokens_per_s": round(tokens / seconds),
            "esm_frames_per_s": round(len(frames) / seconds, 1), "matmul_share": share(seconds),
            "matmul_share_sustained": share(seconds, sustained),
            "batch_tokens": predictor.batch_tokens, "busy_pct": busy.mean,
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "setup_seconds": round(build, 1),
        }
        variants[name]["_emb"] = emb
        variants[name]["_predictor"] = predictor
        print(kind, name, {k: v for k, v in variants[name].items() if not k.startswith("_")}, flush=True)

    # DNABERT-S alone (bf16 batched) and the whole predictor (both models + classifier).
    best_name = max((n for n in variants), key=lambda n: variants[n]["esm_tokens_per_s"])
    best = variants[best_name]["_predictor"]
    if args.profile:
        out["kernel_profile"] = profile_one_batch(best, frames)
        out["kernel_profile"]["variant"] = best_name
        first_name = next(iter(variants))
        if first_name != best_name:  # the first variant too: the before of a before/after run
            out["kernel_profile_first_variant"] = profile_one_batch(variants[first_name]["_predictor"], frames)
            out["kernel_profile_first_variant"]["variant"] = first_name
    dna_seconds, dna_emb = dna_stage(best, frames)
    out["dnabert_bf16_frames_per_s"] = round(len(frames) / dna_seconds, 1)
    with BusySampler() as busy:
        whole = whole_predict(best, frames, args.shard_frames)
    out["whole_predict"] = {"variant": best_name, "frames_per_s": round(len(frames) / whole, 1),
                            "vs_esm_only": round((len(frames) / whole) / variants[best_name]["esm_frames_per_s"], 3),
                            "busy_pct": busy.mean}
    print(kind, "whole", out["whole_predict"], flush=True)

    # Reference path on a subset (it is slow): the original algorithm, fp32.
    subset = frames[: args.reference_frames]
    ref_bundle = copy.copy(bundle)
    ref_pred = place_predictor(ref_bundle, dev, Precision.resolve("fp32", dev, reference=True)).predictor
    ref_esm_s, ref_esm = esm_stage(ref_pred, subset)
    ref_dna_s, ref_dna = dna_stage(ref_pred, subset)
    ref_fps = len(subset) / (ref_esm_s + ref_dna_s)
    out["reference"] = {"frames": len(subset), "esm_tokens_per_s": round(sum(len(p) + 2 for p in proteins[: len(subset)]) / ref_esm_s),
                        "dnabert_frames_per_s": round(len(subset) / ref_dna_s, 1),
                        "frames_per_s": round(ref_fps, 2),
                        "speedup_whole_predict": round((len(frames) / whole) / ref_fps, 1)}
    print(kind, "reference", out["reference"], flush=True)

    # Fidelity on the subset: each fast variant against the fp32 reference embeddings.
    fid = {}
    n = len(subset)
    with torch.no_grad():
        ref_probs = torch.softmax(ref_pred.classifier(torch.cat([ref_dna, ref_esm], 1)), 1)
        # A random classifier puts many frames near p = 0.5, where any rounding flips the call;
        # report how many, and the agreement on the others too.
        decided = (ref_probs[:, 1] - 0.5).abs() > 0.05
        fid["classifier_frames_within_0.05_of_0.5"] = int((~decided).sum())
        for name, v in variants.items():
            fid[f"esm_{name}"] = fidelity(v["_emb"][:n], ref_esm)
            fast_dna = dna_stage(v["_predictor"], subset)[1]
            fid[f"dnabert_{name}"] = fidelity(fast_dna, ref_dna)
            probs = torch.softmax(ref_pred.classifier(torch.cat([fast_dna, v["_emb"][:n]], 1)), 1)
            same = probs.argmax(1) == ref_probs.argmax(1)
            fid[f"labels_{name}"] = {"agreement": float(same.float().mean()),
                                     "agreement_outside_0.05_of_0.5": float(same[decided].float().mean()),
                                     "max_abs_prob_diff": float((probs - ref_probs).abs().max())}
    out["fidelity_vs_fp32_reference"] = fid
    print(kind, "fidelity", json.dumps(fid), flush=True)
    for v in variants.values():
        v.pop("_emb"), v.pop("_predictor")
    out["esm_variants"] = variants
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "bench_engine.json")
    parser.add_argument("--reads-bases", type=int, default=600_000)
    parser.add_argument("--contigs-bases", type=int, default=1_500_000)
    parser.add_argument("--reference-frames", type=int, default=1000)
    parser.add_argument("--shard-frames", type=int, default=4000)
    parser.add_argument("--variants", default="bf16_packed_eager,fp16_packed_eager,bf16_packed_compiled,fp16_packed_compiled",
                        help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--profile", action="store_true", help="print the top kernels of one batch")
    parser.add_argument("--batch-tokens", default="",
                        help="comma list of ESM-2 token budgets per batch, each variant built and timed with each "
                        "in turn (repeat a value to alternate: 65536,67584,65536,67584); default the device's own")
    parser.add_argument("--fused-kernels", default="",
                        help="semicolon list of VIRNUCPRO_FUSED_KERNELS values, each variant built and timed with "
                        "each in turn (1;1,gelu_in_gemm;1;1,gelu_in_gemm alternates); default the environment's")
    parser.add_argument("--only", choices=("reads", "contigs"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_engine needs a CUDA GPU")
    tokenizer = DnaTokenizer.from_file(TOKENIZER) if TOKENIZER.is_file() else demo.demo_tokenizer()
    rate, sustained = matmul_rate(), matmul_rate_sustained()
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "matmul_bf16_tflops": round(rate, 1), "matmul_bf16_tflops_sustained": round(sustained, 1),
              "tokenizer": str(TOKENIZER.name if TOKENIZER.is_file() else "demo")}
    print(result, flush=True)
    bundle = full_size_bundle(tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        for kind, bases in (("reads", args.reads_bases), ("contigs", args.contigs_bases)):
            if args.only and kind != args.only:
                continue
            frames = frames_of(kind, bases, Path(tmp))
            result[kind] = bench_workload(kind, frames, bundle, args, rate, sustained)
            whole = result[kind]["whole_predict"]
            whole["bases"] = BASES_WRITTEN[kind]  # Gbp of input per GPU-hour, as a user sizes a job
            whole["gbp_per_gpu_hour"] = round(whole["bases"] / (len(frames) / whole["frames_per_s"]) * 3600 / 1e9, 3)
            args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
