"""Command line: parse arguments -> RunConfig -> pipeline.run. Typed errors become one line
on stderr and a non-zero exit code; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path

from virnucpro import __version__
from virnucpro.config import (
    CHUNK_LENGTHS,
    MODEL_CHOICES,
    PRECISIONS,
    ModelPaths,
    PartSpec,
    RunConfig,
    read_sample_sheet,
)
from virnucpro.engine.bytecode import keep_bytecode
from virnucpro.errors import (
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    InputError,
    ModelError,
    OutputError,
    VirnucproError,
)
from virnucpro.layout import EMBEDDINGS_DIRNAME, OUTPUT_FILES, SEQUENCES_NAME, VIRAL_FASTA_NAME
from virnucpro.models.caches import virnucpro_home

log = logging.getLogger("virnucpro")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the run unwinds like Ctrl-C (store kept)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time: while the rich progress bar is live it
    redirects sys.stderr, so log lines print above the bar instead of through it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _LogFile(logging.FileHandler):
    """The --log-file. A write that fails (a full disk) must not print logging's own traceback
    in the middle of the run: the first failure is kept, and the command ends with exit 3
    naming it once the run is over."""

    failure: OSError | None = None

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        error = sys.exc_info()[1]
        if self.failure is None and isinstance(error, OSError):
            self.failure = error
        elif not isinstance(error, OSError):
            super().handleError(record)


def log_file_failure() -> str | None:
    """The first write failure of the --log-file, as one line (None when there was none)."""
    for handler in log.handlers:
        if isinstance(handler, _LogFile) and handler.failure is not None:
            return f"cannot write the log file {handler.baseFilename}: {handler.failure.strerror or handler.failure}"
    return None


def configure_logging(quiet: bool, verbose: bool = False, log_file: Path | None = None) -> None:
    """Console: warnings only when quiet. The --log-file gets everything from INFO (DEBUG
    with -v) with timestamps, whatever --quiet says: it is the record of a batch job."""
    console = _StderrHandler()
    console.setFormatter(logging.Formatter("virnucpro: %(message)s"))
    console.setLevel(logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        to_file = _LogFile(log_file, encoding="utf-8")
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        to_file.setLevel(logging.DEBUG if verbose else logging.INFO)
        handlers.append(to_file)
    for old in log.handlers:
        old.close()
    log.handlers[:] = handlers
    log.setLevel(min(h.level for h in handlers))
    log.propagate = False


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line, naming the command and the fix, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, minimum: float, what: str):
    """An argparse type: a finite `kind` >= minimum."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
        return value
    return parse


def _file_to_write(text: str) -> Path:
    """A path a file can be written to: not a folder, in a folder that exists."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"folder {path.parent} does not exist")
    return path


def _folder(text: str) -> Path:
    """A folder that may not exist yet, but is not a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return path


_SECONDS = _number(float, 1e-3, "must be a positive number of seconds")


