"""The stage contract shared by every data stage.

A stage reads the directory of the previous stage and writes its own:
``part-NNNNN.parquet`` files, a side directory for what it removed, and ``_manifest.json``.
Everything a later stage could read is written atomically (temporary name, then rename),
and the manifest is written last, so its presence means the stage finished. A rerun whose
input digest and config equal the manifest's is a no-op.

This module holds those mechanics: atomic writes, Parquet parts, manifests, the up-to-date
check, the worker pool with its progress bar, and :func:`run_shard_stage`, the driver of a
stage that maps each input part to one output part (normalize, filter).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as connection_wait
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from nonllama import __version__

MANIFEST_NAME = "_manifest.json"
PART_GLOB = "part-*.parquet"
CACHE_DIR_NAME = ".cache"  # survives a rerun: downloads are not fetched twice
DEFAULT_BATCH_ROWS = 2_000
DOCUMENT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("meta", pa.string()),
    ]
)


class StageError(Exception):
    """A stage cannot run as asked; the CLI prints the message on one line, no traceback."""


# --------------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file the stages depend on (a word list, a model), computed once per process
    while its size and modification time stay the same."""
    st = os.stat(path)
    return _file_digest(str(path), st.st_size, st.st_mtime_ns)


@cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def json_digest(obj: Any) -> str:
    """A stable digest of a JSON-able object (keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------- parquet parts


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def list_parts(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob(PART_GLOB))


class PartWriter:
    """Writes one Parquet part batch by batch, atomically.

    The file appears under its final name only on :meth:`close`; :meth:`abort` (or an
    exception inside a ``with`` block) leaves nothing behind. A part that received no rows
    is still written when ``write_empty`` is set (so outputs map one-to-one onto inputs),
    otherwise skipped.
    """

    def __init__(self, path: Path, schema: pa.Schema | None = None, write_empty: bool = True):
        self.path = Path(path)
        self.schema = schema
        self.write_empty = write_empty
        self.rows = 0
        self.chars = 0
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table | pl.DataFrame) -> None:
        if isinstance(table, pl.DataFrame):
            table = table.to_arrow()
        if self.schema is None:
            self.schema = table.schema
        else:
            table = table.select(self.schema.names).cast(self.schema)
        if table.num_rows == 0:
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self._writer.write_table(table)
        self.rows += table.num_rows
        if "text" in table.schema.names:
            self.chars += text_chars(table.column("text"))

    def close(self) -> Path | None:
        if self._writer is None:
            if not self.write_empty or self.schema is None:
                return None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(self.schema.empty_table(), self._tmp, compression="zstd")
        else:
            self._writer.close()
            self._writer = None
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._tmp.exists():
            self._tmp.unlink()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def text_chars(column: pa.ChunkedArray | pa.Array) -> int:
    """Number of characters (code points) in a string column, nulls counting zero."""
    import pyarrow.compute as pc

    total = pc.sum(pc.utf8_length(column)).as_py()
    return int(total or 0)


def iter_part_batches(path: Path, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pl.DataFrame]:
    """Stream a Parquet part as polars DataFrames of at most `batch_rows` rows."""
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=batch_rows):
        yield pl.from_arrow(pa.Table.from_batches([batch]))  # type: ignore[misc]


def read_parts(directory: Path, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """Read every part of a finished stage directory (for tests and small outputs)."""
    parts = list_parts(directory)
    if not parts:
        return pl.DataFrame()
    return pl.concat(
        [pl.read_parquet(p, columns=list(columns) if columns else None) for p in parts],
        how="diagonal_relaxed",
    )


# --------------------------------------------------------------------------- manifests


def read_manifest(directory: Path) -> dict | None:
    """The `_manifest.json` of a directory, None when there is none; StageError when it is not
    a JSON object (a truncated or hand-made file)."""
    path = Path(directory) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StageError(f"{path}: not a manifest (not JSON: {e}); rerun the stage that wrote it") from None
    if not isinstance(manifest, dict):
        raise StageError(f"{path}: not a manifest (a JSON {type(manifest).__name__}, not an object); "
                         "rerun the stage that wrote it")
    return manifest


def require_finished(directory: Path, produced_by: str) -> dict:
    """The manifest of a finished output of `produced_by`, or a StageError saying what to run."""
    directory = Path(directory)
    if not directory.exists():
        raise StageError(f"input directory {directory} does not exist: run `nonllama {produced_by}` first")
    manifest = read_manifest(directory)
    if manifest is None:
        raise StageError(
            f"input directory {directory} has no {MANIFEST_NAME}: `nonllama {produced_by}` "
            "has not finished there (run it again)"
        )
    if manifest.get("stage") != produced_by:
        found = manifest.get("stage")
        what = f"the output of `nonllama {found}`" if isinstance(found, str) else "not a stage's output"
        raise StageError(f"{directory / MANIFEST_NAME}: {what}, not of `nonllama {produced_by}`")
    return manifest


def output_digest(parts: Iterable[dict]) -> str:
    """What a later stage records as its input digest: the content of this stage's parts."""
    return json_digest([(p["name"], p["sha256"]) for p in parts])


