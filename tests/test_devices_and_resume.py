"""Several devices, checkpoints and interruptions, on CPU workers with tiny demo models.

The reference everywhere is an uninterrupted run on ONE device, in-process: outputs of
every other run (2 worker processes, a worker killed, the whole run killed or terminated
and rerun) must be byte-identical to it.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import fault_tasks
import numpy as np
import pytest

from virnucpro import pipeline
from virnucpro.cli import main
from virnucpro.config import RunConfig
from virnucpro.layout import STORE_DIRNAME
from virnucpro.monitoring.events import Monitor

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ecoli_reads150.fa"
RESULT_FILES = ("prediction_results.txt", "prediction_results_highestscore.csv")
SHARD_TOKENS = "600"  # ~12 frames of 49 aa: a few dozen shards on this input
LONG = 400  # reads (49 shards): long enough to be signalled mid-run, also on one device


def small_input(folder: Path, records: int = 120) -> Path:
    """The first `records` reads of the example (~170 frames at -m 300)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = EXAMPLE.read_text().splitlines()[: 2 * records]
    path = folder / "reads.fa"
    path.write_text("\n".join(lines) + "\n")
    return path


def args(sample: Path, *extra: str) -> list[str]:
    return ["predict", str(sample), "-m", "300", "--demo", "-q", "--shard-tokens", SHARD_TOKENS, *extra]


def outputs(result_dir: Path) -> dict[str, bytes]:
    return {name: (result_dir / name).read_bytes() for name in RESULT_FILES}


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """Outputs of an uninterrupted in-process run on ONE device, by the number of reads of
    the input (each computed once for the module)."""
    computed: dict[int, dict[str, bytes]] = {}

    def outputs_for(records: int) -> dict[str, bytes]:
        if records not in computed:
            sample = small_input(tmp_path_factory.mktemp(f"one_device_{records}"), records)
            assert main(args(sample, "--devices", "cpu")) == 0
            computed[records] = outputs(sample.parent / "reads_merged")
        return computed[records]

    return outputs_for


@pytest.fixture(scope="module")
def reference(one_device) -> dict[str, bytes]:
    result = one_device(120)
    assert result["prediction_results.txt"].count(b"\n") > 150
    return result


def test_two_cpu_workers_match_one_device(tmp_path, reference, one_device):
    sample = small_input(tmp_path)
    assert main(args(sample, "--devices", "cpu,cpu")) == 0
    assert outputs(tmp_path / "reads_merged") == reference
    # a longer input, where CPU kernels would differ with the workers' thread count
    two = small_input(tmp_path / "two", LONG)
    assert main(args(two, "--devices", "cpu,cpu")) == 0
    assert outputs(tmp_path / "two" / "reads_merged") == one_device(LONG)
    assert not (tmp_path / "reads_merged" / STORE_DIRNAME).exists()


def test_killed_worker_is_replaced_and_output_unchanged(tmp_path, reference):
    sample = small_input(tmp_path)
    config = RunConfig(input=sample, chunk_len=300, demo=True, devices="cpu,cpu",
                       shard_tokens=int(SHARD_TOKENS))
    pipeline.run(config, Monitor(), task_factory=fault_tasks.frame_task_dies_once_on_shard_2)
    assert (tmp_path / "worker_died_on_shard_2").exists()  # a worker really was SIGKILLed
    assert outputs(tmp_path / "reads_merged") == reference


def test_damaged_checkpoint_shards_are_recomputed(tmp_path, reference):
    sample = small_input(tmp_path)
    config = RunConfig(input=sample, chunk_len=300, demo=True, devices="cpu",
                       shard_tokens=int(SHARD_TOKENS))
    store = tmp_path / "reads_merged" / STORE_DIRNAME

    class StopAfter(Monitor):  # interrupt the run once 6 shards are stored
        def emit(self, kind, **data):
            if kind == "shard_done" and len(list(store.glob("shard_*.npz"))) >= 6:
                raise KeyboardInterrupt
            super().emit(kind, **data)

    with pytest.raises(KeyboardInterrupt):
        pipeline.run(config, StopAfter())
    shards = sorted(store.glob("shard_*.npz"))
    assert len(shards) >= 6
    shards[0].write_bytes(shards[0].read_bytes()[:100])  # truncated
    shards[1].write_bytes(b"")  # empty
    np.savez(shards[2], ids=np.asarray(["other"]), score1=np.zeros(1, np.float32),
             score2=np.zeros(1, np.float32))  # ids of another input
    (store / ".shard_000009.npz.abc.tmp").write_bytes(b"half")  # a write cut short
    outcome = pipeline.run(config, Monitor())
    assert outcome.resumed_shards == len(shards) - 3
    assert outputs(tmp_path / "reads_merged") == reference


