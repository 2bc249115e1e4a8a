"""Reusing the embeddings of a run of the original VirNucPro (SPEC.md section 5 files)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import torch
from golden import legacy_run

from virnucpro.cli import main
from virnucpro.config import RunConfig
from virnucpro.layout import OriginalRunFiles
from virnucpro.models.safe_load import safe_torch_load
from virnucpro.stages.chunk import iter_chunks
from virnucpro.stages.read import read_records
from virnucpro.stages.reuse_original import OriginalRun, original_identity, read_split
from virnucpro.stages.translate import select_frames
from virnucpro.stages.types import Frame

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ecoli_reads150.fa"


def attach_original(frames, prefix: str, warn) -> list[tuple[Frame, bool]]:
    """Each frame, and whether the original's files give its embeddings."""
    original = OriginalRun(OriginalRunFiles(prefix), (768, 2560), warn)
    passed = list(original.frames(iter(frames)))
    known = original.known_for(passed)
    rows = set() if known is None else set(known.rows.tolist())
    return [(frame, row in rows) for row, frame in enumerate(passed)]


def frames_of(path: Path, chunk_len: int):
    return select_frames(list(iter_chunks(read_records(path), chunk_len, on_empty=lambda _: None)))


def test_real_original_files_read_and_matched(tmp_path):
    """The original's DNABERT-S and ESM-2 files, read separately, give exactly the rows of its
    own merged file, and they pair with the frames virnucpro cuts from the same input."""
    legacy = legacy_run()
    for name in ("test_with_orfs", "test_fixed_500bp"):
        for part in ("nucleotide", "protein"):
            shutil.copytree(legacy / f"{name}_{part}", tmp_path / f"{name}_{part}")
        split = read_split(OriginalRunFiles(str(tmp_path / name)), 1, 768)
        merged = safe_torch_load(legacy / f"{name}_merged" / "output_1_merged.pt", what="merged")
        assert split.ids == list(merged["ids"])
        np.testing.assert_array_equal(np.concatenate([split.dna, split.protein], 1), merged["data"].numpy())
        frames = frames_of(legacy / f"{name}.fa", 500)
        paired = attach_original(frames, str(tmp_path / name), pytest_fail)
        assert [f.id for f, _ in paired] == split.ids
        assert all(known for _, known in paired)


def pytest_fail(message: str) -> None:
    raise AssertionError(f"unexpected warning: {message}")


def write_original_files(prefix: Path, ids, dna, protein, split_size: int, nt: dict[str, str] | None,
                         fasta: str = "split") -> None:
    """The original's per-split files, in its formats (ESM-2 ordered by protein length), with its
    record of the frames' nucleotide sequences (`nt`, by id): per split `output_k.fa`
    (fasta="split"), or the whole `_identified_nucleotide.fa` (fasta="identified"), or none."""
    for part in ("nucleotide", "protein"):
        Path(f"{prefix}_{part}").mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, len(ids), split_size), 1):
        rows = range(start, min(start + split_size, len(ids)))
        torch.save({"nucleotide": [ids[r] for r in rows],
                    "data": [{"label": ids[r], "mean_representation": dna[r].tolist()} for r in rows]},
                   f"{prefix}_nucleotide/output_{k}_DNABERT_S.pt")
        by_length = sorted(rows, key=lambda r: (len(ids[r]), r))
        torch.save({"proteins": [ids[r] for r in by_length], "data": [torch.from_numpy(protein[r].copy()) for r in by_length]},
                   f"{prefix}_protein/output_{k}_ESM.pt")
        if fasta == "split":
            Path(f"{prefix}_nucleotide/output_{k}.fa").write_text("".join(f">{ids[r]}\n{nt[ids[r]]}\n" for r in rows))
    if fasta == "identified":
        Path(f"{prefix}_identified_nucleotide.fa").write_text("".join(f">{i}\n{nt[i]}\n" for i in ids))


def frame_sequences(sample: Path) -> dict[str, str]:
    return {f.id: f.nt for f in frames_of(sample, 300)}


