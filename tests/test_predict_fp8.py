"""--precision fp8: the fp8 linear layer against its definition, an fp8 ESM-2 against fp32,
and a clear error where there are no fp8 tensor cores. (Speed and fidelity on full-size models
are measured on the GPU by benchmarks/bench_fp8.py.)"""

from __future__ import annotations

import random

import pytest
import torch

from virnucpro.errors import InputError
from virnucpro.models import demo
from virnucpro.models.protein_alphabet import encode_proteins
from virnucpro.predict import fp8 as fp8_module
from virnucpro.predict.fp8 import FP8, Fp8Linear
from virnucpro.predict.packing import pack_proteins
from virnucpro.predict.placement import esm_on_device
from virnucpro.predict.precision import Precision

AMINO = "LAGVSERTIDPKQNFYMHWC"


def test_the_fp8_linear_is_the_product_of_its_row_scaled_operands(monkeypatch):
    monkeypatch.setattr(fp8_module, "ROW_MULTIPLE", 16)  # a GPU test's probe may have set 1
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    fp8 = Fp8Linear(64, 48)
    fp8.load(linear.weight, linear.bias)
    x = torch.randn(37, 64, dtype=torch.bfloat16)  # 37 rows: padded to 48 inside
    got = fp8(x)
    # the definition: both operands rounded to e4m3 after dividing each row by amax / 448
    xs = x.float().abs().amax(1, keepdim=True) / 448
    ws = linear.weight.abs().amax(1, keepdim=True) / 448
    xq = (x.float() / xs).to(FP8).float() * xs
    wq = (linear.weight / ws).to(FP8).float() * ws
    expected = xq @ wq.T + linear.bias.to(torch.bfloat16).float()
    assert got.shape == (37, 48) and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=1e-2, atol=1e-2)  # bf16 output rounding
    assert fp8(x.view(1, 37, 64)).shape == (1, 37, 48)


def test_an_fp8_esm2_stays_close_to_fp32(monkeypatch):
    esm = demo.demo_esm()
    rng = random.Random(3)
    proteins = ["".join(rng.choice(AMINO) for _ in range(rng.randint(20, 170))) for _ in range(24)]
    batch = pack_proteins(*encode_proteins(proteins))
    cpu = torch.device("cpu")
    exact, _ = esm_on_device(esm, cpu, torch.float32)
    fp8, _ = esm_on_device(esm, cpu, torch.bfloat16, fp8_keep=())
    kept, _ = esm_on_device(esm, cpu, torch.bfloat16, fp8_keep=("out_proj", "fc2"))
    assert isinstance(fp8.layers[0].fc2, Fp8Linear) and isinstance(kept.layers[0].fc1, Fp8Linear)
    assert isinstance(kept.layers[0].fc2, torch.nn.Linear) and isinstance(kept.layers[0].self_attn.out_proj, torch.nn.Linear)
    with torch.no_grad():
        reference = exact.pooled_packed(batch)
        for model in (fp8, kept):
            cosine = torch.nn.functional.cosine_similarity(model.pooled_packed(batch), reference, dim=1)
            assert cosine.min() > 0.99, cosine.min()


def test_fp8_where_there_are_no_fp8_tensor_cores_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(InputError, match="fp8 needs a GPU"):
        Precision.resolve("fp8", torch.device("cpu"))
    from virnucpro.cli import main

    sample = tmp_path / "s.fa"
    sample.write_text(">a\nATGGCTAGCAAGGAGCTGTTCACCGGCATCGTGCCCATCCTGGTCGAGCTG\n")
    assert main(["predict", str(sample), "--demo", "--devices", "cpu", "--precision", "fp8"]) == 2
    assert "fp8 needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / "s_merged").exists()


@pytest.mark.gpu
def test_gpu_fp8_predictor_compiled_beside_the_copy_stays_close_to_fp32():
    """The fp8 path as `virnucpro predict` builds it on a GPU: linear layers quantised as the
    weights arrive, compiled and warmed up while they are copied. Against fp32, every protein
    embedding keeps a cosine of 0.99 (tiny random model; bench_fp8.py has the full-size gates)."""
    from virnucpro.models.bundle import ModelBundle
    from virnucpro.predict.placement import place_predictor
    from virnucpro.stages.types import Frame

    tokenizer = demo.demo_tokenizer()
    bundle = ModelBundle(demo.demo_esm(), demo.demo_dnabert(tokenizer.vocab_size), tokenizer, demo.demo_classifier(128))
    cuda = torch.device("cuda", 0)
    rng = random.Random(5)
    frames = []
    for i in range(40):
        aa = "".join(rng.choice(AMINO) for _ in range(rng.randint(20, 170)))
        frames.append(Frame(f"f{i}", "".join(rng.choice("ACGT") for _ in range(3 * len(aa) + 1)), aa))
    placed = place_predictor(bundle, cuda, Precision.resolve("fp8", cuda), compile=True)
    assert placed.predictor.compiled and isinstance(placed.predictor.esm.layers[0].fc1, Fp8Linear)
    got = placed.predictor.predict(frames, keep_embeddings=True)
    exact = place_predictor(bundle, cuda, Precision.resolve("fp32", cuda)).predictor.predict(frames, keep_embeddings=True)
    cosine = torch.nn.functional.cosine_similarity(torch.from_numpy(got.protein_embeddings),
                                                   torch.from_numpy(exact.protein_embeddings), dim=1)
    assert cosine.min() > 0.99


def test_the_fp8_precision_names_its_accumulation_mode(monkeypatch):
    """The name enters the checkpoint fingerprint: a resume must not mix shards computed with
    fast and with promoted accumulation (they differ in the last digits)."""
    precision = Precision(torch.bfloat16, dnabert_autocast=True, packed=True, reference=False, fp8=True)
    monkeypatch.setattr(fp8_module, "FAST_ACCUM", True)
    fast = precision.name
    monkeypatch.setattr(fp8_module, "FAST_ACCUM", False)
    assert (fast, precision.name) == ("fp8-fast-accum+bfloat16", "fp8+bfloat16")
