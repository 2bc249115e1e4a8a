"""The whole run on one screen.

  check input opens -> one worker per device loads the models, while the input's ids are
     checked for duplicates -> open store
  records -> chunks -> frames (streamed; intermediates written on the way;
     embeddings from an original VirNucPro run attached where its files hold them)
  -> shards of ~equal cost -> each shard: from the store, or run by a worker and stored
  -> result tables in input order [-> embeddings/] -> store discarded
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from virnucpro.config import RunConfig
from virnucpro.embeddings_out import write_embeddings
from virnucpro.engine.devices import resolve_devices, resolve_dtype
from virnucpro.engine.scheduler import Engine, Job
from virnucpro.engine.sharding import Shard, plan_shards
from virnucpro.engine.worker import Task
from virnucpro.errors import InputError, OutputError, WorkerFailed
from virnucpro.intermediates import IntermediateFiles
from virnucpro.frame_task import KnownEmbeddings, ShardWork, make_frame_task
from virnucpro.legacy import FrameWithKnown, attach_legacy, has_legacy_files, legacy_identity
from virnucpro.models.load import file_identity
from virnucpro.monitor import Monitor
from virnucpro.monitoring.summary import describe_startup
from virnucpro.stages.chunk import iter_chunks
from virnucpro.stages.read import ReadPosition, find_duplicate_ids, read_records
from virnucpro.stages.translate import select_frames
from virnucpro.stages.types import Frame
from virnucpro.stages.write import ResultWriter
from virnucpro.store import STORE_DIRNAME, RunLock, ShardResult, ShardStore

CHUNKS_PER_TRANSLATION_BLOCK = 8_192  # vectorised translation works on blocks of chunks


@dataclass(frozen=True)
class RunOutcome:
    result_dir: Path
    frames: int
    shards: int
    resumed_shards: int
    seconds: float
    device: str
    dtype: str
    demo_models: tuple[str, ...]


def frame_cost(frame: Frame) -> int:
    """GPU cost of a frame, in ESM-2 tokens (ESM-2 is ~97% of the FLOPs)."""
    return len(frame.aa) + 2


def check_input_opens(config: RunConfig) -> None:
    """Input problems that must stop the run before any work or output, the quick ones: the
    file exists and its first record reads. (Unique ids: check_unique_ids, while the models
    load.)"""
    path = config.input
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    records = read_records(path)
    first = next(records, None)
    records.close()  # only the first record was needed: release the file now
    if first is None:
        raise InputError(f"{path}: no sequences in this file (is it empty?)")


def check_unique_ids(config: RunConfig) -> None:
    """A pass over every header of the input (the whole file: seconds per GB)."""
    path = config.input
    duplicates = find_duplicate_ids(path)
    if duplicates:
        shown = ", ".join(duplicates[:10]) + (" ..." if len(duplicates) > 10 else "")
        raise InputError(
            f"{path}: {len(duplicates)} record id(s) occur more than once ({shown}); "
            "ids (the first word of each header) must be unique"
        )


def iter_frames(config: RunConfig, monitor: Monitor, files: IntermediateFiles) -> Iterator[Frame]:
    """Stream the input's kept frames in input order, writing intermediates on the way."""
    def skipped(record_id: str) -> None:
        monitor.warn(f"{config.input}: record {record_id!r} is empty and was skipped")

    position = ReadPosition(config.input)
    chunks = iter_chunks(read_records(config.input, position), config.chunk_len, on_empty=skipped)
    frames_read, cpu_seconds, t0 = 0, 0.0, time.perf_counter()
    while block := list(itertools.islice(chunks, CHUNKS_PER_TRANSLATION_BLOCK)):
        files.add_chunks(block)
        frames = select_frames(block)
        files.add_frames(frames)
        frames_read += len(frames)
        cpu_seconds += time.perf_counter() - t0
        # Bytes consumed give progress a fraction and an ETA; counting the frames ahead would
        # cost as much as these stages (the duplicate-id check before reads headers only).
        monitor.emit("input_progress", bytes_read=position.bytes_read(), bytes_total=position.total,
                     frames=frames_read, seconds=cpu_seconds)
        yield from frames
        t0 = time.perf_counter()


def check_one_device_kind(config: RunConfig, devices: list[torch.device]) -> None:
    """CPUs and GPUs compute differently (other kernels, and by default other precisions),
    so a run mixing them would give results that depend on which device ran each shard."""
    kinds = {d.type for d in devices}
    if len(kinds) > 1:
        shown = ", ".join(f"{d}: {str(resolve_dtype(config.precision, d, config.reference)).removeprefix('torch.')}"
                          for d in devices)
        raise InputError(f"--devices mixes the CPU and GPUs ({shown}); their results differ in the "
                         "last digits, so they would depend on which device ran each shard: use "
                         "GPUs only, or the CPU only")


