"""The fast path's building blocks against the plain one, in fp32 on the CPU:
packing (padding-free batches) and out-of-memory splitting must not change any number
beyond fp32 rounding. GPU kernels are checked by the gpu-marked
tests at the end, run on the device (flash and memory-efficient varlen in bf16/fp16)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from esm_factory import make_fair_esm_model

from virnucpro.models import demo
from virnucpro.models.bundle import ModelBundle
from virnucpro.models.esm2_loader import load_esm2
from virnucpro.models.formats import save_fair_esm_checkpoint
from virnucpro.models.protein_alphabet import MASK, encode_proteins
from virnucpro.predict.compile import PACKED_METHODS, compile_packed_layers, uncompile_packed_layers, warm_up_frames
from virnucpro.predict.packing import pack_proteins
from virnucpro.predict.placement import place_predictor
from virnucpro.predict.precision import Precision
from virnucpro.predict.predictor import FramePredictor
from virnucpro.stages.types import Frame

AMINO = "LAGVSERTIDPKQNFYMHWC"


def relative_errors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).norm(dim=1) / b.norm(dim=1)


def random_proteins(n: int, seed: int, longest: int = 300) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(AMINO) for _ in range(rng.randint(1, longest))) for _ in range(n)]


@pytest.fixture(scope="module")
def esm(tmp_path_factory):
    path = save_fair_esm_checkpoint(make_fair_esm_model(2, 64, 4, seed=5),
                                    tmp_path_factory.mktemp("esm") / "esm.pt")
    return load_esm2(path)


def test_packed_equals_one_by_one(esm):
    proteins = random_proteins(30, seed=1) + ["M" * 1100]  # one past the 1024-residue pooling cap
    tokens, lengths = encode_proteins(proteins)
    with torch.no_grad():
        packed = esm.pooled_packed(pack_proteins(tokens, lengths))
        single = torch.cat([esm.pooled(*encode_proteins([p])) for p in proteins])
    # Same fp32 arithmetic per protein, only summation order inside kernels differs: ~1e-7.
    assert relative_errors(packed, single).max() < 1e-5


def test_packed_token_dropout_with_masks(esm):
    proteins = random_proteins(6, seed=2, longest=80)
    tokens, lengths = encode_proteins(proteins)
    tokens[0, 3] = MASK
    tokens[2, 1:4] = MASK
    with torch.no_grad():
        packed = esm.pooled_packed(pack_proteins(tokens, lengths))
        padded = esm.pooled(tokens, lengths)
    assert relative_errors(packed, padded).max() < 1e-5


def test_pack_proteins_layout():
    tokens, lengths = encode_proteins(["MK", "A", "WWWW"])
    batch = pack_proteins(tokens, lengths)
    assert batch.cu_seqlens.tolist() == [0, 4, 7, 13] and batch.max_len == 6
    assert batch.positions.tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4, 5]
    assert batch.pool_count.tolist() == [2, 1, 4]
    assert batch.pool_index.tolist() == [[1, 2, 13, 13], [5, 13, 13, 13], [8, 9, 10, 11]]


def demo_predictor(batch_tokens: int, reference: bool = False, packed: bool = False) -> FramePredictor:
    """Demo models on the CPU in fp32; `packed`: the packed layout (CPU attention fallback) as
    on a GPU's fast path."""
    tokenizer = demo.demo_tokenizer()
    bundle = ModelBundle(demo.demo_esm(), demo.demo_dnabert(tokenizer.vocab_size), tokenizer,
                         demo.demo_classifier(128))
    precision = Precision(torch.float32, dnabert_autocast=False, packed=packed, reference=reference)
    return place_predictor(bundle, torch.device("cpu"), precision, batch_tokens=batch_tokens).predictor


def demo_frames(n: int, seed: int) -> list[Frame]:
    rng = random.Random(seed)
    frames = []
    for i in range(n):
        aa = "".join(rng.choice(AMINO) for _ in range(rng.randint(20, 170)))
        nt = "".join(rng.choice("ACGT") for _ in range(3 * len(aa) + 1))
        frames.append(Frame(f"f{i}", nt, aa))
    return frames


def test_batched_equals_reference_path():
    frames = demo_frames(40, seed=3)
    fast = demo_predictor(batch_tokens=1024).predict(frames, keep_embeddings=True)
    ref = demo_predictor(batch_tokens=1024, reference=True).predict(frames, keep_embeddings=True)
    for a, b in [(fast.dna_embeddings, ref.dna_embeddings), (fast.protein_embeddings, ref.protein_embeddings)]:
        assert relative_errors(torch.from_numpy(a), torch.from_numpy(b)).max() < 1e-5
    np.testing.assert_allclose(fast.score2, ref.score2, rtol=0, atol=1e-6)


