"""RunConfig: every choice of a run, built once at the edge (the CLI) and frozen; and the
identities of the files a run's results depend on (the fingerprint's inputs).

Nothing deeper in the package reads arguments or environment variables; it reads this. (The
one exception is where models are cached -- TORCH_HOME, HF_HOME, VIRNUCPRO_HOME -- read by
models/caches.py, as every tool sharing those caches reads them.)
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from virnucpro.errors import InputError
from virnucpro.layout import STDIN, STDIN_LABEL, RunLayout

CHUNK_LENGTHS = (300, 500)  # the released classifiers' chunk lengths
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp8")
MODEL_CHOICES = ("esm", "dnabert", "classifier")  # `virnucpro models download --only`

# The original ESM-2 batching (fair-esm get_batch_indices with toks_per_batch=2048).
REFERENCE_ESM_TOKENS_PER_BATCH = 2048


@dataclass(frozen=True)
class ModelPaths:
    """Explicit model locations; None means 'look in the usual cache' (or demo models)."""

    esm: Path | None = None
    dnabert: Path | None = None
    classifier: Path | None = None


@dataclass(frozen=True)
class PartSpec:
    """Part K (from 1) of N of a run: the shards i of the run's own shard plan with
    i mod N == K - 1. Shard boundaries depend only on the input and --shard-tokens, so the
    N parts together hold exactly the shards one whole run computes; taking every N-th shard
    needs no pre-pass over the input and balances the parts, as shards are of near-equal cost."""

    k: int
    n: int

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise InputError(f"--part {self.k}/{self.n}: K must be from 1 to N")

    @classmethod
    def parse(cls, text: str) -> "PartSpec":
        k, sep, n = text.partition("/")
        if not (sep and k.strip().isdigit() and n.strip().isdigit()):
            raise ValueError(f"expected K/N such as 2/8, got {text!r}")
        return cls(int(k), int(n))

    def owns(self, shard_index: int) -> bool:
        return shard_index % self.n == self.k - 1

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"


@dataclass(frozen=True)
class RunConfig:
    input: Path  # `-`: standard input, which the pipeline spools to a file and reads from there
    chunk_len: int = 500
    out_dir: Path | None = None  # None: the original's `{prefix}_merged/`
    models: ModelPaths = field(default_factory=ModelPaths)
    devices: str = "auto"
    precision: str = "auto"
    reference: bool = False  # the original algorithm: fp32, one-by-one DNABERT-S, 2048-token ESM
    demo: bool = False  # tiny random models for whichever model is not given explicitly
    keep_intermediate: bool = False
    save_embeddings: bool = False  # per-frame DNABERT-S and ESM-2 embeddings beside the results
    batch_tokens: int | None = None  # token budget per batch; None: sized from the device
    shard_tokens: int = 200_000  # protein tokens per shard (a few seconds of one GPU's work)
    compile: bool = True  # torch.compile ESM-2's layers on the GPU fast path (once per worker, while the models are read and copied)
    rna_as_dna: bool = False  # read U as T (the original drops codons holding U)
    # Per-sequence calls (prediction_summary.tsv); the original's two files do not depend on them.
    min_virus_fraction: float = 0.5  # share of a sequence's scored chunks that must be virus
    threshold: float | None = None  # a chunk is virus when its max score2 >= this (None: the original's rule)
    threads: int | None = None  # CPU threads for inference on the CPU and host work (None: torch's default)
    # What the user named as the input when `input` is a stand-in for it: `-` once standard
    # input is spooled to a file. Names results and messages. None: `input` itself.
    input_name: str | None = None
    part: PartSpec | None = None  # compute only this part of the run's shards (predict --part K/N)

    def __post_init__(self) -> None:
        if self.chunk_len not in CHUNK_LENGTHS:
            raise InputError(f"chunk length must be 300 or 500, got {self.chunk_len}")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.batch_tokens is not None and self.batch_tokens < 64:
            raise InputError(f"--batch-tokens must be at least 64, got {self.batch_tokens}")
        if self.shard_tokens < 1:
            raise InputError("shard size must be positive")
        if not 0 < self.min_virus_fraction <= 1:
            raise InputError(f"--min-virus-fraction must be in (0, 1], got {self.min_virus_fraction}")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise InputError(f"--threshold must be in [0, 1], got {self.threshold}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be at least 1, got {self.threads}")

    @property
    def reads_stdin(self) -> bool:
        return str(self.input) == STDIN and self.input_name is None

    @property
    def input_label(self) -> str:
        """The input as messages and the run summary name it."""
        name = self.input_name if self.input_name is not None else str(self.input)
        return STDIN_LABEL if name == STDIN else name

    @property
    def layout(self) -> RunLayout:
        return RunLayout(Path(self.input_name) if self.input_name is not None else self.input,
                         self.chunk_len, self.out_dir)

    @property
    def result_dir(self) -> Path:
        return self.layout.result_dir

    def fingerprint_parameters(self, model_identity: dict[str, str], input_identity: str, dtype: str,
                               original_files: list[str] | None = None, cpu_threads: int | None = None) -> dict:
        """Everything that can change a byte of the results: resuming needs an exact match.

        `original_files`: identities of the original VirNucPro's files whose embeddings the run
        may reuse (stages.reuse_original.original_identity), so that a resumed run never mixes
        shards computed with other (or without) such files; None when there are none.
        `cpu_threads`: the threads a run on CPU devices computes with (CPU kernels' reductions
        round differently with another count); None on GPUs, whose results it does not touch.
        The per-sequence call options are not here: they do not change a stored shard.
        """
        parameters = {
            "input": input_identity,
            "chunk_len": self.chunk_len,
            "reference": self.reference,
            "dtype": dtype,  # the resolved precision: 'auto' differs between CPU and GPU
            "shard_tokens": self.shard_tokens,  # shard boundaries
            "batch_tokens": self.batch_tokens,  # batch composition moves last digits (None: by device)
            "compile": self.compile,  # fused kernels round differently
            "rna_as_dna": self.rna_as_dna,
            "models": dict(model_identity),
        }
        if original_files is not None:
            parameters["legacy_files"] = list(original_files)  # the key predates the name
        if cpu_threads is not None:
            parameters["cpu_threads"] = cpu_threads
        return parameters

    def fingerprint(self, model_identity: dict[str, str], input_identity: str, dtype: str,
                    original_files: list[str] | None = None) -> str:
        """Hash of fingerprint_parameters."""
        return fingerprint_of(self.fingerprint_parameters(model_identity, input_identity, dtype, original_files))

    def describe(self) -> dict:
        """JSON-able parameters for logs and run summaries (the input as the user named it,
        not a spool of standard input)."""
        d = asdict(self)
        d["input"] = self.input_label
        return json.loads(json.dumps(d, default=str))


_HASHED_BYTES_LIMIT = 64 << 20  # hash small files whole; large ones by size and timestamp


def file_identity(path: Path) -> str:
    """A cheap identity for fingerprints: content hash for small files, stat for big ones."""
    st = path.stat()
    if st.st_size <= _HASHED_BYTES_LIMIT:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return f"{path.resolve()}|sha256:{digest}"
    return f"{path.resolve()}|size:{st.st_size}|mtime_ns:{st.st_mtime_ns}"


def folder_identity(folder: Path) -> str:
    parts = [file_identity(p) for p in sorted(folder.iterdir()) if p.is_file()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def fingerprint_of(parameters: dict) -> str:
    return hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()


# fingerprint parameter -> how the user sets it
_SET_BY = {"chunk_len": "-m/--chunk-len", "reference": "--reference", "dtype": "--precision (as resolved)",
           "shard_tokens": "--shard-tokens", "batch_tokens": "--batch-tokens", "compile": "--no-compile",
           "rna_as_dna": "--rna-as-dna", "cpu_threads": "-t/--threads (on the CPU)"}
_MODEL_NAMES = {"esm": "the ESM-2 model", "dnabert": "the DNABERT-S model", "classifier": "the classifier"}


def describe_changes(stored: dict, now: dict, labels: tuple[str, str] = ("then", "now")) -> list[str]:
    """What differs between two runs' fingerprint parameters, in the user's words; `labels`
    name the two sides (an earlier run and this one, or two parts of a run)."""
    first, second = labels
    verb = "changed" if labels == ("then", "now") else "differs"
    changes = []
    for key in sorted(set(stored) | set(now)):
        before, after = stored.get(key), now.get(key)
        if before == after:
            continue
        if key == "input":
            changes.append(f"the input file {verb} ({identity_detail(before)} {first}, "
                           f"{identity_detail(after)} {second})")
        elif key == "models":
            for name in sorted(set(before or {}) | set(after or {})):
                if (before or {}).get(name) != (after or {}).get(name):
                    changes.append(f"{_MODEL_NAMES.get(name, name)}: {identity_detail((before or {}).get(name))} "
                                   f"{first}, {identity_detail((after or {}).get(name))} {second}")
        elif key == "legacy_files":
            changes.append(f"the original VirNucPro's files beside the input {verb} ({first}, {second})")
        else:
            changes.append(f"{_SET_BY.get(key, key)}: {_shown(before)} {first}, {_shown(after)} {second}")
    return changes


def _shown(value) -> str:
    return "auto" if value is None else json.dumps(value)


def identity_detail(identity: str | None) -> str:
    """A file identity (path|sha256:... or path|size:..|mtime_ns:..) as a person reads it."""
    if identity is None:
        return "none"
    if identity == "demo":
        return "demo stand-in"
    path, _, rest = identity.partition("|")
    if not rest:
        return f"folder hash {identity[:12]}"
    facts = dict(part.split(":", 1) for part in rest.split("|"))
    if "sha256" in facts:
        return f"{path}, content {facts['sha256'][:12]}"
    return f"{path}, {facts.get('size')} bytes, modified {facts.get('mtime_ns')} ns"


# --------------------------------------------------------------------------- sample sheets

# A name becomes a folder (OUT/NAME/) and a Snakemake wildcard value: no separators, no
# leading dot, nothing a shell or a path would read twice.
_SAMPLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Sample:
    name: str
    path: Path


def read_sample_sheet(sheet: Path) -> list[Sample]:
    """The samples of a TAB-separated sheet, one a line: NAME<TAB>PATH (further columns are
    ignored). A first line whose first field is 'sample' is a header; empty lines and lines
    starting with '#' are skipped. A relative PATH is read from the sheet's folder, so a sheet
    moves with its data. Whether each file is readable is the sample's own run's business (a
    bad sample fails alone); the sheet itself must be sound."""
    sheet = Path(sheet)
    try:
        text = sheet.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the sample sheet {sheet}: {getattr(exc, 'strerror', None) or exc}") from None
    rows = [(number, line.rstrip("\r").split("\t")) for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.startswith("#")]
    if rows and rows[0][1][0].strip().lower() == "sample":
        rows = rows[1:]  # the header
    samples: dict[str, Sample] = {}
    for number, fields in rows:
        sample = _sample(sheet, number, fields)
        if sample.name in samples:
            raise InputError(f"{sheet}, line {number}: sample {sample.name!r} is listed twice")
        samples[sample.name] = sample
    if not samples:
        raise InputError(f"the sample sheet {sheet} lists no samples (expected NAME<TAB>PATH lines)")
    return list(samples.values())


def _sample(sheet: Path, number: int, fields: list[str]) -> Sample:
    where = f"{sheet}, line {number}"
    if len(fields) < 2 or not fields[1].strip():
        raise InputError(f"{where}: expected NAME<TAB>PATH (TAB-separated), got {fields[0]!r}")
    name, path = fields[0].strip(), Path(fields[1].strip())
    if not _SAMPLE_NAME.fullmatch(name):
        raise InputError(f"{where}: sample name {name!r} must be letters, digits, '.', '_' or '-', "
                         "not starting with '.' (it becomes a folder name)")
    return Sample(name, path if path.is_absolute() else sheet.parent / path)
