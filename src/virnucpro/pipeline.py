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
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from virnucpro.config import RunConfig, file_identity, fingerprint_of
from virnucpro.engine.devices import resolve_devices
from virnucpro.engine.scheduler import DeviceReady, Engine, EngineEvent, Job, JobDone, JobStarted
from virnucpro.engine.sharding import Shard, plan_shards
from virnucpro.engine.worker import Task
from virnucpro.errors import InputError, ModelError, WorkerFailed
from virnucpro.layout import (EMBEDDINGS_DIRNAME, PLOT_NAME, SEQUENCES_NAME, STDIN, VIRAL_FASTA_NAME, RunLayout,
                              prepare_result_dir, remove_created_folder, remove_quietly,
                              remove_stale_temporaries)
from virnucpro.models.bundle import locate_models
from virnucpro.monitoring.events import Monitor
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
from virnucpro.store import RunLock, ShardStore, resumable

TaskFactory = Callable[[RunConfig, torch.device], Task]


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


def run(config: RunConfig, monitor: Monitor, *, restart: bool = False, force: bool = False,
        task_factory: TaskFactory = make_frame_task) -> RunOutcome:
    """restart: discard a checkpoint store of another run; force: replace the results of
    another input in the result folder."""
    if config.reads_stdin:
        return _run_on_stdin(config, monitor, restart, force, task_factory)
    return _run(config, monitor, restart, force, task_factory)


def _run_on_stdin(config: RunConfig, monitor: Monitor, restart: bool, force: bool,
                  task_factory: TaskFactory) -> RunOutcome:
    """`-`: standard input, copied into the result folder (stdin_merged/ unless -o) and run
    on from there; the copy goes whatever happens."""
    folder = config.result_dir
    created = prepare_result_dir(folder)
    try:
        with spooled_stdin(folder) as spool:
            spooled = dataclasses.replace(config, input=spool.path, input_name=STDIN)
            return _run(spooled, monitor, restart, force, task_factory, stdin=spool)
    except BaseException:
        remove_created_folder(folder, created)
        raise