def test_out_of_memory_splits_the_batch_and_loses_nothing(monkeypatch):
    frames = demo_frames(24, seed=4)
    expected = demo_predictor(batch_tokens=100_000).predict(frames)
    predictor = demo_predictor(batch_tokens=100_000)
    real_pooled = predictor.esm.pooled

    def pooled_that_runs_out(tokens, lengths, **kw):  # a device with room for 5 proteins
        if tokens.shape[0] > 5:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_pooled(tokens, lengths, **kw)

    monkeypatch.setattr(predictor.esm, "pooled", pooled_that_runs_out)
    got = predictor.predict(frames)
    assert got.batches_halved >= 3
    np.testing.assert_allclose(got.score2, expected.score2, rtol=0, atol=1e-6)


def test_a_single_frame_that_does_not_fit_is_an_error(monkeypatch):
    predictor = demo_predictor(batch_tokens=100_000)

    def never_fits(tokens, lengths, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(predictor.esm, "pooled", never_fits)
    with pytest.raises(torch.OutOfMemoryError):
        predictor.predict(demo_frames(3, seed=5))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_packed_varlen_matches_padded(esm, dtype):
    """Varlen attention (packed; the kernel chosen by length) vs SDPA on padded batches, same
    precision, on the GPU."""
    model = esm.to("cuda", dtype)
    proteins = random_proteins(64, seed=6)
    tokens, lengths = encode_proteins(proteins)
    with torch.no_grad():
        packed = model.pooled_packed(pack_proteins(tokens, lengths).to(torch.device("cuda")))
        padded = model.pooled(tokens.cuda(), lengths.cuda())
    cos = torch.nn.functional.cosine_similarity(packed, padded, dim=1)
    assert cos.min() > 0.999
    model.to("cpu", torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["memory-efficient", "flash"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_packed_attention_each_kernel_matches_fp32(monkeypatch, kernel, dtype):
    """Both kernels the packed attention op routes to compute each protein's own attention:
    against fp32 SDPA protein by protein, within the half precision's rounding."""
    from virnucpro.models import packed_attention as pa

    monkeypatch.setattr(pa, "EFFICIENT_UP_TO_TOKENS", 10_000 if kernel == "memory-efficient" else 0)
    gen = torch.Generator().manual_seed(8)
    lengths = [52, 3, 168, 17, 130, 52]
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    # q already scaled by head_dim ** -0.5, as the model hands it over; inputs rounded to the
    # half format first, so the reference sees the same numbers and only the kernel differs.
    q, k, v = (torch.randn(int(cu[-1]), 40, 64, generator=gen).to(dtype).float() for _ in range(3))
    q = (q * 0.125).to(dtype).float()
    got = pa.packed_attention(*(t.to("cuda", dtype) for t in (q, k, v)), cu.cuda(), max(lengths)).float().cpu()
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        ref = torch.nn.functional.scaled_dot_product_attention(
            *(t[start:end].transpose(0, 1) for t in (q, k, v)), scale=1.0).transpose(0, 1)
        # softmax weights and the output are rounded to the half format: a few of its ulps at |x| ~ 4
        tol = 3e-2 if dtype == torch.bfloat16 else 4e-3
        assert (got[start:end] - ref).abs().max() < tol, (start, end)


@pytest.mark.gpu
def test_gpu_dnabert_fp16_overflow_falls_back_to_fp32():
    """DNABERT-S runs fp16 GEMMs on the GPU fast path; activations beyond fp16's range must
    not turn into inf/NaN scores: the shard's DNABERT-S pass is redone in fp32."""
    tokenizer = demo.demo_tokenizer()
    frames = demo_frames(16, seed=8)

    def predictor(precision):
        dnabert = demo.demo_dnabert(tokenizer.vocab_size)
        with torch.no_grad():  # push the gated MLP far past fp16's 65504
            for layer in dnabert.encoder.layer:
                layer.mlp.gated_layers.weight.mul_(3000.0)
        bundle = ModelBundle(demo.demo_esm(), dnabert, tokenizer, demo.demo_classifier(128))
        cuda = torch.device("cuda", 0)
        return place_predictor(bundle, cuda, Precision.resolve(precision, cuda)).predictor

    got = predictor("bf16").predict(frames, keep_embeddings=True)
    exact = predictor("fp32").predict(frames, keep_embeddings=True)
    assert got.redone_in_fp32 and not exact.redone_in_fp32
    assert np.isfinite(got.dna_embeddings).all()
    assert relative_errors(torch.from_numpy(got.dna_embeddings), torch.from_numpy(exact.dna_embeddings)).max() < 1e-4


def test_a_failing_compilation_falls_back_to_eager(virnucpro_log):
    """torch.compile can fail at the first call on some systems: the run must go on, eager,
    with the same numbers, and say so once."""
    frames = demo_frames(12, seed=10)
    expected = demo_predictor(batch_tokens=4096).predict(frames)
    predictor = demo_predictor(batch_tokens=4096, packed=True)

    def broken(*args, **kwargs):
        raise RuntimeError("inductor: simulated compiler failure")

    for layer in predictor.esm.layers:
        for name in PACKED_METHODS:  # as compile_packed_layers installs its wrappers
            setattr(layer, name, broken)
    assert predictor.compiled
    got = predictor.predict(frames)
    assert "torch.compile failed" in virnucpro_log.text and not predictor.compiled
    np.testing.assert_allclose(got.score2, expected.score2, rtol=0, atol=1e-6)


@pytest.mark.gpu
def test_gpu_compiled_beside_the_copy_computes_with_the_copied_weights(esm):
    """The packed layers are compiled on an uninitialised copy while the real weights are
    copied in. The compiled code must read the copied values: against the same frames run
    eagerly (bf16 either way, so only rounding may differ), every protein embedding agrees
    to a cosine of 0.9999. Weights compiled in as constants would give garbage here."""
    import copy

    tokenizer = demo.demo_tokenizer()
    bundle = ModelBundle(copy.deepcopy(esm).half(), demo.demo_dnabert(tokenizer.vocab_size),
                         tokenizer, demo.demo_classifier(64 + esm.embed_dim))
    frames = demo_frames(40, seed=11)
    cuda = torch.device("cuda", 0)
    bf16 = Precision.resolve("bf16", cuda)
    placed = place_predictor(bundle, cuda, bf16, compile=True)
    assert placed.predictor.compiled and placed.compile_seconds > 0
    got = placed.predictor.predict(frames, keep_embeddings=True)
    expected = place_predictor(bundle, cuda, bf16, compile=False).predictor.predict(frames, keep_embeddings=True)
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(got.protein_embeddings),
                                                torch.from_numpy(expected.protein_embeddings), dim=1)
    assert cos.min() > 0.9999


def test_layers_are_compiled_in_inductors_deterministic_mode(monkeypatch):
    """Without it each worker process times candidate reduction kernels on its own GPU and
    keeps the fastest; they round differently, so result files differed between 1, 2 and 4
    GPUs (seen on the device). The switch must reach every layer's compile call."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: calls.append(kwargs) or fn)
    esm = demo.demo_esm()
    compile_packed_layers(esm)
    assert len(calls) == len(PACKED_METHODS) * esm.num_layers  # (compiled when first called)
    assert all(c["options"].get("deterministic") is True and c["dynamic"] for c in calls)
    # and pointwise kernels are not timed at start-up (beside the weights' copy, the timing
    # picked the slower configuration in some compiles)
    assert all(c["options"].get("triton.autotune_pointwise") is False for c in calls)
    uncompile_packed_layers(esm)


@pytest.mark.parametrize("residual_in_gemm", [False, True])
def test_compiling_traces_each_layer_once(monkeypatch, residual_in_gemm):
    """Python floats in the layer (the attention scaling, LayerNorm's eps) traced as symbols
    made Dynamo give up and trace the layer a second time: about half of a warm-cache start-up
    compile. compile_packed_layers specialises them; the graph is traced once, through
    AOTAutograd as with Inductor (the cheaper aot_eager backend stands in for it here), and
    every layer runs that one graph, on either packed path."""
    import torch._dynamo.config
    from torch._dynamo.utils import compilation_time_metrics, counters

    plain_compile = torch.compile
    # the default, restored after (config.patch: monkeypatch would delete the setting on undo
    # when the test runs twice, as parametrized)
    with torch._dynamo.config.patch(specialize_float=False):
        monkeypatch.setattr(torch, "compile", lambda fn, dynamic, options: plain_compile(fn, dynamic=dynamic,
                                                                                         backend="aot_eager"))
        torch._dynamo.reset()
        traced_before = len(compilation_time_metrics.get("compile_attempt_0", []))
        retraced_before = len(compilation_time_metrics.get("compile_attempt_1", []))
        graphs_before = counters["stats"]["unique_graphs"]
        esm = demo.demo_esm()
        esm.residual_in_gemm = residual_in_gemm
        compile_packed_layers(esm)
        batch = pack_proteins(*encode_proteins([f.aa for f in warm_up_frames()]))
        with torch.inference_mode():
            esm.pooled_packed(batch)
        assert esm.num_layers > 1 and counters["stats"]["unique_graphs"] == graphs_before + 1
        # Dynamo's own names for its first and second try: the first must be seen (else the names
        # changed and this test checks nothing), the second must not.
        assert len(compilation_time_metrics.get("compile_attempt_0", [])) > traced_before
        assert len(compilation_time_metrics.get("compile_attempt_1", [])) == retraced_before
        uncompile_packed_layers(esm)
    torch._dynamo.reset()


def test_layer_norm_rows_up_to_4096_are_reduced_in_one_pass():
    """Inductor reduces a row in one pass only up to 1,024 elements; over ESM-2 3B's 2,560 it
    loops over each row twice. The layers' compile options carry choices that make rows up to
    4,096 one pass (LayerNorm 0.95 + 1.11 -> 0.39 + 0.45 ms per layer on an H200) and leave
    every other decision to Inductor."""
    from types import SimpleNamespace

    from torch._inductor.choices import InductorChoices
    from torch._inductor.runtime.hints import ReductionHint
    from torch._inductor.sizevars import SizeVarAllocator
    from torch._inductor.virtualized import V

    from virnucpro.predict.compile import compile_options, whole_row_choices

    factory = compile_options()["inductor_choices_class"]
    choices = factory()
    assert isinstance(choices, InductorChoices) and choices.uuid() == whole_row_choices().uuid()
    assert "4096" in choices.uuid() and "4096" in repr(factory)  # the 2.11 cache key pickles the factory

    import sympy

    def features(hint, numel):
        return SimpleNamespace(get_reduction_hint=lambda: hint, reduction_numel=sympy.Integer(numel))

    with V.set_graph_handler(SimpleNamespace(sizevars=SizeVarAllocator())):
        decide = choices.should_use_persistent_reduction
        default = InductorChoices.should_use_persistent_reduction
        assert decide(features(ReductionHint.INNER, 2560), False)
        assert not default(features(ReductionHint.INNER, 2560), False)  # else this checks nothing
        assert decide(features(ReductionHint.INNER, 4096), False)
        assert not decide(features(ReductionHint.INNER, 4097), False)
        assert decide(features(ReductionHint.INNER, 512), False) == default(features(ReductionHint.INNER, 512), False)
        assert decide(features(ReductionHint.OUTER, 2560), False) == default(features(ReductionHint.OUTER, 2560), False)


@pytest.mark.gpu
def test_gpu_compiled_layer_norm_is_one_pass_and_matches_fp32():
    """Through the start-up's own warm-up, a layer of ESM-2 3B's width compiles its LayerNorms
    as one-pass (persistent) reductions, not looped ones; and the compiled bf16 layers still
    agree with the fp32 eager model (cosine > 0.9999 per protein, bf16 rounding)."""
    from torch._inductor.utils import run_and_get_code

    from virnucpro.models.esm2 import ESM2
    from virnucpro.predict.placement import _compile_and_warm_up_esm

    torch.manual_seed(0)
    reference = ESM2(num_layers=2, embed_dim=2560, attention_heads=40).cuda().eval()
    esm = ESM2(num_layers=2, embed_dim=2560, attention_heads=40).cuda().eval()
    esm.load_state_dict(reference.state_dict())
    esm = esm.to(torch.bfloat16)
    with torch._inductor.config.patch(fx_graph_cache=False):  # compile here, so the code is seen
        _, codes = run_and_get_code(_compile_and_warm_up_esm, esm)
    code = "\n".join(codes)
    assert "def triton_per_fused_native_layer_norm" in code and "_add_native_layer_norm" in code
    assert "def triton_red_fused" not in code
    proteins = random_proteins(20, seed=12, longest=200)
    batch = pack_proteins(*encode_proteins(proteins)).to(torch.device("cuda"))
    with torch.inference_mode():
        got = esm.pooled_packed(batch)
        expected = reference.pooled_packed(batch)
    cos = torch.nn.functional.cosine_similarity(got.double(), expected.double(), dim=1)
    assert cos.min() > 0.9999
    uncompile_packed_layers(esm)


def test_compiled_layers_run_under_their_choices_whatever_the_thread_had():
    """Inductor keeps one choices object per thread, made on first use; the compile option
    alone would not replace one a thread already has, and the cache would then store a
    looped LayerNorm under the one-pass key. Each compiled layer is called with its choices
    installed, on any thread, and the thread's own come back after."""
    from torch._inductor.choices import InductorChoices
    from torch._inductor.virtualized import V

    seen = []
    esm = demo.demo_esm()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", lambda fn, **kwargs: lambda *a, **k: seen.append(V.choices.uuid()))
        compile_packed_layers(esm)
    own = InductorChoices()
    with V.set_choices_handler(own):
        esm.layers[0].forward_packed(None, None, None)
        assert V.choices is own
    assert seen and "whole-row-4096" in seen[0]
    uncompile_packed_layers(esm)