def is_up_to_date(output_dir: Path, stage: str, input_digest: str, config: dict,
                  dependencies: dict | None = None) -> bool:
    """Whether `output_dir` holds a finished run of `stage` by this version of nonllama, on this
    input, with this config and these data files (word lists, models: their digests)."""
    manifest = read_manifest(output_dir)
    return (
        manifest is not None
        and manifest.get("stage") == stage
        and manifest.get("version") == __version__
        and isinstance(manifest.get("input"), dict)
        and manifest["input"].get("digest") == input_digest
        and manifest.get("config") == json.loads(json.dumps(config, default=str))
        and manifest.get("dependencies", {}) == dict(dependencies or {})
    )


def reset_output(output_dir: Path, keep: Sequence[str] = (CACHE_DIR_NAME,)) -> None:
    """Empty an output directory for a fresh run, but for the entries named in `keep`.

    Only for a directory the stage has claimed (`nonllama.pipeline.dirs.OutputDir`, which
    checks that it holds nothing but an earlier output of the stage). The manifest goes first,
    so that a run killed while cleaning is never taken as finished.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / MANIFEST_NAME).unlink(missing_ok=True)
    for child in output_dir.iterdir():
        if child.name in keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


@dataclass
class Counts:
    """Rows and characters in and out of one unit of work, per source and per drop reason."""

    rows_in: int = 0
    chars_in: int = 0
    bytes_in: int = 0
    rows_out: int = 0
    chars_out: int = 0
    drop_reasons: Counter = field(default_factory=Counter)
    per_source: dict[str, Counter] = field(default_factory=dict)
    drop_reasons_per_source: dict[str, Counter] = field(default_factory=dict)
    stage_counts: Counter = field(default_factory=Counter)  # a stage's own counters (lines cut, ...)

    @property
    def rows_removed(self) -> int:
        return sum(self.drop_reasons.values())

    def add_source(self, source: str, **values: int) -> None:
        self.per_source.setdefault(source, Counter()).update(values)

    def merge(self, other: Counts) -> None:
        self.rows_in += other.rows_in
        self.chars_in += other.chars_in
        self.bytes_in += other.bytes_in
        self.rows_out += other.rows_out
        self.chars_out += other.chars_out
        self.drop_reasons.update(other.drop_reasons)
        for source, values in other.per_source.items():
            self.add_source(source, **values)
        for source, reasons in other.drop_reasons_per_source.items():
            self.drop_reasons_per_source.setdefault(source, Counter()).update(reasons)
        self.stage_counts.update(other.stage_counts)

    def check_balance(self, what: str) -> None:
        """kept + removed = input, or the stage refuses to finish."""
        if self.rows_out + self.rows_removed != self.rows_in:
            raise StageError(
                f"{what}: accounting error: {self.rows_in} rows in, {self.rows_out} kept, "
                f"{self.rows_removed} removed"
            )


def document_section(counts: Counts, parts: list[dict], side_dir: str | None,
                     side_parts: list[dict] | None = None, extra: dict | None = None) -> dict:
    """What a document stage's manifest says of its output: rows and characters in and out,
    per source and per drop reason, its parts and side parts, and their digest."""
    section = {
        "rows_in": counts.rows_in,
        "chars_in": counts.chars_in,
        "rows_out": counts.rows_out,
        "chars_out": counts.chars_out,
        "rows_removed": counts.rows_removed,
        "drop_reasons": dict(sorted(counts.drop_reasons.items())),
        "per_source": {s: dict(v) for s, v in sorted(counts.per_source.items())},
        "drop_reasons_per_source": {
            s: dict(sorted(v.items())) for s, v in sorted(counts.drop_reasons_per_source.items())
        },
        "stage_counts": dict(sorted(counts.stage_counts.items())),
        "parts": parts,
        "side_dir": side_dir,
        "side_parts": side_parts or [],
        "output_digest": output_digest(parts),
    }
    section.update(extra or {})
    return section


def manifest_header(stage: str, config: dict, input_info: dict, dependencies: dict | None = None) -> dict:
    """What every manifest starts with: which stage, which nonllama, what config, read what."""
    header = {
        "stage": stage,
        "version": __version__,
        "config": json.loads(json.dumps(config, default=str)),
        "input": input_info,
    }
    if dependencies:
        header["dependencies"] = dict(sorted(dependencies.items()))
    return header


def write_manifest(
    output_dir: Path,
    *,
    stage: str,
    config: dict,
    input_info: dict,
    counts: Counts,
    parts: list[dict],
    side_dir: str | None,
    side_parts: list[dict] | None = None,
    started: float,
    extra: dict | None = None,
) -> dict:
    """Write a document stage's `_manifest.json` atomically (last, after its parts); return it."""
    manifest = {
        **manifest_header(stage, config, input_info),
        **document_section(counts, parts, side_dir, side_parts, extra),
        "wall_time_s": round(time.time() - started, 3),
    }
    atomic_write_json(Path(output_dir) / MANIFEST_NAME, manifest)
    return manifest


