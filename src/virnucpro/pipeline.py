"""The whole run on one screen.

  [standard input copied into the result folder]
  check the input opens (its first records: hints) -> the result folder holds no other input's
     results -> one worker per device loads the models, while the input's ids are
     checked for duplicates -> open the checkpoint store (fingerprint of input, parameters,
     models)
  records -> chunks -> frames (streamed; intermediates written on the way)
  -> shards of ~equal cost -> each shard: from the store, or run by a worker and stored
     (with the original VirNucPro's embeddings for the frames its files cover)
  -> result tables in input order, per-sequence calls [-> embeddings/] -> store discarded

Scaled out, the same pieces in other arrangements:
  - a part (--part K/N) streams the whole input alike but hands the workers only the shards
    i with i mod N = K-1, and keeps its store, with part.json beside it, instead of tables;
  - a merge streams the input again and takes each shard, in plan order, from the part that
    holds it, into the very code that writes a whole run's tables: so the bytes are the same;
  - a sample sheet runs each sample as a whole run on one set of workers (models load once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from virnucpro.config import PartSpec, RunConfig, file_identity, fingerprint_of
from virnucpro.engine.devices import resolve_devices
from virnucpro.engine.scheduler import DeviceReady, Engine, EngineEvent, Job, JobDone, JobStarted
from virnucpro.engine.sharding import Shard, plan_shards
from virnucpro.engine.worker import Task
from virnucpro.errors import CheckpointMismatch, InputError, ModelError, OutputError, WorkerFailed
from virnucpro.layout import (EMBEDDINGS_DIRNAME, METRICS_NAME, PART_NAME, PLOT_NAME, SEQUENCES_NAME, STDIN,
                              SUMMARY_NAME, VIRAL_FASTA_NAME, RunLayout, chunk_of, prepare_result_dir,
                              remove_created_folder, remove_quietly, remove_stale_temporaries)
from virnucpro.models.bundle import locate_models
from virnucpro.monitoring.events import Monitor
from virnucpro.monitoring.gpu import merge_metrics
from virnucpro.monitoring.summary import refuse_another_input
from virnucpro.predict.precision import Precision, check_one_device_kind
from virnucpro.predict.task import DeviceInfo, ShardWork, frame_cost, make_frame_task
from virnucpro.stages.calls import CallCounts, CallRule, SequenceCalls
from virnucpro.stages.embeddings import EmbeddingsWriter
from virnucpro.stages.read import InputState, check_input_opens, check_unique_ids
from virnucpro.stages.reuse_original import OriginalRun, original_identity
from virnucpro.stages.chunk import chunk_length_hint
from virnucpro.stages.stdin import Spool, spooled_stdin
from virnucpro.stages.stream import RnaRecords, stream_frames
from virnucpro.stages.types import Frame
from virnucpro.stages.write import IntermediateFiles, ResultWriter
from virnucpro.store import PartRecord, PartSet, RunLock, ShardResult, ShardStore, resumable

TaskFactory = Callable[[RunConfig, torch.device], Task]
# Where a run's shard results come from, given its shard plan: the workers (and the store),
# or the parts of a merge. Results are in plan order.
ResultSource = Callable[[Iterator[Shard[Frame]]], Iterator[ShardResult]]
# Failures that belong to one sample of a sheet: the others go on.
SAMPLE_ERRORS = (InputError, OutputError, CheckpointMismatch)


@dataclass(frozen=True)
class RunOutcome:
    result_dir: str
    frames: int
    shards: int
    resumed_shards: int
    seconds: float
    device: str
    dtype: str
    demo_models: tuple[str, ...]
    calls: CallCounts
    part: PartRecord | None = None  # what a part run (--part) computed


@dataclass(frozen=True)
class SampleOutcome:
    name: str
    outcome: RunOutcome | None = None
    error: Exception | None = None  # one of SAMPLE_ERRORS


def run(config: RunConfig, monitor: Monitor, *, restart: bool = False, force: bool = False,
        task_factory: TaskFactory = make_frame_task) -> RunOutcome:
    """One run, or one part of a run, on workers of its own. restart: discard a checkpoint
    store of another run; force: replace the results of another input in the result folder."""
    with Workers(task_factory) as workers:
        return run_on(workers, config, monitor, restart=restart, force=force)


def run_samples(samples: Iterable[tuple[str, RunConfig]],
                monitored: Callable[[str], contextlib.AbstractContextManager[Monitor]], *, restart: bool = False,
                force: bool = False, task_factory: TaskFactory = make_frame_task) -> list[SampleOutcome]:
    """Every sample of a sheet, one after the other, on one set of workers (the models load
    once, with the first sample). Each sample is a whole run into its own folder, watched by
    its own monitor (its own run summary and report), resuming from its own store. A sample
    whose input, output or checkpoints are at fault fails alone; the others go on."""
    outcomes = []
    with Workers(task_factory) as workers:
        for name, config in samples:
            with monitored(name) as monitor:
                try:
                    outcomes.append(SampleOutcome(name, run_on(workers, config, monitor, restart=restart,
                                                               force=force)))
                except SAMPLE_ERRORS as exc:
                    workers.settle()  # its shards in flight, before the next sample's
                    outcomes.append(SampleOutcome(name, error=exc))
    return outcomes


def run_on(workers: "Workers", config: RunConfig, monitor: Monitor, *, restart: bool = False,
           force: bool = False) -> RunOutcome:
    """One run on `workers`, which may have served earlier runs (their models stay loaded)."""
    if config.reads_stdin:
        return _run_on_stdin(workers, config, monitor, restart, force)
    return _run(workers, config, monitor, restart, force)


def _run_on_stdin(workers: "Workers", config: RunConfig, monitor: Monitor, restart: bool,
                  force: bool) -> RunOutcome:
    """`-`: standard input, copied into the result folder (stdin_merged/ unless -o) and run
    on from there; the copy goes whatever happens."""
    folder = config.result_dir
    created = prepare_result_dir(folder)
    try:
        with spooled_stdin(folder) as spool:
            spooled = dataclasses.replace(config, input=spool.path, input_name=STDIN)
            return _run(workers, spooled, monitor, restart, force, stdin=spool)
    except BaseException:
        remove_created_folder(folder, created)
        raise


def _run(workers: "Workers", config: RunConfig, monitor: Monitor, restart: bool, force: bool,
         stdin: Spool | None = None) -> RunOutcome:
    start = time.perf_counter()
    layout = config.layout
    with monitor.stage("check input"):
        input_stat = InputState.stat_of(config.input) if config.input.is_file() else None
        if hint := chunk_length_hint(check_input_opens(config.input), config.chunk_len, config.input_label):
            monitor.warn(hint)
    # Whose results the folder will hold: a path names a file; standard input, its content.
    source = stdin.identity if stdin else str(config.input.resolve())
    refuse_another_input(layout.result_dir, source, force=force, warn=monitor.warn)
    devices = workers.devices_for(config)
    threads = config.threads or torch.get_num_threads()
    # What the results will depend on, known before any model loads: a resume that cannot
    # be is refused at once, naming what differs.
    models = locate_models(config.models, config.chunk_len, config.demo).identity()
    parameters = config.fingerprint_parameters(
        models, stdin.identity if stdin else file_identity(config.input),
        Precision.resolve(config.precision, devices[0], config.reference).name,
        original_identity(layout.original_run), threads if devices[0].type == "cpu" else None)
    created = prepare_result_dir(layout.result_dir)  # before loading gigabytes of models
    try:
        with RunLock(layout.lock):
            stored = resumable(layout.store, parameters, restart=restart)
            remove_quietly(layout.result(PART_NAME))  # no finished part here until this run says so
            config = workers.pinned(config, stored)
            outcome = _run_locked(config, layout, monitor, restart, workers, parameters, input_stat,
                                  _Started(source, threads))
            seconds = time.perf_counter() - start
            monitor.emit("run_finished", frames=outcome.frames, seconds=seconds)  # summary, report
    except BaseException:
        remove_created_folder(layout.result_dir, created)  # if it is still empty
        raise
    return RunOutcome(str(layout.result_dir), outcome.frames, outcome.shards, outcome.resumed, seconds,
                      ", ".join(str(d) for d in devices), outcome.info.dtype, outcome.info.demo_models,
                      outcome.calls, outcome.part)


@dataclass(frozen=True)
class _Started:
    source: str  # the input the results are of (run_summary.json's input_source)
    threads: int  # CPU threads of the workers


@dataclass
class _Done:
    info: DeviceInfo
    frames: int = 0
    shards: int = 0
    resumed: int = 0
    calls: CallCounts = CallCounts()
    part: PartRecord | None = None


def _run_locked(config: RunConfig, layout: RunLayout, monitor: Monitor, restart: bool, workers: "Workers",
                parameters: dict, input_stat: tuple, started_as: _Started) -> _Done:
    # Each device's worker loads the models itself, once; the parent never touches a GPU.
    workers.launch(config, monitor, started_as.threads)
    # The id check reads the whole input: on a large file it takes about as long as the
    # models take to load, so it runs meanwhile. A duplicate still stops the run before
    # any output: the workers are stopped on the way out.
    with monitor.stage("check input ids (models loading)"):
        started = InputState(input_stat, check_unique_ids(config.input))
    with monitor.stage("load models"):
        info: DeviceInfo = workers.ready()
    if info.demo_models:
        monitor.warn(f"DEMO MODE: random stand-in models for {', '.join(info.demo_models)}; "
                     "predictions are NOT biologically meaningful")
    if info.identity != parameters["models"]:
        raise ModelError(f"a model file changed while it was being loaded ({info.identity} against "
                         f"{parameters['models']}); run again")
    workers.events.store = store = ShardStore(layout.store, fingerprint_of(parameters), restart=restart,
                                              parameters=parameters, facts={"batch_tokens": info.batch_tokens})
    for folder in {layout.result_dir, *(p.parent for p in layout.intermediates())}:
        remove_stale_temporaries(folder)  # of killed runs: results, spools, intermediates
    original = OriginalRun(layout.original_run, info.feature_dims, monitor.warn)
    devices = workers.devices
    monitor.info(f"predicting on {', '.join(str(d) for d in devices)} in {info.dtype}"
                 + (" (reference path)" if config.reference else "")
                 + (f", part {config.part} of the input's shards" if config.part else ""))
    monitor.emit("run_started", input=config.input_label, input_source=started_as.source,
                 result_dir=str(layout.result_dir),
                 devices=[str(d) for d in devices], dtype=info.dtype,
                 parameters=config.describe(), models=dict(info.identity))
    done = _Done(info)
    computed = _computed(workers.engine, store, config.save_embeddings, original, monitor, done)
    try:
        if config.part is None:
            _predict(config, layout, monitor, started, original, computed, done)
        else:
            counts = _predict_part(config, layout, monitor, started, original, computed, done)
    except InputError:
        # The input itself is broken: results for it are meaningless, keep nothing. (On
        # any other failure finished shards stay, so a rerun resumes where this one stopped.)
        remove_quietly(layout.store)
        raise
    if late := workers.engine.loading():
        monitor.info(f"{', '.join(late)} still loading when the work ran out; "
                     "the other device(s) did it all")
    if config.part is None:
        _finish(config, layout, monitor, original, done)
        store.discard()
    else:  # the store stays: it holds the part's results
        done.part = _part_record(config, parameters, devices[0].type, counts, done)
        done.part.save(layout.result_dir)
    return done


def _finish(config: RunConfig, layout: RunLayout, monitor: Monitor, original: OriginalRun | None,
            done: _Done) -> None:
    """With the result files in place: say what is worth knowing, and drop what an earlier
    run left there."""
    monitor.emit("sequences_called", **done.calls.as_dict())
    if done.frames == 0:
        monitor.warn(f"{config.input_label}: no chunk has a stop-free reading frame; the result files hold headers only")
    if original is not None and original.reused:
        monitor.info(f"reused the embeddings of {original.reused:,} frames from the original VirNucPro's files")
    if config.save_embeddings:
        monitor.info(f"embeddings written to {layout.result(EMBEDDINGS_DIRNAME)}/")
    # Files an earlier run left that would now sit beside results they do not describe.
    for stale in ([] if config.save_embeddings else [EMBEDDINGS_DIRNAME]) + [PLOT_NAME]:
        remove_quietly(layout.result(stale))


def _predict(config: RunConfig, layout: RunLayout, monitor: Monitor, started: InputState | None,
             original: OriginalRun | None, results: ResultSource, done: _Done) -> _Done:
    """Frames -> shards -> their results -> result tables, in input order. The one way the
    tables are written: by a whole run (results computed or stored) and by a merge (results
    from the parts)."""
    intermediates = layout.intermediates() if config.keep_intermediate else None
    rule = CallRule(config.min_virus_fraction, config.threshold)
    embeddings = (EmbeddingsWriter(layout.result_dir, done.info.feature_dims) if config.save_embeddings
                  else contextlib.nullcontext())
    with IntermediateFiles(intermediates) as files, ResultWriter(layout.result_dir) as writer, \
            SequenceCalls(layout.result_dir, rule) as calls, embeddings:
        frames = _frames(config, layout, monitor, files, started, calls.index, original)
        for result in results(plan_shards(frames, frame_cost, config.shard_tokens)):
            writer.add(result.ids, result.score1, result.score2)
            calls.add(result.ids, result.score1, result.score2)
            if config.save_embeddings:
                embeddings.add(result.ids, result.dna_embeddings, result.protein_embeddings)
            done.frames += len(result.ids)
            done.shards += 1
        writer.close()  # the original's two files first: the per-sequence files come after them
        done.calls = calls.finish(layout.result(SEQUENCES_NAME), layout.result(VIRAL_FASTA_NAME), config.input)
    return done


def _frames(config: RunConfig, layout: RunLayout, monitor: Monitor, files: IntermediateFiles,
            started: InputState | None, index, original: OriginalRun | None) -> Iterator[Frame]:
    """The input's kept frames, streamed, reporting on the way; `index` gets every record."""
    frames = stream_frames(
        config.input, config.chunk_len, files, rna_as_dna=config.rna_as_dna, started=started, index=index,
        on_rna=lambda rna: _warn_rna(config, monitor, rna),
        on_empty=lambda record: monitor.warn(f"{config.input_label}: record {record!r} is empty and was skipped"),
        on_progress=lambda read, total, frames, seconds: monitor.emit(
            "input_progress", bytes_read=read, bytes_total=total, frames=frames, seconds=seconds))
    if original is not None and layout.original_run.exists():
        monitor.info(f"found the original VirNucPro's files for {layout.prefix}: reusing their embeddings")
        frames = original.frames(frames)
    return frames