def _run(config: RunConfig, monitor: Monitor, restart: bool, force: bool, task_factory: TaskFactory,
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
    devices = resolve_devices(config.devices)
    check_one_device_kind(devices, config.precision, config.reference)
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
            if stored and config.batch_tokens is None and stored.get("batch_tokens"):
                # the batches of the stored shards, whatever this device would choose
                config = dataclasses.replace(config, batch_tokens=stored["batch_tokens"])
            outcome = _run_locked(config, layout, monitor, restart, task_factory, devices, parameters, input_stat,
                                  _Started(source, threads))
            seconds = time.perf_counter() - start
            monitor.emit("run_finished", frames=outcome.frames, seconds=seconds)  # summary, report
    except BaseException:
        remove_created_folder(layout.result_dir, created)  # if it is still empty
        raise
    return RunOutcome(str(layout.result_dir), outcome.frames, outcome.shards, outcome.resumed, seconds,
                      ", ".join(str(d) for d in devices), outcome.info.dtype, outcome.info.demo_models,
                      outcome.calls)


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


def _run_locked(config: RunConfig, layout: RunLayout, monitor: Monitor, restart: bool,
                task_factory: TaskFactory, devices: list[torch.device], parameters: dict,
                input_stat: tuple, started_as: _Started) -> _Done:
    events = _EngineEvents(monitor)
    # Each device's worker loads the models itself, once; the parent never touches a GPU.
    with Engine(functools.partial(task_factory, config), devices, on_event=events, warn=monitor.warn,
                cpu_threads=started_as.threads) as engine:
        engine.launch()
        # The id check reads the whole input: on a large file it takes about as long as the
        # models take to load, so it runs meanwhile. A duplicate still stops the run before
        # any output: the workers are stopped on the way out.
        with monitor.stage("check input ids (models loading)"):
            started = InputState(input_stat, check_unique_ids(config.input))
        with monitor.stage("load models"):
            info: DeviceInfo = engine.wait_ready()
        if info.demo_models:
            monitor.warn(f"DEMO MODE: random stand-in models for {', '.join(info.demo_models)}; "
                         "predictions are NOT biologically meaningful")
        if info.identity != parameters["models"]:
            raise ModelError(f"a model file changed while it was being loaded ({info.identity} against "
                             f"{parameters['models']}); run again")
        events.store = store = ShardStore(layout.store, fingerprint_of(parameters), restart=restart,
                                          parameters=parameters, facts={"batch_tokens": info.batch_tokens})
        for folder in {layout.result_dir, *(p.parent for p in layout.intermediates())}:
            remove_stale_temporaries(folder)  # of killed runs: results, spools, intermediates
        original = OriginalRun(layout.original_run, info.feature_dims, monitor.warn)
        monitor.info(f"predicting on {', '.join(str(d) for d in devices)} in {info.dtype}"
                     + (" (reference path)" if config.reference else ""))
        monitor.emit("run_started", input=config.input_label, input_source=started_as.source,
                     result_dir=str(layout.result_dir),
                     devices=[str(d) for d in devices], dtype=info.dtype,
                     parameters=config.describe(), models=dict(info.identity))
        try:
            done = _predict(config, layout, monitor, engine, store, original, started, _Done(info))
        except InputError:
            # The input itself is broken: results for it are meaningless, keep nothing. (On
            # any other failure finished shards stay, so a rerun resumes where this one stopped.)
            remove_quietly(layout.store)
            raise
        if late := engine.loading():
            monitor.info(f"{', '.join(late)} still loading when the work ran out; "
                         "the other device(s) did it all")
    _finish(config, layout, monitor, store, original, done)
    return done


def _finish(config: RunConfig, layout: RunLayout, monitor: Monitor, store: ShardStore,
            original: OriginalRun, done: _Done) -> None:
    """With the result tables in place: say what is worth knowing, export the embeddings if
    asked, and drop the checkpoints."""
    monitor.emit("sequences_called", **done.calls.as_dict())
    if done.frames == 0:
        monitor.warn(f"{config.input_label}: no chunk has a stop-free reading frame; the result files hold headers only")
    if original.reused:
        monitor.info(f"reused the embeddings of {original.reused:,} frames from the original VirNucPro's files")
    if config.save_embeddings:
        monitor.info(f"embeddings written to {layout.result(EMBEDDINGS_DIRNAME)}/")
    # Files an earlier run left that would now sit beside results they do not describe.
    for stale in ([] if config.save_embeddings else [EMBEDDINGS_DIRNAME]) + [PLOT_NAME]:
        remove_quietly(layout.result(stale))
    store.discard()


def _predict(config: RunConfig, layout: RunLayout, monitor: Monitor, engine: Engine, store: ShardStore,
             original: OriginalRun, started: InputState, done: _Done) -> _Done:
    """Frames -> shards -> engine -> result tables, in input order."""
    intermediates = layout.intermediates() if config.keep_intermediate else None
    rule = CallRule(config.min_virus_fraction, config.threshold)
    embeddings = (EmbeddingsWriter(layout.result_dir, done.info.feature_dims) if config.save_embeddings
                  else contextlib.nullcontext())
    with IntermediateFiles(intermediates) as files, ResultWriter(layout.result_dir) as writer, \
            SequenceCalls(layout.result_dir, rule) as calls, embeddings:
        frames = stream_frames(
            config.input, config.chunk_len, files, rna_as_dna=config.rna_as_dna, started=started, index=calls.index,
            on_rna=lambda rna: _warn_rna(config, monitor, rna),
            on_empty=lambda record: monitor.warn(f"{config.input_label}: record {record!r} is empty and was skipped"),
            on_progress=lambda read, total, frames, seconds: monitor.emit(
                "input_progress", bytes_read=read, bytes_total=total, frames=frames, seconds=seconds))
        if layout.original_run.exists():
            monitor.info(f"found the original VirNucPro's files for {layout.prefix}: reusing their embeddings")
            frames = original.frames(frames)
        shards = plan_shards(frames, frame_cost, config.shard_tokens)
        jobs = (_job(shard, store, config.save_embeddings, original, monitor, done) for shard in shards)
        for _, result in engine.run(jobs):
            writer.add(result.ids, result.score1, result.score2)
            calls.add(result.ids, result.score1, result.score2)
            if config.save_embeddings:
                embeddings.add(result.ids, result.dna_embeddings, result.protein_embeddings)
            done.frames += len(result.ids)
            done.shards += 1
        writer.close()  # the original's two files first: the per-sequence files come after them
        done.calls = calls.finish(layout.result(SEQUENCES_NAME), layout.result(VIRAL_FASTA_NAME), config.input)
    return done


def _warn_rna(config: RunConfig, monitor: Monitor, rna: RnaRecords) -> None:
    names = ", ".join(rna.first) + (" ..." if rna.count > len(rna.first) else "")
    if config.rna_as_dna:
        monitor.info(f"{config.input_label}: read U as T in {rna.count:,} record(s) ({names}), as --rna-as-dna asks")
        return
    monitor.warn(f"{config.input_label}: {rna.count:,} record(s) hold U, as RNA does ({names}); like the original "
                 "VirNucPro, every codon holding a U is dropped, so their frames rarely show a stop and "
                 "most are kept: their calls mean little. Rerun with --rna-as-dna to read U as T")


def _job(shard: Shard[Frame], store: ShardStore, need_embeddings: bool, original: OriginalRun,
         monitor: Monitor, done: _Done) -> Job:
    frames = shard.items
    ids = [f.id for f in frames]
    label = f"shard {shard.index} (frames {ids[0]} .. {ids[-1]})"
    stored = store.load(shard.index, ids, need_embeddings=need_embeddings) if store.has(shard.index) else None
    if stored is not None:
        done.resumed += 1
        monitor.emit("shard_done", index=shard.index, frames=len(frames), tokens=shard.cost, seconds=0.0,
                     device=None, resumed=True)
        return Job(shard.index, shard.cost, None, label, size=len(frames), done=stored)
    work = ShardWork(shard.index, frames, original.known_for(frames))
    return Job(shard.index, shard.cost, work, label, size=len(frames))


class _EngineEvents:
    """What the engine reports, turned into the run's events: each device's start-up (checked
    against the first device's models and precision), each shard started, and each result,
    saved to the store the moment it arrives, whatever its place in the output order."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.store: ShardStore | None = None  # open once the models are known
        self._first: DeviceInfo | None = None

    def __call__(self, event: EngineEvent) -> None:
        if isinstance(event, DeviceReady):
            self._ready(event)
        elif isinstance(event, JobStarted):
            self.monitor.emit("shard_started", index=event.job.index, frames=event.job.size,
                              tokens=event.job.cost, device=event.device)
        elif isinstance(event, JobDone):
            self.store.save(event.result)
            self.monitor.emit("shard_done", index=event.job.index, frames=event.job.size,
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
