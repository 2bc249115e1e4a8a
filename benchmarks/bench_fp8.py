"""--precision fp8 against bf16 and fp32 on one GPU, full-size ESM-2 3B with random weights,
on frames cut from real genomes: speed side by side and fidelity gates, also for weights with
outlier activation channels (as trained protein language models have).

    python benchmarks/bench_fp8.py --out bench_fp8.json                  # the gates (20k frames)
    python benchmarks/bench_fp8.py --out q.json --reads-frames 3000 --contigs-frames 1000 --stress-frames 1000
    python benchmarks/bench_fp8.py --out s.json --stress-only --variants fp8,fp8_keep_out_fc2  # outliers

Reports, in one process:
  - the matrix-rate probes: dense bf16 and row-scaled fp8 products of 8192^3 (TFLOP/s);
  - per workload (reads: 150 bp reads at -m 300; contigs at -m 500) the ESM-2 tokens/s of the
    compiled packed path in bf16, fp16 and fp8 (and fp8 variants: fast accumulation, some layers kept in bf16), and
    their ratio; the whole predictor's frames/s in each;
  - fidelity against the fp32 path (and against bf16): per-frame cosine of the ESM-2
    embedding (median, min) and |score difference| (p99, max), with the issue's gates
    (median cosine >= 0.999, min >= 0.99, p99 |score diff| < 0.01);
  - the same gates for a stress variant whose weights give every linear layer's input a few
    channels 20-100x the rest, with the function kept (see with_outliers).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine  # noqa: E402

from virnucpro.models.dna_tokenizer import DnaTokenizer  # noqa: E402
from virnucpro.predict import fp8 as fp8_module  # noqa: E402
from virnucpro.predict.fp8 import FP8, FP8_MAX  # noqa: E402
from virnucpro.predict.placement import place_predictor  # noqa: E402
from virnucpro.predict.precision import Precision  # noqa: E402

GATES = {"cosine_median": 0.999, "cosine_min": 0.99, "score_diff_p99": 0.01}
# name -> (layers kept in bf16, fast accumulation)
FP8_VARIANTS = {"fp8": ((), False), "fp8_fast_accum": ((), True), "fp8_keep_fc2": (("fc2",), False),
                "fp8_keep_out_fc2": (("out_proj", "fc2"), False), "fp8_ffn_only": (("qkv_proj", "out_proj"), False)}
OUTLIER_CHANNELS = 6


def fp8_matmul_rate() -> float:
    """Row-scaled e4m3 products of 8192^3 (TFLOP/s, median of 10), as the fp8 path runs them."""
    a = torch.randn(8192, 8192, device="cuda").to(FP8)
    b = torch.randn(8192, 8192, device="cuda").to(FP8)
    sa = torch.ones(8192, 1, device="cuda")
    sb = torch.ones(1, 8192, device="cuda")
    run = lambda: torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)  # noqa: E731
    for _ in range(3):
        run()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192**3 / float(np.median(times)) / 1e12


def with_outliers(bundle, seed: int = 7):
    """A copy of the model in which every linear layer reads activations with a few channels
    20-100x the rest (as trained protein language models have), computing nearly the same
    function: the four inputs are rescaled and the weights that read them divided back.

      - qkv_proj and fc1 inputs: LayerNorm gain and bias of 6 channels times f, the columns
        that read them divided by f (exact: the products are unchanged);
      - out_proj input: 6 rows of v (and their biases) times f, out_proj's columns divided by f
        (exact: attention averages v, so the scale passes through);
      - fc2 input: 6 rows of fc1 times f, fc2's columns divided by f (gelu(f z) / f is not
        gelu(z), so this one changes the function a little, staying well conditioned).

    Scaling the gains alone (without dividing back) blows up the attention logits, and then
    even bf16 drifts far from fp32: a test of conditioning, not of fp8."""
    stressed = copy.copy(bundle)
    stressed.esm = copy.deepcopy(bundle.esm)
    gen = torch.Generator().manual_seed(seed)
    dim = stressed.esm.embed_dim

    def pick(width: int) -> tuple[torch.Tensor, torch.Tensor]:
        factors = 20 + 80 * torch.rand(OUTLIER_CHANNELS, generator=gen)
        return torch.randperm(width, generator=gen)[:OUTLIER_CHANNELS], factors

    with torch.no_grad():
        for layer in stressed.esm.layers:
            attn, device = layer.self_attn, layer.fc1.weight.device
            for norm, reader in ((layer.self_attn_layer_norm, attn.qkv_proj), (layer.final_layer_norm, layer.fc1)):
                ch, f = (t.to(device) for t in pick(dim))
                norm.weight[ch] *= f
                norm.bias[ch] *= f
                reader.weight[:, ch] /= f
            ch, f = (t.to(device) for t in pick(dim))
            attn.qkv_proj.weight[2 * dim + ch] *= f[:, None]  # v rows
            attn.qkv_proj.bias[2 * dim + ch] *= f
            attn.out_proj.weight[:, ch] /= f
            ch, f = (t.to(device) for t in pick(4 * dim))
            layer.fc1.weight[ch] *= f[:, None]
            layer.fc1.bias[ch] *= f
            layer.fc2.weight[:, ch] /= f
            for p in layer.parameters():
                p.copy_(p.half().float())  # stored as the released files are: fp16
    return stressed


def predictor(bundle, name: str, variant=((), False)):
    """A placed predictor, as `virnucpro predict` builds it (compiled beside the copy)."""
    device = torch.device("cuda", 0)
    keep, fp8_module.FAST_ACCUM = variant
    if name == "fp32":
        precision = Precision.resolve("fp32", device)
        return place_predictor(bundle, device, precision).predictor
    precision = Precision.resolve("fp8" if name.startswith("fp8") else name, device)
    return place_predictor(bundle, device, precision, compile=True, fp8_keep=keep).predictor


def embed(pred, frames, timing: bool = True) -> tuple[float, torch.Tensor, np.ndarray]:
    """ESM-2 seconds (timed after a warm-up pass) and embeddings; the whole predictor's
    scores. Without `timing` one pass only (the slow fp32 reference)."""
    if timing:
        seconds, emb = bench_engine.esm_stage(pred, frames)
    else:
        seconds, emb = 0.0, None
    result = pred.predict(frames, keep_embeddings=True)
    emb = torch.from_numpy(result.protein_embeddings) if emb is None else emb.float().cpu()
    return seconds, emb, result.score2


def gates(emb: torch.Tensor, ref: torch.Tensor, scores: np.ndarray, ref_scores: np.ndarray) -> dict:
    cos = torch.nn.functional.cosine_similarity(emb.double(), ref.double(), dim=1)
    diff = np.abs(scores.astype(np.float64) - ref_scores.astype(np.float64))
    out = {"frames": len(diff), "cosine_median": float(cos.median()), "cosine_min": float(cos.min()),
           "score_diff_p99": float(np.quantile(diff, 0.99)), "score_diff_max": float(diff.max())}
    out["passes"] = (out["cosine_median"] >= GATES["cosine_median"] and out["cosine_min"] >= GATES["cosine_min"]
                     and out["score_diff_p99"] < GATES["score_diff_p99"])
    return out


def workload(bundle, frames, reference_frames: int, label: str) -> dict:
    tokens = sum(len(f.aa) + 2 for f in frames)
    out: dict = {"frames": len(frames), "esm_tokens": tokens}
    subset = frames[:reference_frames]
    _, ref_emb, ref_scores = embed(predictor(bundle, "fp32"), subset, timing=False)
    torch.cuda.empty_cache()
    runs = {}
    for name, variant in [("bf16", ((), False)), ("fp16", ((), False)), *FP8_VARIANTS.items()]:
        pred = predictor(bundle, name, variant)
        seconds, emb, scores = embed(pred, frames)
        whole = bench_engine.whole_predict(pred, frames, 4000)
        runs[name] = {"esm_tokens_per_s": round(tokens / seconds), "esm_seconds": round(seconds, 3),
                      "whole_frames_per_s": round(len(frames) / whole, 1),
                      "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                      "vs_fp32": gates(emb[: len(subset)], ref_emb, scores[: len(subset)], ref_scores)}
        runs[name]["_emb"], runs[name]["_scores"] = emb, scores
        del pred
        torch.cuda.empty_cache()
        print(label, name, {k: v for k, v in runs[name].items() if not k.startswith("_")}, flush=True)
    for name in ["fp16", *FP8_VARIANTS]:
        runs[name]["speedup_esm_vs_bf16"] = round(runs[name]["esm_tokens_per_s"] / runs["bf16"]["esm_tokens_per_s"], 3)
        runs[name]["speedup_whole_vs_bf16"] = round(runs[name]["whole_frames_per_s"] / runs["bf16"]["whole_frames_per_s"], 3)
        runs[name]["vs_bf16"] = gates(runs[name]["_emb"], runs["bf16"]["_emb"], runs[name]["_scores"], runs["bf16"]["_scores"])
    out["runs"] = {n: {k: v for k, v in r.items() if not k.startswith("_")} for n, r in runs.items()}
    return out


def stress(bundle, frames) -> dict:
    """The gates on weights with outlier channels (fidelity only: the speed is the same)."""
    stressed = with_outliers(bundle)
    _, ref_emb, ref_scores = embed(predictor(stressed, "fp32"), frames, timing=False)
    torch.cuda.empty_cache()
    out = {}
    for name, variant in [("bf16", ((), False)), *FP8_VARIANTS.items()]:
        _, emb, scores = embed(predictor(stressed, name, variant), frames, timing=False)
        out[name] = gates(emb, ref_emb, scores, ref_scores)
        torch.cuda.empty_cache()
        print("stress", name, out[name], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reads-frames", type=int, default=14_000)
    ap.add_argument("--contigs-frames", type=int, default=6_000)
    ap.add_argument("--stress-frames", type=int, default=4_000)
    ap.add_argument("--variants", default=",".join(FP8_VARIANTS), help="fp8 variants to run")
    ap.add_argument("--stress-only", action="store_true", help="only the outlier-channel gates")
    args = ap.parse_args()
    for name in set(FP8_VARIANTS) - set(args.variants.split(",")):
        del FP8_VARIANTS[name]
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0), "gates": GATES, "fp8_max": FP8_MAX}
    report["bf16_matmul_tflops"] = round(bench_engine.matmul_rate(), 1)
    report["fp8_matmul_tflops"] = round(fp8_matmul_rate(), 1)
    fp8_module.check_fp8_device(torch.device("cuda", 0))  # also probes whether rows need padding
    report["fp8_rows_need_padding"] = fp8_module.ROW_MULTIPLE > 1
    print("matmul", report["bf16_matmul_tflops"], report["fp8_matmul_tflops"], flush=True)
    bundle = bench_engine.full_size_bundle(DnaTokenizer.from_file(bench_engine.TOKENIZER))
    with tempfile.TemporaryDirectory() as tmp:
        reads = bench_engine.frames_of("reads", args.reads_frames * 110, Path(tmp))[: args.reads_frames]
        contigs = bench_engine.frames_of("contigs", args.contigs_frames * 1100, Path(tmp))[: args.contigs_frames]
    for label, frames in (("reads", reads), ("contigs", contigs)):
        if args.stress_only:
            break
        report[label] = workload(bundle, frames, len(frames), label)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    mixed = reads[: args.stress_frames // 2] + contigs[: args.stress_frames - args.stress_frames // 2]
    if mixed:
        report["stress_outlier_channels"] = stress(bundle, mixed)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