def _share(text: str) -> float:
    """--min-virus-fraction: a number in (0, 1]."""
    value = _number(float, 0.0, "must be a number in (0, 1]")(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def _score(text: str) -> float:
    """--threshold: a number in [0, 1]."""
    value = _number(float, 0.0, "must be a number in [0, 1]")(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


_PREDICT_USAGE = """%(prog)s INPUT [-m 300|500] [-o DIR] [options]
       %(prog)s INPUT LEN MODEL [options]     (the original VirNucPro's form)
       %(prog)s INPUT --part K/N -o PART_DIR [options]   (one part of a run; then virnucpro merge)
       %(prog)s --samples SHEET.tsv -o OUT [options]     (every sample of a sheet, models loaded once)"""

_PREDICT_EXAMPLES = """\
examples:
  virnucpro predict reads.fastq.gz -m 300          150 bp reads -> reads_merged/
  virnucpro predict contigs.fa -o results/         contigs, 500 bp chunks, into results/
  zcat run*.fq.gz | virnucpro predict - -m 300     standard input -> stdin_merged/
  virnucpro predict contigs.fa 500 500_model.pth   as the original is called
  virnucpro predict reads.fa -m 300 --devices cuda:0,cuda:1 --log-file run.log
  virnucpro predict examples/ecoli_reads150.fa -m 300 --demo   offline, tiny random models
  virnucpro predict reads.fa -m 300 --part 2/8 -o parts/2of8      part 2 of 8 (virnucpro merge joins them)
  virnucpro predict --samples samples.tsv -m 300 -o results/     results/NAME/ for each sample
"""


def _predict_epilog() -> str:
    files = "\n".join(f"  {name:<38}{what}" for name, what in OUTPUT_FILES)
    codes = "\n".join(f"  {code:<4}{meaning}" for code, meaning in EXIT_CODES)
    return (f"{_PREDICT_EXAMPLES}\noutput files, in RESULTS (INPUT's prefix + _merged, or -o DIR):\n{files}\n"
            f"  (* the original VirNucPro's files, byte for byte; --keep-intermediate adds its chunk and\n"
            f"  frame FASTA files, --save-embeddings RESULTS/{EMBEDDINGS_DIRNAME}/)\n\nexit codes:\n{codes}\n")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="classify the sequences of a FASTA/FASTQ file as viral or not",
        usage=_PREDICT_USAGE, epilog=_predict_epilog(),
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=30),
        description="Chunk, translate, embed (DNABERT-S + ESM-2 3B) and classify every sequence of INPUT.\n"
        "Results go to {prefix}_merged/ like the original VirNucPro, where prefix is the input path\n"
        "up to its first '.fa'; other names lose their extension (x.fq.gz gives x_merged/).",
    )
    _input_output_options(p.add_argument_group("input and output"))
    _call_options(p.add_argument_group("per-sequence calls (prediction_summary.tsv, viral_sequences.fa)"))
    _model_options(p.add_argument_group("models"))
    _device_options(p.add_argument_group("devices and speed"))
    _resume_options(p.add_argument_group("resume"))
    _monitoring_options(p.add_argument_group("monitoring and logging"))


def _input_output_options(g) -> None:
    g.add_argument("input", type=Path, metavar="INPUT", nargs="?",
                   help="FASTA or FASTQ, plain or gzip (told by the content); - reads standard input")
    g.add_argument("positional_len", nargs="?", type=int, metavar="LEN",
                   help="chunk length, positional as in the original (300 or 500)")
    g.add_argument("positional_classifier", nargs="?", type=Path, metavar="MODEL",
                   help="classifier .pth, positional as in the original")
    g.add_argument("-m", "--chunk-len", type=int, choices=CHUNK_LENGTHS, default=None, metavar="300|500",
                   help="chunk length and model: 300 for short reads, 500 for contigs (default 500)")
    g.add_argument("-o", "--output-dir", type=_folder, metavar="DIR",
                   help="results folder (default {prefix}_merged; stdin_merged for -)")
    g.add_argument("--force", action="store_true",
                   help="replace the results of another input in the results folder (refused otherwise)")
    g.add_argument("--rna-as-dna", action="store_true",
                   help="read U as T (RNA input); by default, as the original, codons holding U are dropped")
    g.add_argument("--keep-intermediate", action="store_true",
                   help="also write the original's intermediate FASTA files")
    g.add_argument("--save-embeddings", action="store_true",
                   help="also write per-frame DNABERT-S and ESM-2 embeddings to RESULTS/embeddings/ (.npy)")


def _call_options(g) -> None:
    g.add_argument("--min-virus-fraction", type=_share, default=RunConfig.min_virus_fraction, metavar="F",
                   help="a sequence is virus when at least this share of its scored chunks is "
                   f"(0 < F <= 1; default {RunConfig.min_virus_fraction})")
    g.add_argument("--threshold", type=_score, default=None, metavar="T",
                   help="a chunk is virus when its best virus score (score2) is >= T (0..1); default: "
                   "the original's rule, best score2 >= best score1")