def describe_part(path: Path, rows: int, chars: int) -> dict:
    """A part as the manifest lists it: the next stage checks its size, rows and checksum."""
    path = Path(path)
    return {"name": path.name, "rows": rows, "chars": chars, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


# --------------------------------------------------------------------------- progress + pool


class RateColumn(ProgressColumn):
    """Megabytes of text per second, from the task's `bytes` field."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        done = task.fields.get("bytes", 0)
        if elapsed <= 0:
            return Text("-- MB/s", style="progress.data.speed")
        return Text(f"{done / elapsed / 1e6:6.2f} MB/s", style="progress.data.speed")


def make_progress(console: Console | None = None) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("docs"),
        RateColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=os.environ.get("NONLLAMA_NO_PROGRESS") == "1",
    )


Reporter = Callable[[int, int], None]  # (documents, bytes) done since the last call


class _PipeReporter:
    """A helper process's reporter: sends progress to the driver, at most every 0.1 s."""

    INTERVAL = 0.1

    def __init__(self, conn: Connection):
        self.conn = conn
        self.docs = self.nbytes = 0
        self.sent = time.monotonic()

    def __call__(self, docs: int, nbytes: int) -> None:
        self.docs += docs
        self.nbytes += nbytes
        if time.monotonic() - self.sent >= self.INTERVAL:
            self.flush()

    def flush(self) -> None:
        if self.docs or self.nbytes:
            self.conn.send(("progress", self.docs, self.nbytes))
            self.docs = self.nbytes = 0
        self.sent = time.monotonic()


def _take_task(counter: Any, n_tasks: int) -> int | None:
    """The next task nobody has taken yet, or None: the driver and the helpers share one counter."""
    with counter.get_lock():
        i = counter.value
        if i >= n_tasks:
            return None
        counter.value = i + 1
        return i


def _exit_with_driver(driver_pid: int) -> None:
    """End this helper within moments of the driver's end (killed, out of memory): a helper left
    running would go on writing into an output directory that the next run may have claimed."""
    import threading

    def watch() -> None:
        while os.getppid() == driver_pid:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="nonllama-driver-watch").start()