def _warn_rna(config: RunConfig, monitor: Monitor, rna: RnaRecords) -> None:
    names = ", ".join(rna.first) + (" ..." if rna.count > len(rna.first) else "")
    if config.rna_as_dna:
        monitor.info(f"{config.input_label}: read U as T in {rna.count:,} record(s) ({names}), as --rna-as-dna asks")
        return
    monitor.warn(f"{config.input_label}: {rna.count:,} record(s) hold U, as RNA does ({names}); like the original "
                 "VirNucPro, every codon holding a U is dropped, so their frames rarely show a stop and "
                 "most are kept: their calls mean little. Rerun with --rna-as-dna to read U as T")


def _computed(engine: Engine, store: ShardStore, need_embeddings: bool, original: OriginalRun,
              monitor: Monitor, done: _Done) -> ResultSource:
    """Shards -> their results: from the store, or computed by the workers (and stored)."""
    def results(shards: Iterable[Shard[Frame]]) -> Iterator[ShardResult]:
        # The engine numbers its jobs from 0 in output order; a part's shards are every N-th.
        jobs = (_job(number, shard, store, need_embeddings, original, monitor, done)
                for number, shard in enumerate(shards))
        return (result for _, result in engine.run(jobs))
    return results


def _job(number: int, shard: Shard[Frame], store: ShardStore, need_embeddings: bool, original: OriginalRun,
         monitor: Monitor, done: _Done) -> Job:
    frames = shard.items
    ids = [f.id for f in frames]
    label = f"shard {shard.index} (frames {ids[0]} .. {ids[-1]})"
    stored = store.load(shard.index, ids, need_embeddings=need_embeddings) if store.has(shard.index) else None
    if stored is not None:
        done.resumed += 1
        monitor.emit("shard_done", index=shard.index, frames=len(frames), tokens=shard.cost, seconds=0.0,
                     device=None, resumed=True)
        return Job(number, shard.cost, None, label, size=len(frames), done=stored)
    work = ShardWork(shard.index, frames, original.known_for(frames))
    return Job(number, shard.cost, work, label, size=len(frames))