def _model_options(g) -> None:
    g.add_argument("--classifier", type=Path, metavar="FILE",
                   help="classifier .pth (default: 300_model.pth or 500_model.pth in the model cache)")
    g.add_argument("--esm-model", type=Path, metavar="FILE", help="ESM-2 3B checkpoint (.pt)")
    g.add_argument("--dnabert-model", type=Path, metavar="DIR",
                   help="DNABERT-S folder (config.json, weights, tokenizer.json)")
    g.add_argument("--demo", action="store_true",
                   help="tiny random models for the models not given: runs offline, results meaningless")


def _device_options(g) -> None:
    g.add_argument("--devices", default="auto", metavar="LIST",
                   help="auto (every visible GPU, else the CPU), or a list: cuda:0,cuda:2 or cpu; "
                   "one worker process per device (default auto)")
    g.add_argument("-t", "--threads", type=_number(int, 1, "must be a whole number of threads, at least 1"),
                   metavar="N", help="CPU threads for inference on the CPU and the host side of GPU workers "
                   "(default: torch's, one per core); reading and translating use one")
    g.add_argument("--precision", choices=PRECISIONS, default="auto", metavar="|".join(PRECISIONS),
                   help="auto = bf16 on GPUs, fp32 on CPUs (default auto); fp8 is experimental: "
                   "faster on fp8 GPUs but short of the fidelity asked of a fast mode (README)")
    g.add_argument("--batch-tokens", type=_number(int, 64, "must be a whole number of tokens, at least 64"),
                   metavar="N", help="token budget per batch (default: by device)")
    g.add_argument("--no-compile", action="store_true",
                   help="skip torch.compile of ESM-2 on GPUs (a few seconds less start-up, ~20%% slower)")
    g.add_argument("--reference", action="store_true",
                   help="run the original algorithm (fp32, one-by-one DNABERT-S, 2048-token ESM batches)")


def _resume_options(g) -> None:
    g.add_argument("--restart", action="store_true",
                   help="discard the checkpoints of an earlier interrupted run instead of resuming it")
    g.add_argument("--shard-tokens", type=_number(int, 1, "must be a positive whole number of tokens"),
                   default=RunConfig.shard_tokens, metavar="N",
                   help=f"protein tokens per checkpointed shard (default {RunConfig.shard_tokens:,})")


