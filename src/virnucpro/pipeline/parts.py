"""Parts and merges: a part computes every N-th shard of the whole run's plan and keeps its
store with part.json; a merge takes each shard from the part that holds it into the whole
run's own writing code, so the bytes are those of a whole run."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from virnucpro.config import PartSpec, RunConfig
from virnucpro.engine.sharding import Shard, plan_shards
from virnucpro.errors import CheckpointMismatch, InputError
from virnucpro.layout import (
    METRICS_NAME,
    SUMMARY_NAME,
    RunLayout,
    chunk_of,
    prepare_result_dir,
    remove_created_folder,
    remove_stale_temporaries,
)
from virnucpro.monitoring.events import Monitor
from virnucpro.monitoring.gpu import merge_metrics
from virnucpro.monitoring.summary import refuse_another_input
from virnucpro.pipeline.common import ResultSource, RunCounts
from virnucpro.pipeline.outcomes import RunOutcome
from virnucpro.pipeline.writing import finish, stream_of, write_results
from virnucpro.predict.task import DeviceInfo, frame_cost
from virnucpro.stages.calls import CallRule
from virnucpro.stages.read import InputState
from virnucpro.stages.reuse_original import OriginalRun
from virnucpro.stages.types import Frame, Record
from virnucpro.stages.write import IntermediateFiles
from virnucpro.store import PartRecord, PartSet, RunLock, ShardResult


@dataclass
class PartCounts:
    """What a part sees of the whole input as it streams it, and its own share."""

    part: PartSpec
    records: int = 0
    chunks: int = 0
    shards: int = 0
    frames: int = 0
    own_tokens: int = 0
    own_chunks: int = 0
    _last_chunk: str | None = None

    def add(self, record: Record, chunks: int) -> None:
        """As the stream's record sink: every record read, with its number of chunks."""
        self.records += 1
        self.chunks += chunks

    def own(self, shards: Iterable[Shard[Frame]]) -> Iterator[Shard[Frame]]:
        """The part's shards of the plan, counting every shard planned."""
        for shard in shards:
            self.shards += 1
            self.frames += len(shard.items)
            if self.part.owns(shard.index):
                self.own_tokens += shard.cost
                yield shard

    def computed(self, result: ShardResult) -> None:
        for frame_id in result.ids:  # a chunk's frames are consecutive: count where the chunk changes
            chunk = chunk_of(frame_id)
            self.own_chunks += chunk != self._last_chunk
            self._last_chunk = chunk


def predict_part(config: RunConfig, layout: RunLayout, monitor: Monitor, started: InputState,
                  original: OriginalRun, computed: ResultSource, done: RunCounts) -> PartCounts:
    """Part K/N: the whole input streamed and cut into the whole run's shards, but only the
    part's own computed (or taken from the store). Nothing is written but the store."""
    counts = PartCounts(config.part)
    frames = stream_of(config, layout, monitor, IntermediateFiles(None), started, counts, original)
    for result in computed(counts.own(plan_shards(frames, frame_cost, config.shard_tokens))):
        done.frames += len(result.ids)
        done.shards += 1
        counts.computed(result)
    return counts


def part_record(config: RunConfig, parameters: dict, device_kind: str, counts: PartCounts,
                 done: RunCounts) -> PartRecord:
    info = done.info
    return PartRecord(
        k=config.part.k, n=config.part.n, input=str(config.input.resolve()), parameters=parameters,
        batch_tokens=info.batch_tokens, device_kind=device_kind, dtype=info.dtype,
        feature_dims=list(info.feature_dims), demo_models=list(info.demo_models),
        embeddings=config.save_embeddings, shards=counts.shards, frames=counts.frames, chunks=counts.chunks,
        records=counts.records, part_shards=done.shards, part_frames=done.frames, part_tokens=counts.own_tokens,
        part_chunks=counts.own_chunks)


