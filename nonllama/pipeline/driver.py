"""Driving a data stage: claim the output, read the input through its manifest, run the tasks.

:func:`run_shard_stage` drives a stage that maps input part i to output part i (and side part
i): normalize, filter, and dedup's last pass. The claims on directories (an output is only
reset when it holds this stage's output, one run at a time, the input read exactly as its
manifest lists it) live in :mod:`nonllama.pipeline.dirs`; the mechanics (parts, manifests,
the worker pool) in :mod:`nonllama.pipeline.io`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from rich.console import Console

from nonllama.pipeline.dirs import OutputDir, open_input
from nonllama.pipeline.io import (
    DEFAULT_BATCH_ROWS,
    Counts,
    PartWriter,
    Reporter,
    StageError,
    StageRun,
    describe_part,
    iter_part_batches,
    part_name,
    run_tasks,
    write_manifest,
)

# kept, removed (with a `drop_reason` column and any rule values)
Transform = Callable[[pl.DataFrame], tuple[pl.DataFrame, pl.DataFrame]]
# (batch in, kept, removed) -> a stage's own counters for the manifest, summed over batches
BatchCounter = Callable[[pl.DataFrame, pl.DataFrame, pl.DataFrame], dict[str, int]]


@dataclass
class ShardTask:
    index: int
    input_part: Path
    output_dir: Path
    side_dir: Path
    transform: Transform
    batch_rows: int
    count_batch: BatchCounter | None = None


@dataclass
class ShardResult:
    part: dict
    side_part: dict | None
    counts: Counts


def process_shard(task: ShardTask, report: Reporter) -> ShardResult:
    """Stream one input part through the transform into one output part (+ side part)."""
    counts = Counts()
    name = part_name(task.index)
    kept_writer = PartWriter(task.output_dir / name)
    side_writer = PartWriter(task.side_dir / name, write_empty=False)
    try:
        for batch in iter_part_batches(task.input_part, task.batch_rows):
            kept, removed = task.transform(batch)
            if kept.height + removed.height != batch.height:
                raise StageError(
                    f"{task.input_part}: transform returned {kept.height} kept + "
                    f"{removed.height} removed rows for {batch.height} rows in"
                )
            _count_batch(counts, batch, kept, removed)
            if task.count_batch is not None:
                counts.stage_counts.update(task.count_batch(batch, kept, removed))
            kept_writer.write(kept)
            side_writer.write(removed)
            report(batch.height, int(batch["text"].str.len_bytes().sum() or 0))
        if kept_writer.schema is None:  # an empty input part still gives an output part
            kept_writer.schema = pq.read_schema(task.input_part)
        kept_path = kept_writer.close()
        side_path = side_writer.close()
    except BaseException:
        kept_writer.abort()
        side_writer.abort()
        raise
    assert kept_path is not None
    return ShardResult(
        part=describe_part(kept_path, kept_writer.rows, kept_writer.chars),
        side_part=describe_part(side_path, side_writer.rows, side_writer.chars) if side_path else None,
        counts=counts,
    )


def _count_batch(counts: Counts, batch: pl.DataFrame, kept: pl.DataFrame, removed: pl.DataFrame) -> None:
    counts.rows_in += batch.height
    counts.chars_in += int(batch["text"].str.len_chars().sum() or 0)
    counts.rows_out += kept.height
    counts.chars_out += int(kept["text"].str.len_chars().sum() or 0)
    if removed.height:
        for source, reason, n in removed.group_by("source", "drop_reason").len().iter_rows():
            counts.drop_reasons[reason] += n
            counts.drop_reasons_per_source.setdefault(source, Counter())[reason] += n
    for frame, key in ((batch, "rows_in"), (kept, "rows_out")):
        if frame.height:
            for source, n, chars in (
                frame.group_by("source")
                .agg(pl.len(), pl.col("text").str.len_chars().sum())
                .sort("source")
                .iter_rows()
            ):
                counts.add_source(source, **{key: n, key.replace("rows", "chars"): int(chars or 0)})


def merge_counts(results: Iterable[ShardResult], what: str) -> Counts:
    """The counts of every shard, summed; kept + removed = input is checked here."""
    counts = Counts()
    for r in results:
        counts.merge(r.counts)
    counts.check_balance(what)
    return counts


def run_claimed(stage: str, output_dir: Path, *, inputs: Sequence[Path], input_digest: str, config: dict,
                force: bool, work: Callable[[], dict], complete: Callable[[], bool] | None = None) -> StageRun:
    """The stage contract around a stage's work, for every stage.

    Claim `output_dir` (see `OutputDir`: never an input or nested with one, only an earlier
    output of this stage is emptied, one run at a time); when it holds a finished run with this
    input digest and config (and `complete()` agrees), that run's manifest is the answer;
    otherwise empty it and call `work()`, which writes the stage's files and, last, its
    manifest, and returns that manifest.
    """
    with OutputDir(output_dir, stage, inputs=inputs) as out:
        previous = out.up_to_date(input_digest, config)
        if not force and previous is not None and (complete is None or complete()):
            return StageRun(previous, True, Path(output_dir), out.notices)
        out.reset()
        manifest = work()
    return StageRun(manifest, False, Path(output_dir), out.notices)


def run_shard_stage(
    *,
    stage: str,
    input_dir: Path,
    output_dir: Path,
    side_dir_name: str,
    config: dict,
    transform: Transform,
    workers: int = 1,
    force: bool = False,
    verify_input: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    console: Console | None = None,
    count_batch: BatchCounter | None = None,
) -> StageRun:
    """Drive a stage that maps input part i to output part i (and side part i).

    `transform` (and `count_batch`, whose counters are summed into the manifest's
    `stage_counts`) must be picklable (a module-level function or a functools.partial of
    one) when `workers` > 1.
    """
    started = time.time()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    inp = open_input(input_dir, stage=stage, verify=verify_input)

    def work() -> dict:
        side_dir = output_dir / side_dir_name
        tasks = [
            ShardTask(i, p, output_dir, side_dir, transform, batch_rows, count_batch)
            for i, p in enumerate(inp.paths)
        ]
        results: list[ShardResult] = run_tasks(
            process_shard, tasks, workers=workers, description=stage, total_docs=inp.rows, console=console
        )
        counts = merge_counts(results, f"{stage} {input_dir} -> {output_dir}")
        return write_manifest(
            output_dir,
            stage=stage,
            config=config,
            input_info={"dir": str(input_dir), "stage": inp.stage, "digest": inp.digest},
            counts=counts,
            parts=[r.part for r in results],
            side_dir=side_dir_name,
            side_parts=[r.side_part for r in results if r.side_part],
            started=started,
        )

    return run_claimed(stage, output_dir, inputs=[input_dir], input_digest=inp.digest, config=config,
                       force=force, work=work)
