"""The shipped Snakemake workflow: `virnucpro workflow init` writes it out; run for real with
the local profile (2 samples x 3 parts, demo models), one part killed mid-job and the
workflow rerun, the merged results are the bytes of single runs; planned with the Slurm
profile, part jobs ask for a GPU and merge jobs for none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_parts_merge import RESULT_FILES, reads_input

from virnucpro.cli import main
from virnucpro.errors import InputError
from virnucpro.workflow import FILES, part_count, predict_options

pytest.importorskip("snakemake", reason="snakemake (test extra, Python >= 3.11) is not installed")

SHARD_TOKENS = "300"
OPTIONS = ["-m", "300", "--demo", "--devices", "cpu", "--shard-tokens", SHARD_TOKENS, "-q"]

# Stands in for the `virnucpro` command: runs it, but SIGKILLs the predict process of one
# part as soon as that part has stored a shard (once: a marker file remembers), as a node
# failure or a pre-empted Slurm job would.
KILLER = """
import subprocess, sys, time
from pathlib import Path

args = sys.argv[1:]
child = subprocess.Popen([sys.executable, "-m", "virnucpro", *args])
folder = args[args.index("-o") + 1] if "-o" in args else None
marker = Path({marker!r})
if folder == {target!r} and not marker.exists():
    store = Path(folder) / ".virnucpro_store"
    while child.poll() is None:
        if any(store.glob("shard_*.npz")):
            child.kill()
            child.wait()
            marker.write_text("killed after it stored a shard")
            sys.exit(137)
        time.sleep(0.005)
sys.exit(child.wait())
"""


def workflow(tmp_path: Path, samples: dict[str, int]) -> Path:
    folder = tmp_path / "wf"
    assert main(["workflow", "init", str(folder)]) == 0
    for name, records in samples.items():
        reads_input(folder / "data", records=records, name=f"{name}.fa")
    (folder / "samples.tsv").write_text("sample\tpath\n" + "".join(f"{n}\tdata/{n}.fa\n" for n in samples))
    return folder


def snakemake(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=folder, capture_output=True, text=True,
                          timeout=400)


def test_init_writes_the_workflow_and_keeps_an_edited_one(tmp_path, capsys):
    folder = tmp_path / "wf"
    assert main(["workflow", "init", str(folder)]) == 0
    assert all((folder / name).is_file() for name in FILES)
    (folder / "Snakefile").write_text("# edited\n")
    (folder / "samples.tsv").write_text("s1\tdata/s1.fa\n")
    assert main(["workflow", "init", str(folder)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (folder / "Snakefile").read_text() == "# edited\n"
    assert main(["workflow", "init", str(folder), "--force"]) == 0
    assert "rule part:" in (folder / "Snakefile").read_text()
    assert (folder / "samples.tsv").read_text() == "s1\tdata/s1.fa\n", "the user's sheet is kept"


def test_parts_per_sample_and_the_options_of_part_jobs(tmp_path):
    data = tmp_path / "x.fa"
    data.write_bytes(b"A" * 2500)
    assert [part_count(data, setting) for setting in (3, "3", "1K", "1k", "2.5KB", "1G")] == [3, 3, 3, 3, 1, 1]
    for bad in (0, "lots", "-1M"):
        with pytest.raises(InputError):
            part_count(data, bad)
    assert predict_options({"chunk_len": 300, "precision": "auto", "esm_model": "/shared/esm 3b.pt",
                            "classifier": "", "extra": "--demo"}) == \
        "-m 300 --precision auto --esm-model '/shared/esm 3b.pt' --demo"


def test_the_slurm_profile_asks_a_gpu_for_part_jobs_and_none_for_merges(tmp_path):
    folder = workflow(tmp_path, {"A": 4, "B": 4})
    plan = snakemake(folder, "--dry-run", "--profile", "profiles/slurm", "--config", "parts=2", "extra=--demo")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    resources: dict[str, list[str]] = {}
    rule = None
    for line in (plan.stdout + plan.stderr).splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            resources.setdefault(rule, []).append(line)
            rule = None
    assert len(resources["part"]) == 4 and len(resources["merge"]) == 2
    for line in resources["part"]:
        assert all(key in line for key in ("gpu=1", "cpus_per_gpu=", "mem_mb=", "runtime=")), line
    for line in resources["merge"]:
        assert "gpu" not in line and "mem_mb=" in line and "runtime=" in line, line


def test_the_workflow_runs_a_killed_part_resumes_and_the_results_are_single_runs_bytes(tmp_path):
    folder = workflow(tmp_path, {"A": 24, "B": 30})
    marker = tmp_path / "killed"
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER.format(marker=str(marker), target="parts/B/2of2"))
    # threads=1: on the CPU the bytes depend on the thread count (the part jobs get -t from
    # their threads); the single runs below use one thread too
    # --resources gpu=2: two part jobs at a time (they run on the CPU here)
    run = ["--profile", "profiles/local", "--cores", "2", "--resources", "gpu=2", "--retries", "0",
           "--config", "parts=2", "chunk_len=300",
           f"shard_tokens={SHARD_TOKENS}", "threads=1", "extra=--demo --devices cpu",
           f"command={sys.executable} {killer}"]
    first = snakemake(folder, *run)
    assert marker.exists(), first.stdout + first.stderr
    assert first.returncode != 0
    assert not (folder / "parts/B/2of2/part.json").exists()
    assert (folder / "results/A/prediction_results.txt").is_file(), "the other sample went on (keep-going)"
    second = snakemake(folder, *run)
    assert second.returncode == 0, second.stdout + second.stderr
    assert json.loads((folder / "parts/B/2of2/run_summary.json").read_text())["resumed_shards"] >= 1
    rows = (folder / "results/samples.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:2] == ["sample", "result_dir"]
    assert [row.split("\t")[:2] for row in rows[1:]] == [["A", str(folder.resolve() / "results/A")],
                                                        ["B", str(folder.resolve() / "results/B")]]
    for name in ("A", "B"):
        assert main(["predict", str(folder / "data" / f"{name}.fa"), "-o", str(tmp_path / name), "-t", "1",
                     *OPTIONS]) == 0
        single = tmp_path / name
        for file in RESULT_FILES:
            assert (folder / "results" / name / file).read_bytes() == (single / file).read_bytes(), (name, file)