def _helper_main(counter: Any, conn: Connection, driver_pid: int) -> None:
    """A helper process: for every pass the driver sends (a function and its tasks), take tasks
    from the shared counter until none is left, sending each result (or error), then say idle.

    Ctrl-C is the driver's to handle (it stops the helpers); a driver that is gone (its end of
    the pipe closed) ends the helper quietly, without a traceback of its own."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_driver(driver_pid)
    try:
        while (message := conn.recv())[0] == "map":
            _, fn, tasks = message
            _take_tasks(fn, tasks, counter, conn)
            conn.send(("idle",))
    except (BrokenPipeError, ConnectionError, EOFError):
        os._exit(1)


def _take_tasks(fn: Callable[..., Any], tasks: Sequence[Any], counter: Any, conn: Connection) -> None:
    report = _PipeReporter(conn)
    while (i := _take_task(counter, len(tasks))) is not None:
        conn.send(("start", i))
        try:
            result = fn(tasks[i], report)
        except BaseException as e:  # noqa: BLE001 - every failure goes to the driver, which raises it
            report.flush()
            try:
                conn.send(("error", i, e, traceback.format_exc()))
            except Exception:  # the exception does not pickle: send what it said
                conn.send(("error", i, RuntimeError(f"{type(e).__name__}: {e}"), traceback.format_exc()))
            return
        report.flush()
        conn.send(("done", i, result))


class WorkerPool:
    """Helper processes for `run_tasks`, kept for every pass of a stage (an executor's lifetime).

    The process that owns the pool is one of the workers: for each pass it sends the function
    and its tasks to every helper and then takes tasks itself, from the counter the helpers take
    from too, so no core waits while a helper starts (a spawned interpreter importing the stage:
    ~0.7 s, paid once per pool, not once per pass). An error in any task stops the pass at once:
    the helpers are ended and the pool starts afresh at the next pass.
    """

    def __init__(self, helpers: int):
        self.helpers = max(0, helpers)
        self.conns: dict[Connection, Any] = {}  # a helper's pipe -> its process
        self.counter: Any = None

    def start(self) -> None:
        """Start the helpers now (they import while the caller plans its first pass); idempotent."""
        if self.helpers and not self.conns:
            self._start()

    def _start(self) -> None:
        # spawn, not fork: polars and pyarrow keep thread pools that fork would copy half-locked.
        # Each helper gets one polars thread: the parallelism is the processes.
        ctx = multiprocessing.get_context("spawn")
        self.counter = ctx.Value("q", 0)
        with _child_env(POLARS_MAX_THREADS="1"):
            for _ in range(self.helpers):
                mine, theirs = ctx.Pipe(duplex=True)
                process = ctx.Process(target=_helper_main, args=(self.counter, theirs, os.getpid()), daemon=True)
                process.start()
                theirs.close()  # the helper holds the other end: its exit closes the pipe
                self.conns[mine] = process

    def run(self, fn: Callable[..., Any], tasks: Sequence[Any], finished: Callable[[int, Any], None],
            advance: Reporter) -> None:
        """``fn(task, report)`` for every task, here and in the helpers; `finished(i, result)` here."""
        if self.helpers == 0 or len(tasks) <= 1:
            for i, task in enumerate(tasks):
                finished(i, fn(task, advance))
            return
        if any(not p.is_alive() for p in self.conns.values()):
            self.close()  # a helper died between passes: start afresh
        if not self.conns:
            self._start()
        pass_ = _Pass(self, tasks, finished, advance)
        try:
            with self.counter.get_lock():
                self.counter.value = 0
            for conn in self.conns:
                conn.send(("map", fn, tasks))
            while (i := pass_.take()) is not None:
                finished(i, fn(tasks[i], pass_.poll_now_and_then))
                pass_.poll()  # a helper's error stops the pass now, not after every task ran
            pass_.wait()
        except BaseException:
            self.close(kill=True)
            raise

    def close(self, kill: bool = False) -> None:
        """End the helpers: asked to exit, or (after an error) at once."""
        for conn, process in self.conns.items():
            if not kill and process.is_alive():
                try:
                    conn.send(("exit",))
                except OSError:
                    pass
            else:
                process.terminate()
        for conn, process in self.conns.items():
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
        self.conns = {}


class _Pass:
    """The helpers' side of one `WorkerPool.run`: their messages, until every helper is idle."""

    def __init__(self, pool: WorkerPool, tasks: Sequence[Any], finished: Callable[[int, Any], None],
                 advance: Reporter):
        self.pool, self.n_tasks, self.finished, self.advance = pool, len(tasks), finished, advance
        self.running: dict[Connection, int | None] = dict.fromkeys(pool.conns)  # busy helper -> its task
        self.last_poll = 0.0

    def take(self) -> int | None:
        return _take_task(self.pool.counter, self.n_tasks)

    def poll(self, timeout: float | None = 0.0) -> None:
        """Handle what the helpers sent: progress, results, errors, idleness, exits."""
        self.last_poll = time.monotonic()
        for conn in connection_wait(list(self.running), timeout):
            try:
                message = conn.recv()
            except EOFError:
                self._died(conn)
                continue
            kind, *rest = message
            if kind == "progress":
                self.advance(*rest)
            elif kind == "start":
                self.running[conn] = rest[0]
            elif kind == "done":
                self.running[conn] = None
                self.finished(*rest)
            elif kind == "idle":
                del self.running[conn]
            else:  # error
                _, error, trace = rest
                raise error from _RemoteTraceback(trace)

    def poll_now_and_then(self, docs: int, nbytes: int) -> None:
        """The driver's reporter: its own progress, and a look at the helpers' every 0.1 s."""
        self.advance(docs, nbytes)
        if time.monotonic() - self.last_poll >= _PipeReporter.INTERVAL:
            self.poll()

    def wait(self) -> None:
        while self.running:
            self.poll(timeout=None)

    def _died(self, conn: Connection) -> None:
        task = self.running.pop(conn)
        process = self.pool.conns[conn]
        process.join()
        what = f"while running task {task + 1} of {self.n_tasks}" if task is not None else "between tasks"
        raise StageError(
            f"a worker process died {what} (exit code {process.exitcode}"
            f"{': killed, out of memory?' if process.exitcode == -9 else ''}); rerun with --workers 1 to see why"
        )


class _RemoteTraceback(Exception):
    """The traceback of an error raised in a helper process, shown as the cause of the re-raised error."""

    def __init__(self, trace: str):
        self.trace = trace

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.trace}\"\"\""