def run(folder: Path, *extra: str) -> tuple[int, Path]:
    sample = folder / "reads.fa"
    if not sample.exists():
        folder.mkdir(parents=True, exist_ok=True)
        sample.write_text("\n".join(EXAMPLE.read_text().splitlines()[:200]) + "\n")
    code = main(["predict", str(sample), "-m", "300", "--demo", "--devices", "cpu", "--shard-tokens", "800", *extra])
    return code, folder / "reads_merged"


def test_original_embeddings_reused_and_output_unchanged(tmp_path, capsys):
    code, first = run(tmp_path / "a", "--save-embeddings")
    assert code == 0
    emb = first / "embeddings"
    ids = emb.joinpath("ids.txt").read_text().splitlines()
    dna, protein = np.load(emb / "dnabert_s.npy"), np.load(emb / "esm2.npy")
    covered = 2 * 40  # two splits of 40 frames; the rest is computed
    write_original_files(tmp_path / "b" / "reads", ids[:covered], dna, protein, 40,
                         frame_sequences(tmp_path / "a" / "reads.fa"))
    capsys.readouterr()
    shutil.copy(tmp_path / "a" / "reads.fa", tmp_path / "b" / "reads.fa")
    assert run(tmp_path / "b")[0] == 0
    assert f"reused the embeddings of {covered} frames" in capsys.readouterr().err
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv"):
        assert (tmp_path / "b" / "reads_merged" / name).read_bytes() == (first / name).read_bytes()


def test_reused_embeddings_really_drive_the_scores(tmp_path):
    code, first = run(tmp_path / "a", "--save-embeddings")
    emb = first / "embeddings"
    ids = emb.joinpath("ids.txt").read_text().splitlines()
    dna, protein = np.load(emb / "dnabert_s.npy"), np.load(emb / "esm2.npy")
    write_original_files(tmp_path / "b" / "reads", ids[:40], dna, np.zeros_like(protein), 40,
                         frame_sequences(tmp_path / "a" / "reads.fa"))
    shutil.copy(tmp_path / "a" / "reads.fa", tmp_path / "b" / "reads.fa")
    assert run(tmp_path / "b")[0] == 0
    before = (first / "prediction_results.txt").read_text().splitlines()[1:]
    after = (tmp_path / "b" / "reads_merged" / "prediction_results.txt").read_text().splitlines()[1:]
    assert after[40:] == before[40:]
    assert sum(a != b for a, b in zip(after[:40], before[:40])) > 30


def test_original_files_of_another_input_are_ignored(tmp_path, capsys):
    code, first = run(tmp_path / "a")
    other = [f"other_{i}_chunk_1F1" for i in range(40)]
    write_original_files(tmp_path / "b" / "reads", other, np.ones((40, 64), np.float32),
                         np.ones((40, 64), np.float32), 40, {i: "ACGT" for i in other})
    shutil.copy(tmp_path / "a" / "reads.fa", tmp_path / "b" / "reads.fa")
    capsys.readouterr()
    assert run(tmp_path / "b")[0] == 0
    err = capsys.readouterr().err
    assert "output_1_DNABERT_S.pt" in err and "not those of this input" in err
    assert "reused the embeddings" not in err
    name = "prediction_results.txt"
    assert (tmp_path / "b" / "reads_merged" / name).read_bytes() == (first / name).read_bytes()


# ---------------------------------------------------------------- stale files under the same names


def golden_copy(tmp_path: Path, name: str = "test_with_orfs") -> str:
    for part in ("nucleotide", "protein"):
        shutil.copytree(legacy_run() / f"{name}_{part}", tmp_path / f"{name}_{part}")
    return str(tmp_path / name)


def attach_collecting(frames, prefix: str) -> tuple[list, list[str]]:
    warnings: list[str] = []
    paired = attach_original(frames, prefix, warnings.append)
    return paired, warnings


def changed(frame: Frame) -> Frame:
    """The same frame id over another nucleotide sequence: an input edited under the same names."""
    swap = {"A": "C", "C": "G", "G": "T", "T": "A"}
    return dataclasses.replace(frame, nt=frame.nt[:10] + swap.get(frame.nt[10], "A") + frame.nt[11:])


