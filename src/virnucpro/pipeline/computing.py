"""Shards -> their results: from the checkpoint store, or computed by the workers (and
stored as they arrive)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from virnucpro.engine.scheduler import Engine, Job
from virnucpro.engine.sharding import Shard
from virnucpro.monitoring.events import Monitor
from virnucpro.pipeline.common import ResultSource, RunCounts
from virnucpro.predict.task import ShardWork
from virnucpro.stages.reuse_original import OriginalRun
from virnucpro.stages.types import Frame
from virnucpro.store import ShardResult, ShardStore


def computed(engine: Engine, store: ShardStore, need_embeddings: bool, original: OriginalRun,
              monitor: Monitor, done: RunCounts) -> ResultSource:
    """Shards -> their results: from the store, or computed by the workers (and stored)."""
    def results(shards: Iterable[Shard[Frame]]) -> Iterator[ShardResult]:
        # The engine numbers its jobs from 0 in output order; a part's shards are every N-th.
        jobs = (_job(number, shard, store, need_embeddings, original, monitor, done)
                for number, shard in enumerate(shards))
        return (result for _, result in engine.run(jobs))
    return results


def _job(number: int, shard: Shard[Frame], store: ShardStore, need_embeddings: bool, original: OriginalRun,
         monitor: Monitor, done: RunCounts) -> Job:
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
