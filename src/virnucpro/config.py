"""RunConfig: every choice of a run, built once at the edge (the CLI) and frozen.

Nothing deeper in the package reads arguments or environment variables; it reads this.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from virnucpro.errors import InputError

CHUNK_LENGTHS = (300, 500)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# The original ESM-2 batching (fair-esm get_batch_indices with toks_per_batch=2048).
REFERENCE_ESM_TOKENS_PER_BATCH = 2048


@dataclass(frozen=True)
class ModelPaths:
    """Explicit model locations; None means 'look in the usual cache' (or demo models)."""

    esm: Path | None = None
    dnabert: Path | None = None
    classifier: Path | None = None


@dataclass(frozen=True)
class RunConfig:
    input: Path
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
    compile: bool = True  # torch.compile ESM-2's layers on the GPU fast path (once per worker, beside the weight copy)
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.chunk_len not in CHUNK_LENGTHS:
            raise InputError(f"chunk length must be 300 or 500, got {self.chunk_len}")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.batch_tokens is not None and self.batch_tokens < 64:
            raise InputError(f"--batch-tokens must be at least 64, got {self.batch_tokens}")
        if self.shard_tokens < 1:
            raise InputError("shard size must be positive")

    @property
    def prefix(self) -> str:
        """The original's output prefix: the input path up to its FIRST '.fa'."""
        return str(self.input).split(".fa")[0]

    @property
    def result_dir(self) -> Path:
        return self.out_dir if self.out_dir is not None else Path(f"{self.prefix}_merged")

    def intermediate_path(self, suffix: str) -> Path:
        """`{prefix}{suffix}` beside the original's outputs, or inside OUTDIR when given."""
        if self.out_dir is None:
            return Path(f"{self.prefix}{suffix}")
        return self.out_dir / f"{Path(self.prefix).name}{suffix}"

    def fingerprint(self, model_identity: dict[str, str], input_identity: str, dtype: str,
                    legacy_files: list[str] | None = None) -> str:
        """Hash of everything that determines the results: resuming needs an exact match.

        `legacy_files`: identities of the original VirNucPro's files whose embeddings the run
        may reuse (legacy.legacy_identity), so that a resumed run never mixes shards computed
        with other (or without) such files. None (no such files) leaves the hash as it was.
        """
        payload = {
            "input": input_identity,
            "chunk_len": self.chunk_len,
            "reference": self.reference,
            "dtype": dtype,  # the resolved precision: 'auto' differs between CPU and GPU
            "shard_tokens": self.shard_tokens,
            "models": model_identity,
        }
        if legacy_files is not None:
            payload["legacy_files"] = list(legacy_files)
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def describe(self) -> dict:
        """JSON-able parameters for logs and run summaries."""
        d = asdict(self)
        return json.loads(json.dumps(d, default=str))
