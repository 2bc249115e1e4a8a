"""Writing a run's results: frames streamed and cut into shards, each shard's results (from
the workers, the store or the parts of a merge) into the result tables, the per-sequence
calls and the embeddings, in input order -- the one way they are written."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from virnucpro.config import RunConfig
from virnucpro.engine.sharding import plan_shards
from virnucpro.layout import (
    EMBEDDINGS_DIRNAME,
    PLOT_NAME,
    SEQUENCES_NAME,
    VIRAL_FASTA_NAME,
    RunLayout,
    remove_quietly,
)
from virnucpro.monitoring.events import Monitor
from virnucpro.pipeline.common import ResultSource, RunCounts
from virnucpro.predict.task import frame_cost
from virnucpro.stages.calls import CallRule, SequenceCalls
from virnucpro.stages.embeddings import EmbeddingsWriter
from virnucpro.stages.read import InputState
from virnucpro.stages.reuse_original import OriginalRun
from virnucpro.stages.stream import RnaRecords, stream_frames
from virnucpro.stages.types import Frame
from virnucpro.stages.write import IntermediateFiles, ResultWriter


def finish(config: RunConfig, layout: RunLayout, monitor: Monitor, original: OriginalRun | None,
            done: RunCounts) -> None:
    """With the result files in place: say what is worth knowing, and drop what an earlier
    run left there."""
    monitor.emit("sequences_called", **done.calls.as_dict())
    if done.frames == 0:
        monitor.warn(f"{config.input_label}: no chunk has a stop-free reading frame; the result files hold headers only")
    if original is not None and original.reused:
        monitor.info(f"reused the embeddings of {original.reused:,} frames from the original VirNucPro's files")
    if config.save_embeddings:
        monitor.info(f"embeddings written to {layout.result(EMBEDDINGS_DIRNAME)}/")
    # Files an earlier run left that would now sit beside results they do not describe.
    for stale in ([] if config.save_embeddings else [EMBEDDINGS_DIRNAME]) + [PLOT_NAME]:
        remove_quietly(layout.result(stale))




def write_results(config: RunConfig, layout: RunLayout, monitor: Monitor, started: InputState | None,
             original: OriginalRun | None, results: ResultSource, done: RunCounts) -> RunCounts:
    """Frames -> shards -> their results -> result tables, in input order. The one way the
    tables are written: by a whole run (results computed or stored) and by a merge (results
    from the parts)."""
    intermediates = layout.intermediates() if config.keep_intermediate else None
    rule = CallRule(config.min_virus_fraction, config.threshold)
    embeddings = (EmbeddingsWriter(layout.result_dir, done.info.feature_dims) if config.save_embeddings
                  else contextlib.nullcontext())
    with IntermediateFiles(intermediates) as files, ResultWriter(layout.result_dir) as writer, \
            SequenceCalls(layout.result_dir, rule) as calls, embeddings:
        frames = stream_of(config, layout, monitor, files, started, calls.index, original)
        for result in results(plan_shards(frames, frame_cost, config.shard_tokens)):
            writer.add(result.ids, result.score1, result.score2)
            calls.add_scores(result.ids, result.score1, result.score2)
            if config.save_embeddings:
                embeddings.add(result.ids, result.dna_embeddings, result.protein_embeddings)
            done.frames += len(result.ids)
            done.shards += 1
        writer.close()  # the original's two files first: the per-sequence files come after them
        done.calls = calls.finish(layout.result(SEQUENCES_NAME), layout.result(VIRAL_FASTA_NAME))
    return done


def stream_of(config: RunConfig, layout: RunLayout, monitor: Monitor, files: IntermediateFiles,
            started: InputState | None, index, original: OriginalRun | None) -> Iterator[Frame]:
    """The input's kept frames, streamed, reporting on the way; `index` gets every record."""
    frames = stream_frames(
        config.input, config.chunk_len, files, rna_as_dna=config.rna_as_dna, started=started, index=index,
        on_rna=lambda rna: _warn_rna(config, monitor, rna),
        on_empty=lambda record: monitor.warn(f"{config.input_label}: record {record!r} is empty and was skipped"),
        on_progress=lambda read, total, frames, seconds: monitor.emit(
            "input_progress", bytes_read=read, bytes_total=total, frames=frames, seconds=seconds))
    if original is not None and layout.original_run.exists():
        monitor.info(f"found the original VirNucPro's files for {layout.prefix}: reusing their embeddings")
        frames = original.frames(frames)
    return frames


def _warn_rna(config: RunConfig, monitor: Monitor, rna: RnaRecords) -> None:
    names = ", ".join(rna.first) + (" ..." if rna.count > len(rna.first) else "")
    if config.rna_as_dna:
        monitor.info(f"{config.input_label}: read U as T in {rna.count:,} record(s) ({names}), as --rna-as-dna asks")
        return
    monitor.warn(f"{config.input_label}: {rna.count:,} record(s) hold U, as RNA does ({names}); like the original "
                 "VirNucPro, every codon holding a U is dropped, so their frames rarely show a stop and "
                 "most are kept: their calls mean little. Rerun with --rna-as-dna to read U as T")
