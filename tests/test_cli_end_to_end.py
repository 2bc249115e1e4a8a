"""The whole CLI on the CPU, pinned to references:
- discrete stages (intermediate FASTA files) against the original's golden files, byte for byte;
- scores against an independent oracle: fair-esm's ESM2 + the plain DNABERT-S reference +
  the classifier's own formula, computed frame by frame from the golden frame files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dnabert_factory import read_folder
from dnabert_reference import reference_embedding
from esm_factory import load_with_fair_esm
from golden import golden_case, read_score_table
from tokenizers import Tokenizer

from virnucpro.cli import main

GOLDEN_FILES = ("chunked{L}.fa", "identified_nucleotide.fa", "identified_protein.faa")


def read_fasta_pairs(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text().splitlines()
    return [(lines[i][1:], lines[i + 1]) for i in range(0, len(lines), 2)]


def copy_input(case: Path, tmp_path: Path) -> Path:
    target = tmp_path / "sample.fasta"
    shutil.copy(case / "input.fa", target)
    return target


def model_args(models) -> list[str]:
    return ["--esm-model", str(models.esm), "--dnabert-model", str(models.dnabert),
            "--classifier", str(models.classifier)]


@pytest.mark.parametrize("name,chunk_len", [("edge_cases", 300), ("edge_cases", 500), ("contigs", 500),
                                           ("reads150", 300)])
def test_keep_intermediate_matches_golden(tmp_path, tiny_models, name, chunk_len):
    case = golden_case(name, chunk_len)
    sample = copy_input(case, tmp_path)
    assert main(["predict", str(sample), "-m", str(chunk_len), "--keep-intermediate", "-q",
                 *model_args(tiny_models)]) == 0
    prefix = tmp_path / "sample"
    assert Path(f"{prefix}_chunked{chunk_len}.fa").read_bytes() == (case / "chunked.fa").read_bytes()
    assert Path(f"{prefix}_identified_nucleotide.fa").read_bytes() == (case / "identified_nucleotide.fa").read_bytes()
    assert Path(f"{prefix}_identified_protein.faa").read_bytes() == (case / "identified_protein.faa").read_bytes()
    ids, _, _ = read_score_table(tmp_path / "sample_merged" / "prediction_results.txt", 0, 2, 3)
    assert ids == [i for i, _ in read_fasta_pairs(case / "identified_nucleotide.fa")]
    assert_summary_counts_match_golden(tmp_path / "sample_merged", case)
    # the checkpoint store is gone after a successful run; no temporaries remain
    assert sorted(p.name for p in (tmp_path / "sample_merged").iterdir()) == [
        "prediction_results.txt", "prediction_results_highestscore.csv", "prediction_summary.tsv", "report.html",
        "run_summary.json", "viral_sequences.fa"]


def assert_summary_counts_match_golden(result_dir: Path, case: Path) -> None:
    """prediction_summary.tsv and run_summary.json's counts against the golden files: every
    input record once, in order; no_frames exactly the records none of whose chunks kept a
    frame in the original's identified_nucleotide.fa; skipped exactly the empty records."""
    import json

    from virnucpro.stages.read import read_records

    records = list(read_records(case / "input.fa"))
    rows = [line.split("\t") for line in (result_dir / "prediction_summary.tsv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == [r.id for r in records]
    kept = {frame_id.rpartition("_chunk_")[0] for frame_id, _ in read_fasta_pairs(case / "identified_nucleotide.fa")}
    no_frames = {r.id for r in records if r.seq and r.id not in kept}
    skipped = {r.id for r in records if not r.seq}
    assert {r[0] for r in rows if r[8] == "no_frames"} == no_frames
    assert {r[0] for r in rows if r[8] == "skipped"} == skipped
    assert {r[0] for r in rows if r[8] in ("virus", "others")} == kept
    counts = json.loads((result_dir / "run_summary.json").read_text())["sequences"]
    assert counts["records"] == len(records) and counts["no_frames"] == len(no_frames)
    assert counts["skipped"] == len(skipped) and counts["virus"] + counts["others"] == len(kept)
    assert counts["virus"] == sum(r[8] == "virus" for r in rows)


def classifier_formula(sd: dict):
    """SPEC section 5 written out: Linear -> BatchNorm1d (eval, eps 1e-5) -> ReLU -> Linear."""
    def forward(x):
        h = x @ sd["hidden_layer.weight"].T + sd["hidden_layer.bias"]
        h = (h - sd["bn1.running_mean"]) / torch.sqrt(sd["bn1.running_var"] + 1e-5)
        h = torch.relu(h * sd["bn1.weight"] + sd["bn1.bias"])
        return h @ sd["output_layer.weight"].T + sd["output_layer.bias"]
    return forward


def oracle_scores(models, case: Path) -> dict[str, tuple[float, float]]:
    """Per-frame (score1, score2) computed without virnucpro's models or batching."""
    nts = read_fasta_pairs(case / "identified_nucleotide.fa")
    aas = dict(read_fasta_pairs(case / "identified_protein.faa"))
    config, state = read_folder(models.dnabert)
    tokenizer = Tokenizer.from_file(str(models.dnabert / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    esm_model = load_with_fair_esm(models.esm)
    alphabet_batch = __import__("esm").data.Alphabet.from_architecture("ESM-1b").get_batch_converter()
    clf = classifier_formula(models.classifier_state)
    out = {}
    with torch.no_grad():
        for frame_id, nt in nts:
            dna = reference_embedding(state, config, tokenizer.encode(nt).ids)
            _, _, toks = alphabet_batch([(frame_id, aas[frame_id])])
            rep = esm_model(toks, repr_layers=[esm_model.num_layers])["representations"][esm_model.num_layers]
            n = len(aas[frame_id])
            prot = rep[0, 1 : min(n, 1024) + 1].mean(0)
            probs = torch.softmax(clf(torch.cat([dna, prot])[None]), dim=1)[0]
            out[frame_id] = (float(probs[0]), float(probs[1]))
    return out


@pytest.mark.parametrize("reference", [False, True])
def test_scores_match_independent_oracle(tmp_path, tiny_models, reference):
    case = golden_case("edge_cases", 300)
    sample = copy_input(case, tmp_path)
    args = ["predict", str(sample), "-m", "300", "-q", *model_args(tiny_models)]
    assert main(args + (["--reference"] if reference else [])) == 0
    ids, s1, s2 = read_score_table(tmp_path / "sample_merged" / "prediction_results.txt", 0, 2, 3)
    expected = oracle_scores(tiny_models, case)
    assert ids == list(expected)
    want = np.array([expected[i] for i in ids], dtype=np.float64)
    # fp32 end to end on both sides; embeddings agree to ~1e-6 relative (test_esm2 and
    # test_dnabert_s), the softmax damps that further: 1e-5 absolute leaves 10x headroom.
    np.testing.assert_allclose(s1, want[:, 0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(s2, want[:, 1], rtol=0, atol=1e-5)
    assert len(set(np.round(s2, 3))) > 3  # the oracle is not trivially constant


def test_models_found_in_their_cache_locations(tmp_path, tiny_models, monkeypatch):
    """No paths given: ESM-2 from $TORCH_HOME/hub/checkpoints, DNABERT-S from the HF cache,
    the classifier from $VIRNUCPRO_HOME -- the places a real user has them."""
    torch_home = tmp_path / "torch"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_models.esm, torch_home / "hub" / "checkpoints" / "esm2_t36_3B_UR50D.pt")
    hf_cache = tmp_path / "hf" / "hub"
    snapshot = hf_cache / "models--zhihan1996--DNABERT-S" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_models.dnabert, snapshot)
    (hf_cache / "models--zhihan1996--DNABERT-S" / "refs").mkdir()
    (hf_cache / "models--zhihan1996--DNABERT-S" / "refs" / "main").write_text("a" * 40)
    home = tmp_path / "vhome"
    home.mkdir()
    shutil.copy(tiny_models.classifier, home / "300_model.pth")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setenv("VIRNUCPRO_HOME", str(home))
    sample = tmp_path / "reads.fa"
    sample.write_text(">r1\n" + "ATGGCTAAAGCTGGTCTGAAACGTATCGCTGAAGAACTGCGTGGTAAA" * 3 + "\n")
    assert main(["predict", str(sample), "300", "-q"]) == 0
    assert (tmp_path / "reads_merged" / "prediction_results.txt").is_file()


def test_positional_form_and_output_dir(tmp_path, tiny_models):
    sample = tmp_path / "x.fa"
    sample.write_text(">r1\n" + "ATGGCTAAAGCTGGTCTGAAACGTATCGCTGAAGAACTGCGTGGTAAA" * 12 + "\n")
    out = tmp_path / "out"
    assert main(["predict", str(sample), "500", str(tiny_models.classifier), "-o", str(out), "-q",
                 "--esm-model", str(tiny_models.esm), "--dnabert-model", str(tiny_models.dnabert)]) == 0
    assert (out / "prediction_results_highestscore.csv").read_text().startswith("Modified_ID\tIs_Virus\n")
    assert not (tmp_path / "x_merged").exists()


def test_demo_runs_offline_and_is_deterministic(tmp_path, capsys):
    example = Path(__file__).resolve().parents[1] / "examples" / "ecoli_reads150.fa"
    results = []
    for run in ("a", "b"):
        sample = tmp_path / run / "reads.fa"
        sample.parent.mkdir()
        shutil.copy(example, sample)
        assert main(["predict", str(sample), "-m", "300", "--demo"]) == 0
        results.append((tmp_path / run / "reads_merged" / "prediction_results.txt").read_bytes())
    assert results[0] == results[1] and results[0].count(b"\n") > 100
    assert "NOT biologically meaningful" in capsys.readouterr().err


def test_demo_uses_an_explicit_classifier(tmp_path, tiny_models):
    # the tiny classifier takes 128 features, as the demo encoders give (64 + 64)
    sample = tmp_path / "s.fa"
    sample.write_text(">r1\n" + "ATGGCTAAAGCTGGTCTGAAACGTATCGCTGAAGAACTGCGTGGTAAA" * 3 + "\n")
    assert main(["predict", str(sample), "--demo", "--classifier", str(tiny_models.classifier), "-q"]) == 0


def test_python_dash_m_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "virnucpro", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("virnucpro ")