# --------------------------------------------------------------------------- parts and merges


@dataclass
class _PartCounts:
    """What a part sees of the whole input as it streams it, and its own share."""

    part: PartSpec
    records: int = 0
    chunks: int = 0
    shards: int = 0
    frames: int = 0
    own_tokens: int = 0
    own_chunks: int = 0
    _last_chunk: str | None = None

    def add(self, record_id: str, length: int, chunks: int) -> None:
        """As a record index: every record read, with its number of chunks."""
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


def _predict_part(config: RunConfig, layout: RunLayout, monitor: Monitor, started: InputState,
                  original: OriginalRun, computed: ResultSource, done: _Done) -> _PartCounts:
    """Part K/N: the whole input streamed and cut into the whole run's shards, but only the
    part's own computed (or taken from the store). Nothing is written but the store."""
    counts = _PartCounts(config.part)
    frames = _frames(config, layout, monitor, IntermediateFiles(None), started, counts, original)
    for result in computed(counts.own(plan_shards(frames, frame_cost, config.shard_tokens))):
        done.frames += len(result.ids)
        done.shards += 1
        counts.computed(result)
    return counts


def _part_record(config: RunConfig, parameters: dict, device_kind: str, counts: _PartCounts,
                 done: _Done) -> PartRecord:
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