def _device_ready(monitor: Monitor) -> Callable[[str, dict, int], None]:
    """Report each device's start-up, and check every device loaded the same models."""
    first: dict = {}

    def on_ready(device: str, info: dict, restarts: int) -> None:
        agreed = {key: info[key] for key in ("identity", "dtype", "feature_dims")}
        if first and agreed != first:
            raise WorkerFailed(f"the worker for {device} loaded other models or another precision "
                               f"than the first device: {agreed} against {first}")
        first.update(agreed)
        startup = info.get("startup_s", {})
        if startup:
            monitor.info(f"{device}{' (restarted)' if restarts else ''} {describe_startup(startup)}")
        monitor.emit("device_ready", device=device, startup_s=startup, restarts=restarts)
    return on_ready


def prepare_result_dir(path: Path) -> bool:
    """Create the output folder; True when we created it (so a failed run may remove it)."""
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".virnucpro_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to output folder {path}: {exc.strerror}") from None
    return not existed


def run(config: RunConfig, monitor: Monitor, *, restart: bool = False,
        task_factory: Callable[[RunConfig, torch.device], Task] = make_frame_task) -> RunOutcome:
    start = time.perf_counter()
    with monitor.stage("check input"):
        check_input_opens(config)
    devices = resolve_devices(config.devices)
    check_one_device_kind(config, devices)
    result_dir = config.result_dir
    created = prepare_result_dir(result_dir)  # before loading gigabytes of models
    try:
        with RunLock(result_dir):
            return _run_in(config, monitor, restart, task_factory, devices, result_dir, created, start)
    except BaseException:
        _remove_outputs(result_dir, created, store_too=False)  # an empty folder we made
        raise


def _run_in(config: RunConfig, monitor: Monitor, restart: bool, task_factory, devices,
            result_dir: Path, created: bool, start: float) -> RunOutcome:
    # Each device's worker loads the models itself, once; the parent never touches a GPU.
    with Engine(functools.partial(task_factory, config), devices,
                on_ready=_device_ready(monitor), warn=monitor.warn) as engine:
        engine.launch()
        # The id check reads the whole input: on a large file it takes about as long as the
        # models take to load, so it runs meanwhile. A duplicate still stops the run before
        # any output: the workers are stopped on the way out.
        with monitor.stage("check input ids (models loading)"):
            check_unique_ids(config)
        with monitor.stage("load models"):
            info = engine.wait_ready()
        if info["demo_models"]:
            monitor.warn(
                f"DEMO MODE: random stand-in models for {', '.join(info['demo_models'])}; "
                "predictions are NOT biologically meaningful"
            )
        # The original run's files, when reused, are part of what the results depend on.
        fingerprint = config.fingerprint(info["identity"], file_identity(config.input), info["dtype"],
                                         legacy_identity(config.prefix))
        try:
            store = ShardStore(result_dir, fingerprint, restart=restart)
            remove_stale_temporaries(result_dir)
            device_names = ", ".join(str(d) for d in devices)
            monitor.info(f"predicting on {device_names} in {info['dtype']}"
                         + (" (reference path)" if config.reference else ""))
            monitor.emit("run_started", input=str(config.input), result_dir=str(result_dir),
                         devices=[str(d) for d in devices], dtype=info["dtype"],
                         parameters=config.describe(), models=dict(info["identity"]))
            tally = _Tally()
            with IntermediateFiles(config) as files, ResultWriter(result_dir) as writer:
                items = _frames_with_known(config, monitor, files, tuple(info["feature_dims"]))
                shards = plan_shards(items, lambda item: frame_cost(item[0]), config.shard_tokens)
                jobs = (_job(shard, store, config.save_embeddings, tally) for shard in shards)
                for _, result in engine.run(jobs, on_result=_saver(store, monitor, tally),
                                            on_started=tally.started(monitor)):
                    writer.add(result.ids, result.score1, result.score2)
                    tally.frames += len(result.ids)
                    tally.shards += 1
            if late := engine.loading():
                monitor.info(f"{', '.join(late)} still loading when the work ran out; "
                             "the other device(s) did it all")
            if tally.frames == 0:
                monitor.warn(f"{config.input}: no chunk has a stop-free reading frame; "
                             "the result files hold headers only")
            if tally.reused_frames:
                monitor.info(f"reused the embeddings of {tally.reused_frames:,} frames from the "
                             "original VirNucPro's files")
            if config.save_embeddings:
                folder = write_embeddings(result_dir, tally.shards, tally.frames, tuple(info["feature_dims"]),
                                          store, shard_sizes=tally.shard_sizes)
                monitor.info(f"embeddings written to {folder}/")
            store.discard()
        except InputError:
            # The input itself is broken: results for it are meaningless, keep nothing.
            _remove_outputs(result_dir, created, store_too=True)
            raise
        except BaseException:
            # Finished shards stay in the store, so a rerun resumes where this one stopped.
            _remove_outputs(result_dir, created, store_too=False)
            raise
    seconds = time.perf_counter() - start
    monitor.emit("run_finished", frames=tally.frames, seconds=seconds)
    return RunOutcome(result_dir, tally.frames, tally.shards, tally.resumed, seconds, device_names,
                      info["dtype"], tuple(info["demo_models"]))


