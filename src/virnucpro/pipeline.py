"""The whole run on one screen.

  check input -> load models -> open store
  records -> chunks -> frames (streamed; intermediates written on the way)
  -> shards of ~equal cost -> each shard: from the store, or predicted and stored
  -> result tables in input order -> store discarded
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from virnucpro.config import RunConfig
from virnucpro.engine.devices import resolve_devices, resolve_dtype
from virnucpro.engine.sharding import Shard, plan_shards
from virnucpro.errors import InputError, OutputError
from virnucpro.intermediates import IntermediateFiles
from virnucpro.models.load import file_identity, load_bundle
from virnucpro.monitor import Monitor
from virnucpro.stages.chunk import iter_chunks
from virnucpro.stages.classify import FramePredictor
from virnucpro.stages.read import ReadPosition, find_duplicate_ids, read_records
from virnucpro.stages.translate import select_frames
from virnucpro.stages.types import Frame
from virnucpro.stages.write import ResultWriter
from virnucpro.store import STORE_DIRNAME, ShardResult, ShardStore

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


def check_input(config: RunConfig) -> None:
    """Problems that must stop the run before any work or output."""
    path = config.input
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
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
        # Bytes consumed give progress a fraction and an ETA without a pre-pass over the input.
        monitor.emit("input_progress", bytes_read=position.bytes_read(), bytes_total=position.total,
                     frames=frames_read, seconds=cpu_seconds)
        yield from frames
        t0 = time.perf_counter()


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


def run(config: RunConfig, monitor: Monitor, *, restart: bool = False) -> RunOutcome:
    start = time.perf_counter()
    with monitor.stage("check input"):
        check_input(config)
    devices = resolve_devices(config.devices)
    if len(devices) > 1:
        raise InputError("several devices in one run are not supported yet: pass one with --devices")
    device = devices[0]
    dtype = resolve_dtype(config.precision, device, config.reference)
    with monitor.stage("load models"):
        bundle = load_bundle(config.models, config.chunk_len, config.demo)
    if bundle.demo_models:
        monitor.warn(
            f"DEMO MODE: random stand-in models for {', '.join(bundle.demo_models)}; "
            "predictions are NOT biologically meaningful"
        )

    result_dir = config.result_dir
    created = prepare_result_dir(result_dir)
    fingerprint = config.fingerprint(bundle.identity, file_identity(config.input), str(dtype))
    try:
        store = ShardStore(result_dir, fingerprint, restart=restart)
        predictor = FramePredictor(
            bundle, device, dtype, reference=config.reference,
            batch_tokens=config.batch_tokens,
        )
        monitor.info(f"predicting on {device} in {str(dtype).removeprefix('torch.')}"
                     + (" (reference path)" if config.reference else ""))
        monitor.emit("run_started", input=str(config.input), result_dir=str(result_dir),
                     devices=[str(device)], dtype=str(dtype).removeprefix("torch."),
                     parameters=config.describe(), models=dict(bundle.identity))
        frames = shards = resumed = 0
        with IntermediateFiles(config) as files, ResultWriter(result_dir) as writer:
            for shard in plan_shards(iter_frames(config, monitor, files), frame_cost, config.shard_tokens):
                result, was_stored = _shard_result(shard, store, predictor, monitor, device)
                writer.add(result.ids, result.score1, result.score2)
                frames += len(result.ids)
                shards += 1
                resumed += was_stored
        if frames == 0:
            monitor.warn(f"{config.input}: no chunk has a stop-free reading frame; "
                         "the result files hold headers only")
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
    monitor.emit("run_finished", frames=frames, seconds=seconds)
    return RunOutcome(result_dir, frames, shards, resumed, seconds, str(device),
                      str(dtype).removeprefix("torch."), bundle.demo_models)


def _shard_result(
    shard: Shard[Frame], store: ShardStore, predictor: FramePredictor, monitor: Monitor,
    device: torch.device,
) -> tuple[ShardResult, bool]:
    ids = [f.id for f in shard.items]
    monitor.emit("shard_started", index=shard.index, frames=len(ids), tokens=shard.cost,
                 device=str(device))
    t0 = time.perf_counter()
    stored = store.load(shard.index, expected_ids=ids) if store.has(shard.index) else None
    if stored is None:
        p = predictor.predict(shard.items)
        stored_now = ShardResult(shard.index, ids, p.score1, p.score2, p.is_virus)
        store.save(stored_now)
        result, was_stored = stored_now, False
    else:
        result, was_stored = stored, True
    monitor.emit("shard_done", index=shard.index, frames=len(ids), tokens=shard.cost,
                 seconds=time.perf_counter() - t0, device=str(device), resumed=was_stored)
    return result, was_stored


def _remove_outputs(result_dir: Path, created: bool, *, store_too: bool) -> None:
    if store_too:
        shutil.rmtree(result_dir / STORE_DIRNAME, ignore_errors=True)
    if created and result_dir.is_dir() and not any(result_dir.iterdir()):
        result_dir.rmdir()
