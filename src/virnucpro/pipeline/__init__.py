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
import time
from collections.abc import Callable, Iterable

import torch

from virnucpro.config import RunConfig, file_identity, fingerprint_of
from virnucpro.errors import InputError, ModelError
from virnucpro.layout import (
    PART_NAME,
    STDIN,
    RunLayout,
    prepare_result_dir,
    remove_created_folder,
    remove_quietly,
    remove_stale_temporaries,
)
from virnucpro.models.bundle import locate_models
from virnucpro.monitoring.events import Monitor
from virnucpro.monitoring.summary import refuse_another_input
from virnucpro.pipeline.common import SAMPLE_ERRORS, RunCounts, Started, TaskFactory
from virnucpro.pipeline.computing import computed
from virnucpro.pipeline.outcomes import RunOutcome, SampleOutcome
from virnucpro.pipeline.parts import merge, part_record, predict_part
from virnucpro.pipeline.workers import Workers
from virnucpro.pipeline.writing import finish, write_results
from virnucpro.predict.precision import Precision
from virnucpro.predict.task import DeviceInfo, make_frame_task
from virnucpro.stages.chunk import chunk_length_hint
from virnucpro.stages.read import InputState, check_input_opens, check_unique_ids
from virnucpro.stages.reuse_original import OriginalRun, original_identity
from virnucpro.stages.stdin import Spool, spooled_stdin
from virnucpro.store import RunLock, ShardStore, resumable

__all__ = ["RunOutcome", "SampleOutcome", "Workers", "merge", "run", "run_on", "run_samples"]


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
                                  Started(source, threads))
            seconds = time.perf_counter() - start
            monitor.emit("run_finished", frames=outcome.frames, seconds=seconds)  # summary, report
    except BaseException:
        remove_created_folder(layout.result_dir, created)  # if it is still empty
        raise
    return RunOutcome(str(layout.result_dir), outcome.frames, outcome.shards, outcome.resumed, seconds,
                      ", ".join(str(d) for d in devices), outcome.info.dtype, outcome.info.demo_models,
                      outcome.calls, outcome.part)


def _close_quietly(store: ShardStore) -> None:
    """Finish the store's pending saves while another error unwinds (that one is the news)."""
    try:
        store.close()
    except Exception:  # noqa: BLE001 - e.g. the disk that failed the run fails these too
        pass


def _run_locked(config: RunConfig, layout: RunLayout, monitor: Monitor, restart: bool, workers: "Workers",
                parameters: dict, input_stat: tuple, started_as: Started) -> RunCounts:
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
    if info.dtype.startswith("fp8"):
        monitor.warn("--precision fp8 is experimental: on random full-size weights its ESM-2 embeddings "
                     "missed the fidelity gates (median cosine 0.9965 to fp32, p99 score difference "
                     "0.03); check it on your data with `virnucpro compare` before relying on it")
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
    done = RunCounts(info)
    results = computed(workers.engine, store, config.save_embeddings, original, monitor, done)
    try:
        if config.part is None:
            write_results(config, layout, monitor, started, original, results, done)
        else:
            counts = predict_part(config, layout, monitor, started, original, results, done)
    except InputError:
        # The input itself is broken: results for it are meaningless, keep nothing. (On
        # any other failure finished shards stay, so a rerun resumes where this one stopped.)
        _close_quietly(store)
        remove_quietly(layout.store)
        raise
    except BaseException:
        _close_quietly(store)  # the shards computed so far are saved: a rerun resumes from them
        raise
    store.close()  # every shard saved (its first failure raised) before the store goes or a part is marked done
    if late := workers.engine.loading():
        monitor.info(f"{', '.join(late)} still loading when the work ran out; "
                     "the other device(s) did it all")
    if config.part is None:
        finish(config, layout, monitor, original, done)
        store.discard()
    else:  # the store stays: it holds the part's results
        done.part = part_record(config, parameters, devices[0].type, counts, done)
        done.part.save(layout.result_dir)
    return done