def test_save_embeddings_in_input_order(tmp_path, reference):
    import torch

    from virnucpro.models.bundle import load_bundle
    from virnucpro.predict.placement import place_predictor
    from virnucpro.predict.precision import Precision
    from virnucpro.stages.chunk import iter_chunks
    from virnucpro.stages.read import read_records
    from virnucpro.stages.translate import select_frames

    sample = small_input(tmp_path)
    assert main(args(sample, "--devices", "cpu,cpu", "--save-embeddings")) == 0
    result_dir = tmp_path / "reads_merged"
    assert outputs(result_dir) == reference
    folder = result_dir / "embeddings"
    ids = folder.joinpath("ids.txt").read_text().splitlines()
    rows = [line.split("\t")[0] for line in (result_dir / "prediction_results.txt").read_text().splitlines()[1:]]
    assert ids == rows
    dna = np.load(folder / "dnabert_s.npy", mmap_mode="r")
    protein = np.load(folder / "esm2.npy", mmap_mode="r")
    # reference: the whole input through one predictor call, no shards, no workers
    frames = select_frames(list(iter_chunks(read_records(sample), 300, on_empty=lambda _: None)))
    bundle = load_bundle(RunConfig(input=sample).models, 300, True)
    cpu = torch.device("cpu")
    expected = place_predictor(bundle, cpu, Precision.resolve("auto", cpu)).predictor.predict(
        frames, keep_embeddings=True)
    assert [f.id for f in frames] == ids
    np.testing.assert_allclose(dna, expected.dna_embeddings, rtol=0, atol=1e-5)
    np.testing.assert_allclose(protein, expected.protein_embeddings, rtol=0, atol=1e-5)
    assert not (result_dir / STORE_DIRNAME).exists()


# ------------------------------------------------------------------ whole-process signals

def cli(sample: Path, *extra: str, devices: str = "cpu,cpu") -> subprocess.Popen:
    # SIGINT back to its default in the child: a shell that starts pytest in the background
    # ignores it, children inherit that, and Python then installs no Ctrl-C handler at all.
    return subprocess.Popen([sys.executable, "-m", "virnucpro", *args(sample, "--devices", devices, *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_shards(store: Path, count: int, proc: subprocess.Popen, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while len(list(store.glob("shard_*.npz"))) < count:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize("sig,code,word,devices", [
    (signal.SIGTERM, 143, "terminated", "cpu,cpu"),
    (signal.SIGINT, 130, "interrupted", "cpu,cpu"),
    # one device: the worker is a thread of this process, still inside a kernel when stopped
    (signal.SIGTERM, 143, "terminated", "cpu"),
])
def test_signal_stops_cleanly_keeping_finished_shards(tmp_path, one_device, sig, code, word, devices):
    sample = small_input(tmp_path, records=LONG)
    store = tmp_path / "reads_merged" / STORE_DIRNAME
    proc = cli(sample, devices=devices)
    wait_for_shards(store, 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"virnucpro: {word}; finished shards are kept" in err
    kept = sorted(store.glob("shard_*.npz"))
    assert len(kept) >= 3
    assert not any((tmp_path / "reads_merged").glob("prediction_results*"))
    # resumed in this process on one device (outputs do not depend on the device count), which
    # saves CI a process start and two workers' imports
    assert main(args(sample, "--devices", "cpu")) == 0
    summary = json.loads((tmp_path / "reads_merged" / "run_summary.json").read_text())
    assert summary["resumed_shards"] >= len(kept)
    assert outputs(tmp_path / "reads_merged") == one_device(LONG)


@pytest.mark.slow
def test_kill_minus_nine_at_random_moments_then_rerun(tmp_path, reference):
    """5 runs killed with SIGKILL at random moments (seeded), each rerun to completion in
    the same folder: every final output equals the uninterrupted reference, so no frame was
    lost or duplicated whatever the moment of the kill."""
    rng = random.Random(20240605)
    sample = small_input(tmp_path)
    result_dir = tmp_path / "reads_merged"
    t0 = time.monotonic()
    proc = cli(sample)
    proc.communicate(timeout=120)
    full_run_s = time.monotonic() - t0
    for trial in range(5):  # 10 before: a minute of CI; the moments spread over the whole run
        shutil.rmtree(result_dir)
        proc = cli(sample)
        time.sleep(rng.uniform(0.0, full_run_s))
        proc.kill()
        proc.communicate(timeout=60)
        # the rerun may use any device count (outputs do not depend on it): one is quickest
        assert main(args(sample, "--devices", "cpu")) == 0, f"trial {trial}"
        assert outputs(result_dir) == reference, f"trial {trial}"
        leftovers = [p.name for p in result_dir.iterdir() if p.name.startswith(".")]
        assert leftovers == [], f"trial {trial}: {leftovers}"


def test_a_mix_of_the_cpu_and_gpus_is_refused(tmp_path):
    """CPU and GPU kernels round differently (and default to fp32 and bf16): results would
    depend on which device ran each shard. Refused whatever --precision says."""
    import torch

    from virnucpro.errors import InputError
    from virnucpro.predict.precision import check_one_device_kind

    mixed = [torch.device("cpu"), torch.device("cuda", 0)]
    for precision, shown in (("auto", r"cpu: float32, cuda:0: bfloat16"), ("fp32", r"cpu: float32, cuda:0: float32")):
        with pytest.raises(InputError, match=rf"mixes the CPU and GPUs \({shown}\)"):
            check_one_device_kind(mixed, precision, reference=False)
    check_one_device_kind([torch.device("cpu"), torch.device("cpu")], "auto", reference=False)
