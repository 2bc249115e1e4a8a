"""Cut a stream of work items into shards of roughly equal cost, in stream order.

A shard is the unit of scheduling and checkpointing: a few seconds of one device's work, so
a crash loses little and many devices can share the queue. Shard boundaries depend only on
the item stream and the budget, never on devices or timing, so a resumed or multi-device run
cuts exactly the same shards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shard(Generic[T]):
    index: int
    items: list[T]
    cost: int


def plan_shards(items: Iterable[T], cost: Callable[[T], int], budget: int) -> Iterator[Shard[T]]:
    """Yield consecutive shards whose summed cost reaches `budget` (the last may be smaller)."""
    index = 0
    current: list[T] = []
    total = 0
    for item in items:
        current.append(item)
        total += cost(item)
        if total >= budget:
            yield Shard(index, current, total)
            index, current, total = index + 1, [], 0
    if current:
        yield Shard(index, current, total)