def _merge_locked(config: RunConfig, layout: RunLayout, monitor: Monitor, parts: PartSet) -> _Done:
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
    done = _predict(config, layout, monitor, None, None, _from_parts(parts, config.save_embeddings, monitor),
                    _Done(info))
    _finish(config, layout, monitor, None, done)
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


# --------------------------------------------------------------------------- the workers


class Workers:
    """One worker per device, each loading the models once, serving one run or every sample
    of a sheet in turn. Launched by the first run that needs them, after that run's own checks
    (a refused run loads nothing)."""

    def __init__(self, task_factory: TaskFactory) -> None:
        self.task_factory = task_factory
        self.events = _EngineEvents()
        self.engine: Engine | None = None
        self.devices: list[torch.device] = []
        self._info: DeviceInfo | None = None

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.engine is not None:
            self.engine.__exit__(exc_type, exc, tb)

    def devices_for(self, config: RunConfig) -> list[torch.device]:
        """The devices, resolved once (the samples of a sheet share them), checked against
        this run's precision."""
        if not self.devices:
            self.devices = resolve_devices(config.devices)
        check_one_device_kind(self.devices, config.precision, config.reference)
        return self.devices

    def pinned(self, config: RunConfig, stored: dict | None) -> RunConfig:
        """`config` with, on a resume, the batch budget its stored shards were computed with
        (batch composition can move a score's last digit), whatever the devices would choose
        now. Workers already serving an earlier sample keep theirs: a sample stored with
        another budget is refused, to be resumed alone."""
        budget = stored.get("batch_tokens") if stored else None
        if config.batch_tokens is not None or not budget:
            return config
        if self.engine is not None and self.ready().batch_tokens != budget:
            raise CheckpointMismatch(
                f"{config.result_dir}: its stored shards were computed in batches of {budget} tokens, these "
                f"workers use {self.ready().batch_tokens}; run this sample alone to resume it, or with --restart")
        return dataclasses.replace(config, batch_tokens=budget)

    def launch(self, config: RunConfig, monitor: Monitor, cpu_threads: int) -> None:
        """Start loading the models on every device (the first run only); the workers' events
        now go to this run's monitor."""
        self.events.monitor = monitor
        if self.engine is None:
            self.engine = Engine(functools.partial(self.task_factory, config), self.devices, on_event=self.events,
                                 warn=lambda message: self.events.monitor.warn(message), cpu_threads=cpu_threads)
            self.engine.launch()

    def ready(self) -> DeviceInfo:
        """The first device's models, once loaded (waited for once)."""
        if self._info is None:
            self._info = self.engine.wait_ready()
        return self._info

    def settle(self) -> None:
        """After a run that failed midway: let the shards in flight finish, for the next run."""
        if self.engine is not None:
            self.engine.settle()


