"""Resuming tells the truth: every option that can change a result byte is in the checkpoint
store's fingerprint; a refused resume names what differs and is decided before any model
loads; a resumed run reports the same totals as an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from example_reads import first_reads

from virnucpro import pipeline
from virnucpro.config import RunConfig
from virnucpro.errors import CheckpointMismatch
from virnucpro.layout import STORE_DIRNAME, SUMMARY_NAME
from virnucpro.monitoring import MonitorOptions, attach
from virnucpro.monitoring.events import Monitor
from virnucpro.predict.task import make_frame_task


def sample(folder: Path, records: int = 60) -> Path:
    return first_reads(folder, records)


def config(path: Path, **changes) -> RunConfig:
    options = dict(input=path, chunk_len=300, demo=True, devices="cpu", shard_tokens=600)
    options.update(changes)
    return RunConfig(**options)


class StopAfter(Monitor):
    """Interrupts the run (as Ctrl-C would) once `shards` shards are stored."""

    def __init__(self, store: Path, shards: int) -> None:
        super().__init__()
        self.store, self.shards = store, shards

    def emit(self, kind, **data):
        if kind == "shard_done" and len(list(self.store.glob("shard_*.npz"))) >= self.shards:
            raise KeyboardInterrupt
        super().emit(kind, **data)


def interrupted(cfg: RunConfig, shards: int = 3) -> Path:
    store = cfg.result_dir / STORE_DIRNAME
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(cfg, StopAfter(store, shards))
    assert len(list(store.glob("shard_*.npz"))) >= shards
    return store


def never_loads(config, device):
    raise AssertionError("the models were loaded before the resume was refused")


@pytest.mark.parametrize("change, named", [
    ({"shard_tokens": 900}, "--shard-tokens: 600 then, 900 now"),
    ({"batch_tokens": 4096}, "--batch-tokens: auto then, 4096 now"),
    ({"compile": False}, "--no-compile: true then, false now"),
    ({"precision": "bf16"}, '--precision (as resolved): "float32" then, "bfloat16" now'),
])
def test_a_refused_resume_names_the_option_and_both_values_before_loading(tmp_path, change, named):
    path = sample(tmp_path)
    interrupted(config(path))
    with pytest.raises(CheckpointMismatch) as refused:
        pipeline.run(config(path, **change), Monitor(), task_factory=never_loads)
    assert named in str(refused.value) and "--restart" in str(refused.value)


def test_a_changed_input_is_named_as_such(tmp_path):
    path = sample(tmp_path)
    interrupted(config(path))
    path.write_text(path.read_text().replace("A", "C", 1))
    with pytest.raises(CheckpointMismatch, match="the input file changed"):
        pipeline.run(config(path), Monitor(), task_factory=never_loads)


def test_a_resume_reuses_the_batch_budget_its_shards_were_computed_with(tmp_path, monkeypatch):
    """With --batch-tokens left to the device, the budget the stored shards were computed
    with is recorded and used again on resume: batch composition moves scores' last digits."""
    path = sample(tmp_path)
    store = interrupted(config(path))
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["batch_tokens"] == 8192  # what a CPU device chose
    manifest["batch_tokens"] = 1024  # as if another device had chosen it
    (store / "manifest.json").write_text(json.dumps(manifest))
    seen = []

    def factory(cfg, device):
        seen.append(cfg.batch_tokens)
        return make_frame_task(cfg, device)

    pipeline.run(config(path), Monitor(), task_factory=factory)
    assert seen == [1024]


def summary_of(cfg: RunConfig, monitor: Monitor) -> dict:
    session = attach(monitor, MonitorOptions(progress="off", report_sequences=None))
    try:
        pipeline.run(cfg, monitor)
    finally:
        session.close()
    return json.loads((cfg.result_dir / SUMMARY_NAME).read_text())


def test_a_resumed_run_reports_the_same_totals_as_an_uninterrupted_one(tmp_path):
    whole = summary_of(config(sample(tmp_path / "whole")), Monitor())
    path = sample(tmp_path / "resumed")
    interrupted(config(path))
    resumed = summary_of(config(path), Monitor())
    assert resumed["frames"] == whole["frames"] > 0 and resumed["tokens"] == whole["tokens"]
    assert resumed["resumed_shards"] >= 3 and 0 < resumed["resumed_frames"] < resumed["frames"]
    assert whole["resumed_shards"] == whole["resumed_frames"] == 0
    computed = sum(d["frames"] for d in resumed["throughput_per_device"].values())
    assert computed == resumed["frames"] - resumed["resumed_frames"]  # rates count computed work only
