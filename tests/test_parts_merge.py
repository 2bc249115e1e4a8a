"""Parts and merge (predict --part K/N, virnucpro merge): N parts merged in any order give the
bytes of one whole run; parts balance by protein tokens; a merge of parts that do not fit
together is refused before anything is written."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from virnucpro import pipeline
from virnucpro.cli import main
from virnucpro.config import PartSpec, RunConfig
from virnucpro.engine.sharding import plan_shards
from virnucpro.layout import PART_NAME, STORE_DIRNAME
from virnucpro.monitoring.events import Monitor
from virnucpro.predict.task import frame_cost
from virnucpro.stages.stream import stream_frames
from virnucpro.stages.write import IntermediateFiles
from virnucpro.store import read_part

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ecoli_reads150.fa"
RESULT_FILES = ("prediction_results.txt", "prediction_results_highestscore.csv", "prediction_summary.tsv",
                "viral_sequences.fa")


def example_reads(records: int) -> list[tuple[str, str]]:
    lines = EXAMPLE.read_text().splitlines()
    return [(lines[i][1:], lines[i + 1]) for i in range(0, 2 * records, 2)]


def reads_input(folder: Path, records: int = 24, name: str = "reads.fa") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join(f">{title}\n{seq}\n" for title, seq in example_reads(records)))
    return path


def contigs_input(folder: Path) -> Path:
    """Contigs of 0.9-3.1 kbp in 60-column lines, drawn codon by codon with no stop in the
    first frame (so every chunk keeps a frame, as in coding sequence): many frames per contig,
    chunks whose frames straddle shards."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    codons = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"]
    codons = [c for c in codons if c not in ("TAA", "TAG", "TGA")]
    contigs = ["".join(rng.choice(codons) for _ in range(length // 3)) for length in (1700, 2600, 3100, 900)]
    path = folder / "contigs.fa"
    path.write_text("".join(f">contig{n} len={len(seq)}\n" + "".join(seq[i:i + 60] + "\n" for i in range(0, len(seq), 60))
                            for n, seq in enumerate(contigs, 1)))
    return path


KINDS = {"reads": (reads_input, 300, 250), "contigs": (contigs_input, 500, 350)}  # input, chunk length, shard tokens


def config(path: Path, out: Path, chunk_len: int, shard_tokens: int, **changes) -> RunConfig:
    options = dict(input=path, chunk_len=chunk_len, out_dir=out, demo=True, devices="cpu", shard_tokens=shard_tokens)
    options.update(changes)
    return RunConfig(**options)


def compute_parts(cfg: RunConfig, root: Path, n: int) -> list[Path]:
    folders = []
    for k in range(1, n + 1):
        folder = root / f"{k}of{n}"
        pipeline.run(RunConfig(**{**cfg.__dict__, "out_dir": folder, "part": PartSpec(k, n)}), Monitor())
        folders.append(folder)
    return folders


def result_bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in RESULT_FILES}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_parts_merged_in_any_order_are_the_bytes_of_a_whole_run(tmp_path, kind):
    make_input, chunk_len, shard_tokens = KINDS[kind]
    source = make_input(tmp_path / "in")
    whole = config(source, tmp_path / "whole", chunk_len, shard_tokens)
    outcome = pipeline.run(whole, Monitor())
    expected = result_bytes(tmp_path / "whole")
    assert outcome.shards >= 7, "the plan must give every one of 7 parts a shard"
    shuffle = random.Random(14).shuffle
    for n in (1, 2, 3, 7):
        folders = compute_parts(whole, tmp_path / f"parts{n}", n)
        records = [read_part(folder) for folder in folders]
        assert [r.shards for r in records] == [outcome.shards] * n
        assert sum(r.part_frames for r in records) == outcome.frames
        assert sum(r.part_shards for r in records) == outcome.shards
        shuffle(folders)
        merged = pipeline.merge(folders, tmp_path / f"merged{n}", Monitor())
        assert (merged.frames, merged.shards) == (outcome.frames, outcome.shards)
        assert result_bytes(tmp_path / f"merged{n}") == expected, f"{n} parts"
        assert all((folder / STORE_DIRNAME).is_dir() for folder in folders), "a merge leaves the parts as they were"


def test_parts_balance_by_protein_tokens_on_a_reads_input():
    """Every N-th shard of the plan: on 400 reads of 150 bp cut into ~100 shards, each part is
    within 10 % of the mean part's tokens, for any N up to 7."""
    frames = stream_frames(EXAMPLE, 300, IntermediateFiles(None), on_empty=lambda r: None,
                           on_progress=lambda *a: None)
    shards = list(plan_shards(frames, frame_cost, 300))
    assert len(shards) >= 90
    for n in range(2, 8):
        loads = [sum(s.cost for s in shards if PartSpec(k, n).owns(s.index)) for k in range(1, n + 1)]
        mean = sum(loads) / n
        assert max(abs(load - mean) for load in loads) <= 0.10 * mean, (n, loads)


def cli_part(source: Path, folder: Path, spec: str, *extra: str) -> int:
    return main(["predict", str(source), "-m", "300", "--demo", "--devices", "cpu", "--shard-tokens", "250", "-q",
                 "--part", spec, "-o", str(folder), *extra])


def test_the_cli_merges_embeddings_summaries_and_report_per_part_and_device(tmp_path):
    source = reads_input(tmp_path / "in", records=16)
    assert main(["predict", str(source), "-m", "300", "--demo", "--devices", "cpu", "--shard-tokens", "250", "-q",
                 "--save-embeddings", "-o", str(tmp_path / "whole")]) == 0
    for k in (1, 2):
        assert cli_part(source, tmp_path / f"p{k}", f"{k}/2", "--save-embeddings") == 0
        assert sorted(p.name for p in (tmp_path / f"p{k}").iterdir()) == sorted(
            [STORE_DIRNAME, PART_NAME, "run_summary.json"])
    assert main(["merge", str(tmp_path / "p2"), str(tmp_path / "p1"), "-o", str(tmp_path / "merged"), "-q"]) == 0
    merged = tmp_path / "merged"
    assert result_bytes(merged) == result_bytes(tmp_path / "whole")
    # the per-sequence rule is the merge's to apply, as predict's is
    assert main(["predict", str(source), "-m", "300", "--demo", "--devices", "cpu", "--shard-tokens", "250", "-q",
                 "--threshold", "0.3", "-o", str(tmp_path / "whole_t")]) == 0
    assert main(["merge", str(tmp_path / "p1"), str(tmp_path / "p2"), "-o", str(tmp_path / "merged_t"), "-q",
                 "--threshold", "0.3"]) == 0
    assert result_bytes(tmp_path / "merged_t") == result_bytes(tmp_path / "whole_t")
    assert (tmp_path / "merged_t" / "prediction_summary.tsv").read_bytes() != \
        (merged / "prediction_summary.tsv").read_bytes(), "the threshold changes some calls"
    for name in ("ids.txt", "dnabert_s.npy", "esm2.npy"):
        assert (merged / "embeddings" / name).read_bytes() == (tmp_path / "whole" / "embeddings" / name).read_bytes()
    summary = json.loads((merged / "run_summary.json").read_text())
    assert [p["part"] for p in summary["parts"]] == ["1/2", "2/2"]
    assert summary["devices"] == ["part 1/2: cpu", "part 2/2: cpu"]
    assert set(summary["throughput_per_device"]) == {"part 1/2: cpu", "part 2/2: cpu"}
    assert summary["frames"] == sum(p["frames"] for p in summary["parts"])
    assert summary["sequences"]["records"] == 16
    report = (merged / "report.html").read_text()
    assert "part 1/2: cpu" in report and "part 2/2: cpu" in report


# --------------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def three_parts(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("three_parts")
    source = reads_input(root / "in", records=10)
    for k in (1, 2, 3):
        assert cli_part(source, root / f"p{k}", f"{k}/3") == 0
    return source, [root / f"p{k}" for k in (1, 2, 3)]


def refused(capsys, folders: list[Path], out: Path, *expected: str) -> None:
    capsys.readouterr()
    assert main(["merge", *map(str, folders), "-o", str(out)]) == 2
    error = capsys.readouterr().err
    for text in expected:
        assert text in error, error
    assert not out.exists(), "a refused merge writes nothing"


def test_refused_a_missing_or_repeated_part(tmp_path, capsys, three_parts):
    _, (p1, p2, p3) = three_parts
    refused(capsys, [p1, p3], tmp_path / "out", "part(s) 2 of 3 missing")
    copy = tmp_path / "copy_of_p2"
    shutil.copytree(p2, copy)
    refused(capsys, [p1, p2, copy, p3], tmp_path / "out", "part 2/3 is given twice", str(copy))
    refused(capsys, [p1, p2, p2, p3], tmp_path / "out", "are the same folder")


def test_refused_parts_of_another_n_or_unfinished(tmp_path, capsys, three_parts):
    source, (p1, p2, p3) = three_parts
    assert cli_part(source, tmp_path / "q", "2/2") == 0
    refused(capsys, [p1, tmp_path / "q", p3], tmp_path / "out", "part 1/3 but", "part 2/2", "different N")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(p2, unfinished)
    (unfinished / PART_NAME).unlink()  # as a part killed before its end leaves it
    refused(capsys, [p1, unfinished, p3], tmp_path / "out", "the part has not finished")


@pytest.mark.parametrize("change,expected", [
    (["-m", "500"], "-m/--chunk-len: 300 in part 1/3, 500 in part 2/3"),
    (["--precision", "bf16"], "--precision (as resolved): \"float32\" in part 1/3, \"bfloat16\" in part 2/3"),
    (["--batch-tokens", "4096"], "--batch-tokens: auto in part 1/3, 4096 in part 2/3"),
    (["-t", "THREADS+1"], "-t/--threads (on the CPU)"),
    (["--classifier", "TINY"], "the classifier: demo stand-in in part 1/3"),
])
def test_refused_parts_of_other_settings(tmp_path, capsys, three_parts, tiny_models, change, expected):
    source, (p1, _, p3) = three_parts
    replace = {"TINY": str(tiny_models.classifier), "THREADS+1": str(torch.get_num_threads() + 1)}
    change = [replace.get(arg, arg) for arg in change]
    other = tmp_path / "other"
    assert cli_part(source, other, "2/3", *change) == 0
    refused(capsys, [p1, other, p3], tmp_path / "out", "are parts of different runs", expected)


def test_refused_parts_of_another_input_or_a_changed_input(tmp_path, capsys, three_parts):
    source, (p1, p2, p3) = three_parts
    other = reads_input(tmp_path / "in", records=12)
    assert cli_part(other, tmp_path / "other", "2/3") == 0
    refused(capsys, [p1, tmp_path / "other", p3], tmp_path / "out", "the input file differs")
    # the input the parts were computed from, changed afterwards: the merge reads it again
    copies = []
    for folder in (p1, p2, p3):
        shutil.copytree(folder, tmp_path / f"c{folder.name}")
        copies.append(tmp_path / f"c{folder.name}")
    original = source.read_bytes()
    try:
        source.write_bytes(original + b">late\nACGTACGTACGTACGT\n")
        refused(capsys, copies, tmp_path / "out", "when the parts were computed")
    finally:
        source.write_bytes(original)


def test_a_damaged_shard_stops_the_merge_without_result_files(tmp_path, three_parts):
    _, parts = three_parts
    copies = [Path(shutil.copytree(p, tmp_path / p.name)) for p in parts]
    shard = sorted((copies[1] / STORE_DIRNAME).glob("shard_*.npz"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    assert main(["merge", *map(str, copies), "-o", str(tmp_path / "out"), "-q"]) == 5
    assert not any((tmp_path / "out" / name).exists() for name in RESULT_FILES)
    assert shard.exists(), "the merge leaves the part's files as they are"


def test_a_part_resumes_from_its_store_and_merges_the_same(tmp_path):
    """Interrupted after some shards, rerun: the part resumes and the merge gives the same bytes."""
    from test_resume_truth import StopAfter

    source = reads_input(tmp_path / "in", records=16)
    whole = config(source, tmp_path / "whole", 300, 250)
    pipeline.run(whole, Monitor())
    part = RunConfig(**{**whole.__dict__, "out_dir": tmp_path / "p1", "part": PartSpec(1, 2)})
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(part, StopAfter(tmp_path / "p1" / STORE_DIRNAME, 1))
    assert not (tmp_path / "p1" / PART_NAME).exists()
    resumed = pipeline.run(part, Monitor())
    assert resumed.resumed_shards >= 1
    compute_parts(whole, tmp_path, 2)  # 1of2 (fresh) and 2of2
    pipeline.merge([tmp_path / "p1", tmp_path / "2of2"], tmp_path / "merged", Monitor())
    assert result_bytes(tmp_path / "merged") == result_bytes(tmp_path / "whole")


@pytest.mark.parametrize("key,value,expected", [
    ("batch_tokens", 65536, "batches of 8192 tokens in part 1/3, 65536 in part 2/3"),
    ("device_kind", "cuda", "computed on cpu in part 1/3, cuda in part 2/3"),
])
def test_refused_parts_computed_with_other_batches_or_devices(tmp_path, capsys, three_parts, key, value, expected):
    """What the machine chose (not in the settings): part 2 as a GPU with more memory, or any
    GPU, would have recorded it."""
    _, (p1, p2, p3) = three_parts
    other = Path(shutil.copytree(p2, tmp_path / "other"))
    record = json.loads((other / PART_NAME).read_text())
    (other / PART_NAME).write_text(json.dumps({**record, key: value}))
    refused(capsys, [p1, other, p3], tmp_path / "out", "are parts of different runs", expected)