def test_same_ids_over_changed_sequences_are_not_reused(tmp_path):
    prefix = golden_copy(tmp_path)
    frames = frames_of(legacy_run() / "test_with_orfs.fa", 500)
    frames[1] = changed(frames[1])
    paired, warnings = attach_collecting(frames, prefix)
    assert [f.id for f, _ in paired] == [f.id for f in frames]
    assert not any(known for _, known in paired)
    assert len(warnings) == 1
    assert "output_1_DNABERT_S.pt" in warnings[0] and "output_1.fa" in warnings[0]
    assert f"frame {frames[1].id} " in warnings[0]


def test_identified_fasta_vouches_when_the_split_fasta_is_missing(tmp_path):
    prefix = golden_copy(tmp_path)
    Path(f"{prefix}_nucleotide/output_1.fa").unlink()
    shutil.copy(legacy_run() / "test_with_orfs_identified_nucleotide.fa", f"{prefix}_identified_nucleotide.fa")
    frames = frames_of(legacy_run() / "test_with_orfs.fa", 500)
    paired, warnings = attach_collecting(frames, prefix)
    assert warnings == [] and all(known for _, known in paired)
    frames[-1] = changed(frames[-1])
    paired, warnings = attach_collecting(frames, prefix)
    assert not any(known for _, known in paired)
    assert len(warnings) == 1 and "_identified_nucleotide.fa" in warnings[0]
    assert f"frame {frames[-1].id} " in warnings[0]


def test_no_record_of_the_sequences_means_no_reuse(tmp_path):
    prefix = golden_copy(tmp_path)
    Path(f"{prefix}_nucleotide/output_1.fa").unlink()
    paired, warnings = attach_collecting(frames_of(legacy_run() / "test_with_orfs.fa", 500), prefix)
    assert not any(known for _, known in paired)
    assert len(warnings) == 1 and "may be stale" in warnings[0] and "output_1_DNABERT_S.pt" in warnings[0]


def test_identified_fasta_serves_every_split_in_turn(tmp_path, capsys):
    """Three splits, all vouched for by the one identified FASTA; the second split's frames
    changed under their names: only the first and third are reused."""
    code, first = run(tmp_path / "a", "--save-embeddings")
    assert code == 0
    emb = first / "embeddings"
    ids = emb.joinpath("ids.txt").read_text().splitlines()
    dna, protein = np.load(emb / "dnabert_s.npy"), np.load(emb / "esm2.npy")
    nt = frame_sequences(tmp_path / "a" / "reads.fa")
    nt[ids[45]] = nt[ids[45]][::-1]  # the original saw another sequence under this name
    write_original_files(tmp_path / "b" / "reads", ids[:120], dna, protein, 40, nt, fasta="identified")
    shutil.copy(tmp_path / "a" / "reads.fa", tmp_path / "b" / "reads.fa")
    capsys.readouterr()
    assert run(tmp_path / "b")[0] == 0
    err = capsys.readouterr().err
    assert "reused the embeddings of 80 frames" in err
    assert "output_2_DNABERT_S.pt" in err and f"frame {ids[45]} " in err
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv"):
        assert (tmp_path / "b" / "reads_merged" / name).read_bytes() == (first / name).read_bytes()


def test_fingerprint_records_the_original_runs_files(tmp_path):
    config = RunConfig(input=tmp_path / "reads.fa")
    plain = config.fingerprint({"m": "1"}, "input", "float32")
    assert config.fingerprint({"m": "1"}, "input", "float32", None) == plain
    prefix = golden_copy(tmp_path)
    assert original_identity(OriginalRunFiles(str(tmp_path / "nothing"))) is None
    files = original_identity(OriginalRunFiles(prefix))
    assert files and any("output_1.fa" in f for f in files) and any("output_1_ESM.pt" in f for f in files)
    with_legacy = config.fingerprint({"m": "1"}, "input", "float32", files)
    assert with_legacy != plain
    Path(f"{prefix}_nucleotide/output_1.fa").write_text(">x\nACGT\n")
    assert config.fingerprint({"m": "1"}, "input", "float32", original_identity(OriginalRunFiles(prefix))) != with_legacy