class _EngineEvents:
    """What the engine reports, turned into the run's events: each device's start-up (checked
    against the first device's models and precision), each shard started, and each result,
    saved to the store the moment it arrives, whatever its place in the output order."""

    def __init__(self) -> None:
        self.monitor: Monitor | None = None  # the current run's
        self.store: ShardStore | None = None  # open once the models are known
        self._first: DeviceInfo | None = None

    def __call__(self, event: EngineEvent) -> None:
        if isinstance(event, DeviceReady):
            self._ready(event)
        elif isinstance(event, JobStarted):
            self.monitor.emit("shard_started", index=event.job.payload.index, frames=event.job.size,
                              tokens=event.job.cost, device=event.device)
        elif isinstance(event, JobDone):
            self.store.save(event.result)
            self.monitor.emit("shard_done", index=event.result.index, frames=event.job.size,
                              tokens=event.job.cost, seconds=event.seconds, device=event.device,
                              resumed=False, batches_halved=event.result.batches_halved,
                              redone_in_fp32=event.result.redone_in_fp32)

    def _ready(self, event: DeviceReady) -> None:
        info: DeviceInfo = event.info
        if self._first is not None and info.agreed() != self._first.agreed():
            raise WorkerFailed(f"the worker for {event.device} loaded other models or another precision "
                               f"than the first device: {info.agreed()} against {self._first.agreed()}")
        self._first = self._first or info
        startup = {**event.startup_s, **info.startup_s}
        startup["total"] = startup.pop("total", 0.0)  # last, as the log line reads it
        self.monitor.emit("device_ready", device=event.device, startup_s=startup, restarts=event.restarts)