def merge(folders: list[Path], out_dir: Path, monitor: Monitor, *, force: bool = False,
          calls: CallRule = CallRule()) -> RunOutcome:
    """The N parts of a run -> the files a whole run writes. The input is streamed again and
    cut into the same shards; each shard's results come from the part that holds it, checked
    to be exactly that shard's frames, and go through the whole run's own writing code.
    force: replace the results of another input in `out_dir`; calls: the per-sequence rule
    (made here: the parts hold frame scores only)."""
    start = time.perf_counter()
    parts = PartSet(folders)  # every refusal, before anything is written
    if any(Path(out_dir).resolve() == folder.resolve() for folder in parts.folders):
        raise InputError(f"{out_dir} is one of the parts: write the merged results to a folder of their own")
    config = _merged_config(parts, Path(out_dir), calls)
    layout = config.layout
    refuse_another_input(layout.result_dir, str(config.input.resolve()), force=force, warn=monitor.warn)
    created = prepare_result_dir(layout.result_dir)
    try:
        with RunLock(layout.lock):
            done = _merge_locked(config, layout, monitor, parts)
            seconds = time.perf_counter() - start
            monitor.emit("run_finished", frames=done.frames, seconds=seconds)  # summary, report
    except BaseException:
        remove_created_folder(layout.result_dir, created)
        raise
    return RunOutcome(str(layout.result_dir), done.frames, done.shards, 0, seconds,
                      f"{parts.record.n} part(s)", done.info.dtype, done.info.demo_models, done.calls)


def _merged_config(parts: PartSet, out_dir: Path, calls: CallRule) -> RunConfig:
    """The settings the parts were computed with, as far as writing the results needs them."""
    record, p = parts.record, parts.record.parameters
    return RunConfig(input=Path(record.input), chunk_len=p["chunk_len"], out_dir=out_dir, reference=p["reference"],
                     demo=bool(record.demo_models), batch_tokens=record.batch_tokens, shard_tokens=p["shard_tokens"],
                     compile=p["compile"], rna_as_dna=p["rna_as_dna"],
                     save_embeddings=all(r.embeddings for r in parts.records),
                     min_virus_fraction=calls.min_virus_fraction, threshold=calls.threshold)


def _merge_locked(config: RunConfig, layout: RunLayout, monitor: Monitor, parts: PartSet) -> RunCounts:
    record = parts.record
    info = DeviceInfo(dict(record.parameters["models"]), tuple(record.demo_models), record.dtype,
                      tuple(record.feature_dims), record.batch_tokens)
    remove_stale_temporaries(layout.result_dir)
    monitor.info(f"merging the {record.n} part(s) of {config.input} ({record.frames:,} frames in "
                 f"{record.shards:,} shards)")
    monitor.emit("run_started", input=config.input_label, input_source=str(config.input.resolve()),
                 result_dir=str(layout.result_dir), devices=[], dtype=info.dtype, parameters=config.describe(),
                 models=dict(info.identity))
    if info.demo_models:
        monitor.warn(f"DEMO MODE: the parts used random stand-in models for {', '.join(info.demo_models)}; "
                     "predictions are NOT biologically meaningful")
    if not config.save_embeddings and any(r.embeddings for r in parts.records):
        monitor.warn("no embeddings/ folder: only some parts were computed with --save-embeddings ("
                     + ", ".join(r.name for r in parts.records if not r.embeddings) + " without)")
    done = write_results(config, layout, monitor, None, None, _from_parts(parts, config.save_embeddings, monitor),
                    RunCounts(info))
    finish(config, layout, monitor, None, done)
    monitor.emit("parts_merged", parts=[{"part": f"{r.k}/{r.n}", "folder": str(folder),
                                         "summary": _read_summary(folder / SUMMARY_NAME)}
                                        for folder, r in zip(parts.folders, parts.records)])
    merge_metrics([(r.name, folder / METRICS_NAME) for folder, r in zip(parts.folders, parts.records)],
                  layout.result(METRICS_NAME))
    return done


def _from_parts(parts: PartSet, need_embeddings: bool, monitor: Monitor) -> ResultSource:
    """Each shard of the plan from the part that holds it: exactly its frames, or the merge stops."""
    def results(shards: Iterable[Shard[Frame]]) -> Iterator[ShardResult]:
        count = 0
        for shard in shards:
            result = parts.load(shard.index, [f.id for f in shard.items], need_embeddings=need_embeddings)
            if result is None:
                raise CheckpointMismatch(
                    f"{parts.shard_path(shard.index)}: damaged, or not the frames of shard {shard.index} of "
                    f"{parts.record.input}; rerun the part in {parts.folder_of(shard.index)} with --restart")
            monitor.emit("shard_done", index=shard.index, frames=len(result.ids), tokens=shard.cost,
                         seconds=0.0, device=None, resumed=True)
            count += 1
            yield result
        if count != parts.record.shards:  # raised before the result files are moved into place
            raise CheckpointMismatch(f"the input now makes {count} shards, the parts hold {parts.record.shards}; "
                                     "recompute the parts")
    return results


def _read_summary(path: Path) -> dict | None:
    """A part's run_summary.json, or None (a part's account is a nicety, not a result)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
