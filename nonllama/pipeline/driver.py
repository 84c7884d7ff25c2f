"""The stage driver: the stage contract written once, for every data stage and executor.

A stage says what it reads and its config, and gives the driver its work: a function of a
:class:`StageContext` that runs passes of small tasks through ``ctx.map`` (with small reduces
in between) and returns its manifest section. :func:`drive` does the rest, the same way for
every stage:

1. claim the output directory (:class:`nonllama.pipeline.dirs.OutputDir`: never an input or
   nested with one, only an earlier output of this stage is emptied, one run at a time);
2. up to date? The manifest there has this stage, this nonllama version, this input digest,
   this config and these data files (word lists, models: `dependencies`) -> nothing to do;
3. else resume or reset: a run of this same stage, input, config and version that was
   interrupted (``.work/run.json``) is resumed, keeping the tasks it finished (each has a
   completion marker under ``.work/tasks/``; tasks write their files under final names through a
   temporary name, so a finished task's files are whole); anything else starts from empty;
4. the work, its tasks spread by the executor (:mod:`nonllama.pipeline.executors`);
5. kept + removed = read for a document stage, or the stage refuses to finish;
6. temporaries and ``.work/`` removed, then the manifest written, last and atomically.

:func:`run_shard_stage` is the work of a stage that maps input part i to output part i (and
side part i): normalize, filter, and dedup's last pass.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from rich.console import Console

from nonllama import __version__
from nonllama.pipeline.dirs import OutputDir, open_input
from nonllama.pipeline.executors import Executor, LocalExecutor
from nonllama.pipeline.io import (
    CACHE_DIR_NAME,
    DEFAULT_BATCH_ROWS,
    MANIFEST_NAME,
    Counts,
    PartWriter,
    Reporter,
    StageError,
    StageRun,
    atomic_path,
    atomic_write_json,
    describe_part,
    document_section,
    iter_part_batches,
    manifest_header,
    part_name,
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


WORK_DIR = ".work"  # per-run scratch and task markers; removed before the manifest is written


@dataclass
class StageContext:
    """What a stage's work sees: where to write, where to keep scratch, how to run tasks."""

    output_dir: Path
    executor: Executor
    console: Console | None = None
    resumed: int = 0  # tasks an interrupted run had finished, not run again
    tasks: int = 0  # tasks in all passes so far

    @property
    def work_dir(self) -> Path:
        """Scratch of this run (a stage's intermediate files): kept across an interruption."""
        path = self.output_dir / WORK_DIR / "scratch"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def map(self, fn: Callable[[Any, Reporter], Any], tasks: Sequence[Any], *, label: str,
            total_docs: int | None = None, on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """``fn(task, report)`` for every task, through the executor; results in task order.

        Each finished task leaves a completion marker (its pickled result) under
        ``.work/tasks/<label>/``; a task marked by an interrupted run of this same run is not run
        again (its result is read back), so `fn` must write its files under final names through
        a temporary name, and rewrite the same bytes when rerun. Labels name passes: unique
        within a stage. `on_result(i, result)` is called here once for every task, resumed ones
        first, then as results arrive.
        """
        markers = self.output_dir / WORK_DIR / "tasks" / label.replace("/", "_").replace(" ", "_")
        markers.mkdir(parents=True, exist_ok=True)
        results: list[Any] = [None] * len(tasks)
        todo = []
        for i in range(len(tasks)):
            marker = markers / f"{i:06d}.done"
            if marker.exists():
                results[i] = pickle.loads(marker.read_bytes())
            else:
                todo.append(i)
        self.tasks += len(tasks)
        self.resumed += len(tasks) - len(todo)

        def finished(j: int, result: Any) -> None:
            i = todo[j]
            results[i] = result
            with atomic_path(markers / f"{i:06d}.done") as tmp:
                tmp.write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
            if on_result is not None:
                on_result(i, result)

        if len(todo) < len(tasks):  # resumed: the bar counts what is left
            total_docs = None
            if on_result is not None:  # every task's result reaches on_result once, resumed ones first
                for i in sorted(set(range(len(tasks))) - set(todo)):
                    on_result(i, results[i])
        self.executor.map(fn, [tasks[i] for i in todo], label=label, total_docs=total_docs, on_result=finished)
        return results


@dataclass
class StageJob:
    """One run of a stage, as the driver needs it."""

    stage: str
    config: dict  # the effective config, as recorded in the manifest
    output_dir: Path
    inputs: Sequence[Path]  # what it reads (for the nesting checks, and absolute under Ray)
    input_info: dict  # recorded in the manifest; its "digest" is what "up to date" compares
    work: Callable[[StageContext], dict]  # runs the passes; returns the manifest section
    dependencies: dict[str, str] = field(default_factory=dict)  # data files the stage uses: their digests
    complete: Callable[[], bool] | None = None  # an up-to-date output must also pass this


def drive(job: StageJob, *, executor: Executor | None = None, workers: int = 1, force: bool = False,
          console: Console | None = None) -> StageRun:
    """Run `job` under the stage contract (see the module docstring); what it did.

    Without an `executor`, a local one of `workers` processes is made for this stage and
    closed after it."""
    if executor is None:
        with LocalExecutor(workers, console) as local:
            return drive(job, executor=local, force=force, console=console)
    started = time.time()
    output_dir = Path(job.output_dir)
    if executor.kind == "ray":
        _require_absolute([output_dir, *job.inputs])
    digest = job.input_info["digest"]
    with OutputDir(output_dir, job.stage, inputs=job.inputs) as out:
        previous = out.up_to_date(digest, job.config, job.dependencies)
        if not force and previous is not None and (job.complete is None or job.complete()):
            return StageRun(previous, True, output_dir, out.notices)
        identity = {"stage": job.stage, "version": __version__, "digest": digest,
                    "config": json.loads(json.dumps(job.config, default=str)), "dependencies": job.dependencies}
        run_file = output_dir / WORK_DIR / "run.json"
        if force or (output_dir / MANIFEST_NAME).exists() or _read_json(run_file) != identity:
            out.reset()
            atomic_write_json(run_file, identity)
        executor.start()  # local helpers import while the stage plans its first pass
        ctx = StageContext(output_dir, executor, console)
        section = job.work(ctx)
        if "rows_removed" in section and section["rows_out"] + section["rows_removed"] != section["rows_in"]:
            raise StageError(f"{job.stage} -> {output_dir}: accounting error: {section['rows_in']} rows in, "
                             f"{section['rows_out']} kept, {section['rows_removed']} removed")
        _remove_temporaries(output_dir)
        manifest = {**manifest_header(job.stage, job.config, job.input_info, job.dependencies), **section,
                    "wall_time_s": round(time.time() - started, 3)}
        atomic_write_json(output_dir / MANIFEST_NAME, manifest)
    notices = list(out.notices)
    if ctx.resumed:
        notices.append(f"resumed an interrupted run: {ctx.resumed} of {ctx.tasks} tasks were already done")
    return StageRun(manifest, False, output_dir, notices)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _require_absolute(paths: Iterable[Path]) -> None:
    for path in paths:
        if not Path(path).is_absolute():
            raise StageError(f"--executor ray: {path} is a relative path; Ray tasks run on other nodes and in "
                             "other directories, so give absolute paths on a filesystem every node sees "
                             f"(e.g. {Path(path).absolute()})")


def _remove_temporaries(output_dir: Path) -> None:
    """Scratch, and what tasks that died mid-write left (`.NAME.tmp-PID`): Ray reruns such a task."""
    shutil.rmtree(output_dir / WORK_DIR, ignore_errors=True)
    for dirpath, dirnames, filenames in os.walk(output_dir):
        dirnames[:] = [d for d in dirnames if d != CACHE_DIR_NAME]
        for name in filenames:
            if name.startswith(".") and ".tmp-" in name:
                (Path(dirpath) / name).unlink(missing_ok=True)


def run_shard_stage(
    *,
    stage: str,
    input_dir: Path,
    output_dir: Path,
    side_dir_name: str,
    config: dict,
    transform: Transform,
    workers: int = 1,
    executor: Executor | None = None,
    force: bool = False,
    verify_input: bool = False,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    console: Console | None = None,
    count_batch: BatchCounter | None = None,
    dependencies: dict[str, str] | None = None,
    then: Callable[[StageContext, dict], dict] | None = None,
) -> StageRun:
    """Drive a stage that maps input part i to output part i (and side part i).

    `transform` (and `count_batch`, whose counters are summed into the manifest's
    `stage_counts`) must be picklable (a module-level function or a functools.partial of
    one): tasks run in other processes. `then(ctx, section)`: more passes after the shard pass
    (through `ctx.map`), given the manifest section; returns it, updated (rewritten parts
    described anew, its own entries added). The filter's perplexity buckets are such passes.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    inp = open_input(input_dir, stage=stage, verify=verify_input)

    def work(ctx: StageContext) -> dict:
        side_dir = output_dir / side_dir_name
        tasks = [
            ShardTask(i, p, output_dir, side_dir, transform, batch_rows, count_batch)
            for i, p in enumerate(inp.paths)
        ]
        results: list[ShardResult] = ctx.map(process_shard, tasks, label=stage, total_docs=inp.rows)
        counts = merge_counts(results, f"{stage} {input_dir} -> {output_dir}")
        section = document_section(counts, [r.part for r in results], side_dir_name,
                                   [r.side_part for r in results if r.side_part])
        return then(ctx, section) if then is not None else section

    job = StageJob(stage, config, output_dir, [input_dir],
                   {"dir": str(input_dir), "stage": inp.stage, "digest": inp.digest}, work, dependencies or {})
    return drive(job, executor=executor, workers=workers, force=force, console=console)