def _monitoring_options(g) -> None:
    g.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="debug messages: each device's start-up, each shard, throughput at every interval")
    g.add_argument("--log-file", type=_file_to_write, metavar="FILE",
                   help="also write the log here (timestamps; not silenced by -q)")
    g.add_argument("--monitor-interval", type=_SECONDS, default=10.0, metavar="SECONDS",
                   help="GPU sampling and stall checks every SECONDS (default 10); per-device lines "
                   "in the log once a minute")
    g.add_argument("--report-sequences", type=_number(int, 0, "must be a whole number, 0 or more"),
                   default=5, metavar="N",
                   help="top-scoring sequences drawn chunk by chunk in report.html (default 5; 0: no report)")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    compare = sub.add_parser(
        "compare", help="how far two result folders of the same input agree",
        description="Compare two result folders of the same input (e.g. --precision fp8 against bf16, "
        "or two versions): label agreement of frames, chunks and sequences, per-frame score "
        "differences, and, when both saved embeddings, each encoder's per-frame cosine.")
    compare.add_argument("a", type=Path, metavar="RESULT_A", help="a result folder")
    compare.add_argument("b", type=Path, metavar="RESULT_B", help="another result folder")
    compare.add_argument("--min-agreement", type=_number(float, 0.0, "must be a fraction between 0 and 1"),
                         metavar="FRACTION", help="exit 1 when fewer frames than this agree (e.g. 0.999)")
    compare.add_argument("--json", type=_file_to_write, metavar="FILE", help="also write the figures as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="virnucpro", description="Identify viral DNA with the VirNucPro method, on every GPU.",
        epilog="`virnucpro predict --help`: its options, examples, output files and exit codes.")
    parser.add_argument("--version", action="version", version=f"virnucpro {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_predict(sub)
    _add_scale_out(sub, sub.choices["predict"])
    plot = sub.add_parser("plot", help="draw a finished run's report for named sequences",
                          description="Write the run's HTML report (results, scores, top-scoring "
                          "sequences, run, GPUs, throughput) with the named sequences drawn chunk by chunk.")
    plot.add_argument("results", type=Path, metavar="RESULT_DIR", help="result folder of a finished run")
    plot.add_argument("--ids", nargs="+", required=True, metavar="ID", help="sequence ids to draw")
    plot.add_argument("-o", "--output", type=_file_to_write, metavar="FILE",
                      help="HTML file to write (default RESULTS/plot.html)")
    _add_compare(sub)
    models = sub.add_parser("models", help="where models are looked for; download them")
    msub = models.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    info = msub.add_parser("info", help="show where each model is looked for and whether it is there",
                           description="Where each model a run needs is looked for, and whether it is "
                           f"there; exit code {ModelError.exit_code} when one is missing.")
    info.add_argument("-m", "--chunk-len", type=int, choices=CHUNK_LENGTHS, default=500, metavar="300|500",
                      help="the classifier for this chunk length (default 500)")
    dl = msub.add_parser("download", help="download the real models (needs internet)")
    dl.add_argument("--only", action="append", choices=MODEL_CHOICES,
                    help="download only this model (repeatable)")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    if args.positional_len is not None and args.chunk_len is not None and args.positional_len != args.chunk_len:
        raise InputError(f"chunk length given twice: {args.positional_len} and -m {args.chunk_len}")
    if args.positional_classifier is not None and args.classifier is not None:
        raise InputError("classifier given twice: positionally and with --classifier")
    chunk_len = args.chunk_len or args.positional_len or 500
    if chunk_len not in CHUNK_LENGTHS:
        raise InputError(f"chunk length must be 300 or 500, got {chunk_len}")
    return RunConfig(
        input=args.input,
        chunk_len=chunk_len,
        out_dir=args.output_dir,
        models=ModelPaths(esm=args.esm_model, dnabert=args.dnabert_model,
                          classifier=args.classifier or args.positional_classifier),
        devices=args.devices,
        precision=args.precision,
        reference=args.reference,
        demo=args.demo,
        keep_intermediate=args.keep_intermediate,
        rna_as_dna=args.rna_as_dna,
        save_embeddings=args.save_embeddings,
        shard_tokens=args.shard_tokens,
        compile=not args.no_compile,
        batch_tokens=args.batch_tokens,
        min_virus_fraction=args.min_virus_fraction,
        threshold=args.threshold,
        threads=args.threads,
    )


def _predict(args: argparse.Namespace) -> int:
    from virnucpro import pipeline

    config = config_from_args(args)
    with _monitored(args) as monitor:
        outcome = pipeline.run(config, monitor, restart=args.restart, force=args.force)
    for line in closing_lines(outcome):
        log.info(line)
    if outcome.demo_models:
        log.warning("DEMO MODE results: random models, not biologically meaningful")
    return 0


def closing_lines(outcome) -> list[str]:
    """What the run found first, then where it is, then how it ran."""
    calls = outcome.calls
    share = f" ({100 * calls.virus / calls.records:.1f} %)" if calls.records else ""
    found = f"{calls.virus:,} of {calls.records:,} sequences called viral{share}"
    if calls.no_frames:
        found += f"; {calls.no_frames:,} not assessed: no stop-free frame"
    if calls.skipped:
        found += f"; {calls.skipped:,} empty, skipped"
    resumed = f", {outcome.resumed_shards} shard(s) from an earlier run" if outcome.resumed_shards else ""
    folder = outcome.result_dir
    return [found,
            f"per sequence: {folder}/{SEQUENCES_NAME}; viral sequences: {folder}/{VIRAL_FASTA_NAME}; "
            f"per frame and chunk (the original's files) and report.html in {folder}/",
            f"{outcome.frames:,} frames classified in {outcome.seconds:.1f} s on {outcome.device} "
            f"({outcome.dtype}){resumed}"]


def _plot(args: argparse.Namespace) -> int:
    from virnucpro.layout import PLOT_NAME
    from virnucpro.monitoring.report import write_report

    out = write_report(args.results, ids=args.ids, out=args.output or args.results / PLOT_NAME)
    log.info(f"report written to {out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import json

    from virnucpro.stages.compare import compare_results, describe

    for folder in (args.a, args.b):
        if not folder.is_dir():
            raise InputError(f"{folder}: not a result folder")
    result = compare_results(args.a, args.b)
    for line in describe(result, args.a, args.b):
        print(line)
    if args.json:
        from virnucpro.layout import write_text_atomic

        write_text_atomic(args.json, json.dumps(result.as_dict(), indent=1) + "\n", fsync=False)
    agreement = result.frames.fraction
    if args.min_agreement is not None and (agreement is None or agreement < args.min_agreement):
        shown = "none compared" if agreement is None else f"{agreement:.6f}"
        print(f"virnucpro: frame agreement {shown} is below --min-agreement {args.min_agreement}", file=sys.stderr)
        return 1
    return 0


def _models(args: argparse.Namespace) -> int:
    if args.models_command == "info":
        from virnucpro.models.bundle import model_locations

        locations = model_locations(args.chunk_len)
        for loc in locations:
            state = "present" if loc.present else f"MISSING (get it: {loc.how_to_get})"
            print(f"{loc.name:<20} {state}\n{'':<20} {loc.path}")
        missing = [loc.name for loc in locations if not loc.present]
        if missing:  # scripts checking a node before a run see it in the exit code
            print(f"missing: {', '.join(missing)}; `virnucpro models download` fetches them")
            return ModelError.exit_code
        return 0
    from virnucpro.models.download import download

    download(args.only, log.info)
    return 0


# --------------------------------------------------------------------------- scaling out
# Parts of a run (predict --part), their merge, sample sheets (predict --samples) and the
# Snakemake workflow that runs them on a cluster.


def _part_spec(text: str) -> PartSpec:
    try:
        return PartSpec.parse(text)
    except (ValueError, InputError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_scale_out(sub: argparse._SubParsersAction, predict: argparse.ArgumentParser) -> None:
    """predict's options for scaling out, and the merge and workflow commands."""
    group = predict.add_argument_group("scaling out (see also `virnucpro merge` and `virnucpro workflow`)")
    group.add_argument("--part", type=_part_spec, metavar="K/N",
                       help="compute only part K of N of the input (every N-th shard of the whole run) into "
                       "-o PART_DIR, resumable like a whole run; `virnucpro merge` writes the results of all N")
    group.add_argument("--samples", type=Path, metavar="SHEET",
                       help="run every sample of a TAB-separated sheet (NAME<TAB>PATH lines, header optional) "
                       "in one process, the models loaded once; results in OUT/NAME/ (-o OUT, no INPUT)")
    merge = sub.add_parser(
        "merge", help="write the results of a run computed in parts (predict --part K/N)",
        description="Merge the N part folders of one run (any order) into the result files a single "
        "`virnucpro predict` of the whole input writes, byte for byte. Parts of different runs, a missing, "
        "repeated or unfinished part are refused before anything is written (exit 2).")
    merge.add_argument("parts", type=Path, nargs="+", metavar="PART_DIR", help="the folders of predict --part")
    merge.add_argument("-o", "--output-dir", type=_folder, required=True, help="results folder")
    merge.add_argument("--force", action="store_true",
                       help="replace the results of another input in the results folder (refused otherwise)")
    # the per-sequence calls are made at the merge (the original's two files do not depend on them)
    _call_options(merge.add_argument_group("per-sequence calls (prediction_summary.tsv, viral_sequences.fa)"))
    merge.add_argument("--report-sequences", type=_number(int, 0, "must be a whole number, 0 or more"),
                       default=5, metavar="N", help="sequences drawn in report.html (default 5; 0: no report)")
    merge.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    merge.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    merge.add_argument("--log-file", type=_file_to_write, metavar="FILE", help="also write the log here")
    workflow = sub.add_parser("workflow", help="a Snakemake workflow: many samples, in parts, on a cluster")
    wsub = workflow.add_subparsers(dest="workflow_command", required=True, parser_class=_Parser)
    init = wsub.add_parser("init", help="write the workflow (Snakefile, config.yaml, profiles) to DIR, ready to edit")
    init.add_argument("dir", type=_folder, metavar="DIR")
    init.add_argument("--force", action="store_true", help="overwrite the workflow files already in DIR")


def _predict_command(args: argparse.Namespace) -> int:
    """predict: one input, one part of it, or every sample of a sheet."""
    if args.samples is not None:
        return _predict_samples(args)
    if args.input is None:
        raise InputError("predict needs an INPUT file (or --samples SHEET)")
    if args.part is not None:
        return _predict_part(args)
    return _predict(args)


@contextlib.contextmanager
def _monitored(args: argparse.Namespace, *, report: bool = True):
    """A monitor for one run (a whole input, a part, a sample or a merge), with the usual
    watchers: progress, GPU sampling, run summary and (unless `report` is off) report.html."""
    from virnucpro.monitoring import DEVICE_LOG_INTERVAL, MonitorOptions, attach
    from virnucpro.monitoring.events import Monitor, log_subscriber

    monitor = Monitor()
    monitor.subscribe(log_subscriber)
    interval = getattr(args, "monitor_interval", 10.0)
    # a bar on a terminal; in a batch job's captured stderr, plain lines instead
    progress = "off" if args.quiet else ("bar" if sys.stderr.isatty() else "lines")
    session = attach(monitor, MonitorOptions(
        interval=interval, progress=progress,
        # per-device lines: once a minute in a batch log, at every interval with -v
        device_log_interval=interval if args.verbose else DEVICE_LOG_INTERVAL,
        report_sequences=args.report_sequences if report and args.report_sequences > 0 else None))
    try:
        yield monitor
    finally:
        session.close()


def _predict_part(args: argparse.Namespace) -> int:
    from virnucpro import pipeline

    if args.output_dir is None:
        raise InputError("--part needs -o PART_DIR: the folder `virnucpro merge` reads the part from")
    if args.keep_intermediate:
        raise InputError("--keep-intermediate writes files of the whole input: not with --part")
    if str(args.input) == "-":
        raise InputError("--part reads its input again in every part and in the merge: give a file, not -")
    config = dataclasses.replace(config_from_args(args), part=args.part)
    with _monitored(args, report=False) as monitor:  # a part has no result tables to draw
        outcome = pipeline.run(config, monitor, restart=args.restart, force=args.force)
    part = outcome.part
    resumed = f", {outcome.resumed_shards} shard(s) from an earlier run" if outcome.resumed_shards else ""
    log.info(f"part {part.k}/{part.n}: {outcome.frames:,} of the run's {part.frames:,} frames ({part.part_shards} "
             f"of {part.shards} shards) in {outcome.seconds:.1f} s on {outcome.device} ({outcome.dtype}){resumed}")
    log.info(f"kept in {outcome.result_dir}/; once all {part.n} parts are done, "
             "`virnucpro merge PART_DIR ... -o RESULTS` writes the results")
    if outcome.demo_models:
        log.warning("DEMO MODE results: random models, not biologically meaningful")
    return 0


def _predict_samples(args: argparse.Namespace) -> int:
    from virnucpro import pipeline

    if args.input is not None or args.part is not None:
        raise InputError("--samples runs the samples of a sheet: give no INPUT and no --part with it")
    if args.output_dir is None:
        raise InputError("--samples needs -o OUT: each sample's results go to OUT/NAME/")
    samples = read_sample_sheet(args.samples)
    configs = [(sample.name, config_from_args(argparse.Namespace(
        **{**vars(args), "input": sample.path, "output_dir": args.output_dir / sample.name}))) for sample in samples]

    position = {sample.name: number for number, sample in enumerate(samples, 1)}

    def monitored(name: str):
        log.info(f"sample {name} ({position[name]} of {len(samples)})")
        return _monitored(args)

    outcomes = pipeline.run_samples(configs, monitored, restart=args.restart, force=args.force)
    for result in outcomes:
        for line in closing_lines(result.outcome) if result.outcome else []:
            log.info(f"sample {result.name}: {line}")
    failed = [result for result in outcomes if result.error is not None]
    for result in failed:
        print(f"virnucpro: error: sample {result.name}: {result.error}", file=sys.stderr)
    if failed:
        print(f"virnucpro: {len(failed)} of {len(outcomes)} samples failed; the others' results are in "
              f"{args.output_dir}/NAME/", file=sys.stderr)
        return failed[0].error.exit_code
    if any(result.outcome.demo_models for result in outcomes):
        log.warning("DEMO MODE results: random models, not biologically meaningful")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from virnucpro import pipeline
    from virnucpro.stages.calls import CallRule

    with _monitored(args) as monitor:
        outcome = pipeline.merge(args.parts, args.output_dir, monitor, force=args.force,
                                 calls=CallRule(args.min_virus_fraction, args.threshold))
    lines = closing_lines(outcome)
    lines[-1] = f"{outcome.frames:,} frames of {outcome.device} merged in {outcome.seconds:.1f} s ({outcome.dtype})"
    for line in lines:
        log.info(line)
    if outcome.demo_models:
        log.warning("DEMO MODE results: random models, not biologically meaningful")
    return 0


def _workflow(args: argparse.Namespace) -> int:
    from virnucpro.workflow import init_workflow

    init_workflow(args.dir, force=args.force)
    log.info(f"workflow written to {args.dir}/: set the samples, parts and model paths in {args.dir}/config.yaml, "
             f"then run `snakemake --profile profiles/local` (or profiles/slurm) in {args.dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before anything touches CUDA (workers inherit it): growable segments instead of fixed
    # blocks, so batches of varying size do not fragment the GPU's memory.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    try:
        configure_logging(quiet=getattr(args, "quiet", False), verbose=getattr(args, "verbose", False),
                          log_file=getattr(args, "log_file", None))
    except OSError as exc:
        print(f"virnucpro: error: cannot write the log file {args.log_file}: {exc.strerror or exc}", file=sys.stderr)
        return OutputError.exit_code
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = {"predict": _predict_command, "plot": _plot, "compare": _compare, "merge": _merge,
                "workflow": _workflow}.get(args.command, _models)(args)
        if failure := log_file_failure():
            raise OutputError(failure)
        return code
    except VirnucproError as exc:
        print(f"virnucpro: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"virnucpro: {what}; finished shards are kept, rerun the same command to resume",
              file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)



def entry() -> None:
    """The `virnucpro` command: main(), then leave without interpreter teardown. A worker
    thread still inside a kernel when a run is interrupted could otherwise abort the process
    (exit 134 instead of 130/143) as Python finalises; everything is written and closed by now."""
    # Before torch is imported: seconds of every start where the environment keeps no bytecode.
    keep_bytecode(virnucpro_home() / "bytecode")
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    entry()