def _frames_with_known(config: RunConfig, monitor: Monitor, files: IntermediateFiles,
                       dims: tuple[int, int]) -> Iterator[FrameWithKnown]:
    """The input's frames, each with its embeddings from an original VirNucPro run if any."""
    frames = iter_frames(config, monitor, files)
    if not has_legacy_files(config.prefix):
        return ((frame, None) for frame in frames)
    monitor.info(f"found the original VirNucPro's files for {config.prefix}: reusing their embeddings")
    return attach_legacy(frames, config.prefix, dims, monitor.warn)


@dataclass
class _Tally:
    frames: int = 0
    shards: int = 0
    resumed: int = 0
    reused_frames: int = 0
    shard_sizes: list[int] = field(default_factory=list)  # frames per shard, in shard order
    sizes: dict[int, tuple[int, int, float]] = field(default_factory=dict)  # index -> frames, tokens, t0

    def started(self, monitor: Monitor) -> Callable[[int, str], None]:
        def on_started(index: int, device: str) -> None:
            frames, tokens, _ = self.sizes[index]
            self.sizes[index] = (frames, tokens, time.perf_counter())
            monitor.emit("shard_started", index=index, frames=frames, tokens=tokens, device=device)
        return on_started


def _job(shard: Shard[FrameWithKnown], store: ShardStore, need_embeddings: bool, tally: _Tally) -> Job:
    frames = [frame for frame, _ in shard.items]
    tally.shard_sizes.append(len(frames))
    ids = [f.id for f in frames]
    label = f"shard {shard.index} (frames {ids[0]} .. {ids[-1]})"
    stored = store.load(shard.index, ids, need_embeddings=need_embeddings) if store.has(shard.index) else None
    if stored is not None:
        tally.resumed += 1
        return Job(shard.index, shard.cost, None, label, done=stored)
    tally.sizes[shard.index] = (len(frames), shard.cost, time.perf_counter())
    rows = [row for row, (_, known) in enumerate(shard.items) if known is not None]
    known = None
    if rows:
        tally.reused_frames += len(rows)
        known = KnownEmbeddings(np.asarray(rows), np.stack([shard.items[r][1][0] for r in rows]),
                                np.stack([shard.items[r][1][1] for r in rows]))
    return Job(shard.index, shard.cost, ShardWork(shard.index, frames, known), label)


def _saver(store: ShardStore, monitor: Monitor, tally: _Tally) -> Callable[[int, ShardResult, str], None]:
    """Persist each shard the moment it arrives, whatever its place in the output order."""
    def on_result(index: int, result: ShardResult, device: str) -> None:
        store.save(result)
        frames, tokens, t0 = tally.sizes.pop(index)
        monitor.emit("shard_done", index=index, frames=frames, tokens=tokens,
                     seconds=time.perf_counter() - t0, device=device, resumed=False)
    return on_result


def remove_stale_temporaries(result_dir: Path) -> None:
    """Result-file temporaries of runs that were killed (their pid is in the name)."""
    for path in result_dir.glob(".*.tmp"):
        parts = path.name.split(".")
        pid = next((int(p) for p in parts if p.isdigit()), None)
        if pid is not None and not _process_alive(pid):
            path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_outputs(result_dir: Path, created: bool, *, store_too: bool) -> None:
    if store_too:
        shutil.rmtree(result_dir / STORE_DIRNAME, ignore_errors=True)
    if created and result_dir.is_dir() and not any(result_dir.iterdir()):
        result_dir.rmdir()
