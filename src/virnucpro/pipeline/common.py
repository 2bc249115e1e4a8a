"""What the pieces of a run share: the task factory's type, where shard results come from,
and the counts a run keeps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from virnucpro.config import RunConfig
from virnucpro.engine.sharding import Shard
from virnucpro.engine.worker import Task
from virnucpro.errors import CheckpointMismatch, InputError, OutputError
from virnucpro.predict.task import DeviceInfo
from virnucpro.stages.calls import CallCounts
from virnucpro.stages.types import Frame
from virnucpro.store import PartRecord, ShardResult

TaskFactory = Callable[[RunConfig, torch.device], Task]
# Where a run's shard results come from, given its shard plan: the workers (and the store),
# or the parts of a merge. Results are in plan order.
ResultSource = Callable[[Iterator[Shard[Frame]]], Iterator[ShardResult]]
# Failures that belong to one sample of a sheet: the others go on.
SAMPLE_ERRORS = (InputError, OutputError, CheckpointMismatch)


@dataclass(frozen=True)
class Started:
    """What a run knows of itself once its checks passed."""

    source: str  # the input the results are of (run_summary.json's input_source)
    threads: int  # CPU threads of the workers


@dataclass
class RunCounts:
    """What a run did, counted as it goes."""

    info: DeviceInfo
    frames: int = 0
    shards: int = 0
    resumed: int = 0
    calls: CallCounts = CallCounts()
    part: PartRecord | None = None
