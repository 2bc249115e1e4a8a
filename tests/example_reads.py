"""Small inputs cut from the example reads (examples/ecoli_reads150.fa, 400 reads of 150 bp
from the E. coli K-12 genome), for tests that need a real input of a chosen size."""

from __future__ import annotations

from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ecoli_reads150.fa"


def first_reads(folder: Path, records: int, name: str = "reads.fa") -> Path:
    """The first `records` reads of the example, as `folder/name`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join(EXAMPLE.read_text().splitlines()[: 2 * records]) + "\n")
    return path
