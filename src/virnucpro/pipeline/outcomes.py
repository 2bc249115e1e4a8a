"""What a run, or a sample of a sheet, tells its caller."""

from __future__ import annotations

from dataclasses import dataclass

from virnucpro.stages.calls import CallCounts
from virnucpro.store import PartRecord


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
