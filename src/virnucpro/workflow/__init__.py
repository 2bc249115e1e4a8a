"""The Snakemake workflow shipped with virnucpro, and the little it needs from Python.

The files beside this module (Snakefile, config.yaml, samples.tsv, profiles/) are package
data: `virnucpro workflow init DIR` copies them out, ready to edit. The Snakefile imports the
helpers below, so the sample sheet is read by the same code as `virnucpro predict --samples`
and the options it passes are built in one tested place.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
from importlib import resources
from pathlib import Path

from virnucpro.config import read_sample_sheet
from virnucpro.errors import InputError, OutputError
from virnucpro.layout import SUMMARY_NAME, write_text_atomic

# What `workflow init` writes, relative to the workflow folder.
SHEET = "samples.tsv"
FILES = ("Snakefile", "config.yaml", SHEET, "profiles/local/config.yaml", "profiles/slurm/config.yaml")
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)b?\s*", re.I)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def init_workflow(folder: Path, *, force: bool = False) -> list[Path]:
    """Copy the workflow into `folder`. Files already there are kept unless `force`; the
    sample sheet is the user's data and is never overwritten."""
    folder = Path(folder)
    present = [name for name in FILES if (folder / name).exists()]
    if present and not force:
        raise InputError(f"{folder} already holds {', '.join(present)}: edit them, or give --force to write "
                         "the workflow anew (an existing samples.tsv is kept)")
    source = resources.files(__name__)
    written = []
    try:
        for name in FILES:
            target = folder / name
            if name == SHEET and target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with resources.as_file(source.joinpath(name)) as path:
                shutil.copyfile(path, target)
            written.append(target)
    except OSError as exc:
        raise OutputError(f"cannot write the workflow to {folder}: {exc.strerror or exc}") from None
    return written


def sheet_samples(sheet: str | Path) -> dict[str, str]:
    """The sample sheet as {name: input path}, read as `predict --samples` reads it."""
    return {sample.name: str(sample.path) for sample in read_sample_sheet(Path(sheet))}


def part_count(path: str | Path, setting: int | str) -> int:
    """Parts for one input: `setting` is a number of parts, or a size per part such as '2G'
    (bytes of the input file as stored, so a gzip file counts compressed)."""
    if isinstance(setting, int) or str(setting).strip().isdigit():
        count = int(setting)
        if count < 1:
            raise InputError(f"parts: must be at least 1, got {setting}")
        return count
    match = _SIZE.fullmatch(str(setting))
    if not match or float(match.group(1)) <= 0:
        raise InputError(f"parts: expected a number of parts or a size per part such as 500M or 2G, got {setting!r}")
    size = float(match.group(1)) * _UNITS[match.group(2).lower()]
    return max(1, math.ceil(Path(path).stat().st_size / size))


def model_files(config: dict) -> list[str]:
    """The model paths the config names (none: virnucpro's caches, or --demo)."""
    return [str(config[key]) for key in ("esm_model", "dnabert_model", "classifier") if config.get(key)]


def predict_options(config: dict) -> str:
    """The options every part job passes to `virnucpro predict`, from the config."""
    options = ["-m", str(config.get("chunk_len", 500)), "--precision", str(config.get("precision", "auto"))]
    for key, flag in (("esm_model", "--esm-model"), ("dnabert_model", "--dnabert-model"),
                      ("classifier", "--classifier"), ("batch_tokens", "--batch-tokens"),
                      ("shard_tokens", "--shard-tokens")):
        if config.get(key):
            options += [flag, str(config[key])]
    return " ".join(shlex.quote(option) for option in options) + (f" {config['extra']}" if config.get("extra") else "")


def write_table(path: str | Path, folders: dict[str, str]) -> None:
    """The final table: each sample's result folder and what it found (from its run summary)."""
    lines = ["sample\tresult_dir\trecords\tvirus\tothers\tno_frames\tskipped\n"]
    for name, folder in folders.items():
        summary = json.loads((Path(folder) / SUMMARY_NAME).read_text(encoding="utf-8"))
        calls = summary.get("sequences", {})
        counts = "\t".join(str(calls.get(key, "NA")) for key in ("records", "virus", "others", "no_frames", "skipped"))
        lines.append(f"{name}\t{Path(folder).resolve()}\t{counts}\n")
    write_text_atomic(Path(path), "".join(lines))