def run_tasks(
    fn: Callable[..., Any],
    tasks: Sequence[Any],
    *,
    workers: int,
    description: str,
    total_docs: int | None,
    console: Console | None = None,
    on_result: Callable[[int, Any], None] | None = None,
    pool: WorkerPool | None = None,
) -> list[Any]:
    """Run ``fn(task, report)`` for every task, in `workers` processes, showing progress.

    Results come back in task order whatever order the workers finish in, so outputs
    are deterministic. `on_result(i, result)`, when given, is called in this process as each
    task's result arrives, in the order they finish. `pool`: helpers kept from an earlier pass
    (see `WorkerPool`); without one, ``workers - 1`` helpers are started for this call alone.
    """
    results: list[Any] = [None] * len(tasks)
    own_pool = pool is None
    pool = pool or WorkerPool(min(workers, len(tasks)) - 1)
    try:
        with make_progress(console) as progress:
            bar = progress.add_task(description, total=total_docs, bytes=0)

            def advance(docs: int, nbytes: int) -> None:
                task = progress.tasks[bar]
                progress.update(bar, advance=docs, bytes=task.fields.get("bytes", 0) + nbytes)

            def finished(i: int, result: Any) -> None:
                results[i] = result
                if on_result is not None:
                    on_result(i, result)

            pool.run(fn, tasks, finished, advance)
    finally:
        if own_pool:
            pool.close()
    return results


@contextmanager
def _child_env(**values: str) -> Iterator[None]:
    """Set environment variables for the processes started inside the block."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class StageRun:
    """What a stage run did: its manifest, and whether it was already up to date."""

    manifest: dict
    up_to_date: bool
    output_dir: Path
    notices: list[str] = field(default_factory=list)  # what a person should know (a lock taken over)
