"""predict --samples SHEET: every sample of a sheet in one process, the models loaded once;
each sample's folder holds what a single run of it writes; a bad sample fails alone, named."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from test_parts_merge import RESULT_FILES, reads_input
from test_resume_truth import StopAfter

from virnucpro import pipeline
from virnucpro.cli import main
from virnucpro.config import RunConfig, read_sample_sheet
from virnucpro.layout import STORE_DIRNAME
from virnucpro.monitoring.events import Monitor
from virnucpro.predict.task import make_frame_task

OPTIONS = ["-m", "300", "--demo", "--devices", "cpu", "--shard-tokens", "300", "-q"]


def sheet(tmp_path: Path, rows: list[tuple[str, str]], header: bool = True) -> Path:
    path = tmp_path / "samples.tsv"
    path.write_text(("sample\tpath\n" if header else "") + "".join(f"{name}\t{file}\n" for name, file in rows))
    return path


def test_three_samples_one_bad_the_others_as_single_runs(tmp_path, capsys):
    a = reads_input(tmp_path / "a", records=12)
    c = reads_input(tmp_path / "c", records=9, name="c.fa")
    bad = tmp_path / "bad.fa"
    bad.write_text(">p1\nMKVLAAGIVGLLLAQW\n")  # a protein: refused, naming the file
    code = main(["predict", "--samples", str(sheet(tmp_path, [("a", "a/reads.fa"), ("bad", "bad.fa"),
                                                             ("c", str(c))])), "-o", str(tmp_path / "out"), *OPTIONS])
    err = capsys.readouterr().err
    assert code == 2
    assert "sample bad:" in err and "1 of 3 samples failed" in err
    assert not (tmp_path / "out" / "bad").exists()
    for name, source in (("a", a), ("c", c)):
        assert main(["predict", str(source), "-o", str(tmp_path / f"single_{name}"), *OPTIONS]) == 0
        got, single = tmp_path / "out" / name, tmp_path / f"single_{name}"
        assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in single.iterdir())
        for file in RESULT_FILES:
            assert (got / file).read_bytes() == (single / file).read_bytes(), (name, file)


def test_models_load_once_and_a_sample_failing_while_streamed_leaves_the_next_intact(tmp_path):
    """The second sample's bad record is found while it streams, its worker already busy
    (the engine's side of this, settle(), is tested in test_engine_scheduler); the third
    sample runs on the same worker and gives the first one's bytes."""
    loads = []

    def counting(config, device):
        loads.append(device)
        return make_frame_task(config, device)

    good = reads_input(tmp_path / "good", records=14)
    late = tmp_path / "late_bad.fa"
    late.write_text(good.read_text() + ">broken\nACGT12ACGT\n")
    configs = [(name, RunConfig(input=path, chunk_len=300, out_dir=tmp_path / "out" / name, demo=True,
                                devices="cpu", shard_tokens=200))
               for name, path in (("one", good), ("two", late), ("three", good))]
    outcomes = pipeline.run_samples(configs, lambda name: nullcontext(Monitor()), task_factory=counting)
    assert len(loads) == 1
    assert [o.error is None for o in outcomes] == [True, False, True]
    assert "broken" in str(outcomes[1].error)
    assert not (tmp_path / "out" / "two" / STORE_DIRNAME).exists()  # a broken input keeps nothing
    for file in RESULT_FILES:
        assert (tmp_path / "out" / "one" / file).read_bytes() == (tmp_path / "out" / "three" / file).read_bytes()


def test_each_sample_resumes_on_its_own(tmp_path):
    a, b = reads_input(tmp_path / "a", records=12), reads_input(tmp_path / "b", records=16)
    configs = [(name, RunConfig(input=path, chunk_len=300, out_dir=tmp_path / "out" / name, demo=True,
                                devices="cpu", shard_tokens=200)) for name, path in (("a", a), ("b", b))]
    store_b = tmp_path / "out" / "b" / STORE_DIRNAME

    def stop_b(name):
        return nullcontext(StopAfter(store_b, 2) if name == "b" else Monitor())

    try:
        pipeline.run_samples(configs, stop_b)
    except KeyboardInterrupt:
        pass
    assert (tmp_path / "out" / "a" / RESULT_FILES[0]).is_file(), "a finished sample's results are kept"
    assert len(list(store_b.glob("shard_*.npz"))) >= 2
    outcomes = pipeline.run_samples(configs, lambda name: nullcontext(Monitor()))
    assert outcomes[0].outcome.resumed_shards == 0 and outcomes[1].outcome.resumed_shards >= 2
    single = tmp_path / "single_b"
    pipeline.run(RunConfig(input=b, chunk_len=300, out_dir=single, demo=True, devices="cpu", shard_tokens=200), Monitor())
    for file in RESULT_FILES:
        assert (tmp_path / "out" / "b" / file).read_bytes() == (single / file).read_bytes()


def test_the_sample_sheet(tmp_path):
    (tmp_path / "x.fa").write_text(">r\nACGT\n")
    path = sheet(tmp_path, [("s1", "x.fa"), ("s2", "/abs/y.fa")], header=False)
    assert [(s.name, s.path) for s in read_sample_sheet(path)] == [("s1", tmp_path / "x.fa"),
                                                                   ("s2", Path("/abs/y.fa"))]
    for rows, message in (([("s1", "x.fa"), ("s1", "x.fa")], "listed twice"),
                          ([("../up", "x.fa")], "sample name '../up'"),
                          ([], "lists no samples")):
        path = sheet(tmp_path, rows)
        try:
            read_sample_sheet(path)
        except Exception as exc:  # noqa: BLE001 - InputError
            assert message in str(exc) and type(exc).__name__ == "InputError"
        else:
            raise AssertionError(f"{rows} accepted")
    (tmp_path / "spaces.tsv").write_text("s1 x.fa\n")
    assert main(["predict", "--samples", str(tmp_path / "spaces.tsv"), "-o", str(tmp_path / "o")]) == 2
