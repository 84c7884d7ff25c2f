"""`nonllama download`: turn sources into documents (`id`, `text`, `source`, `meta`).

A SOURCE is a local file, directory or glob; `hf:OWNER/NAME[:CONFIG][@REVISION]` (a Hugging
Face dataset, read from its Parquet files); an `http(s)://` URL; or `sample`, the built-in
demo corpus. Each source becomes a list of files; each file (or, with `--max-docs`, each
source) is one task, run in the worker pool. Tasks write chunks into a private temporary
directory; the driver renames them into `part-NNNNN.parquet` in task order, so the output
does not depend on which worker finished first.

Records that cannot become documents (malformed JSON, undecodable bytes, a missing or
non-string text field) go to `quarantine.jsonl` with their file and line, and are counted
per reason in the manifest; with `strict` the first one is an error naming file and line.
Document ids are `<source>/<file key>#<position>`: stable across reruns.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from nonllama.pipeline.driver import StageContext, StageJob, drive
from nonllama.pipeline.executors import Executor
from nonllama.pipeline.io import (
    CACHE_DIR_NAME,
    DOCUMENT_SCHEMA,
    Counts,
    PartWriter,
    Reporter,
    StageError,
    StageRun,
    atomic_path,
    describe_part,
    document_section,
    json_digest,
)
from nonllama.pipeline.records import BadRecord, Record, SourceError

if TYPE_CHECKING:
    from nonllama.pipeline.remote import UrlVersion

STAGE = "download"
QUARANTINE_NAME = "quarantine.jsonl"
SAMPLE_SOURCE = "sample"
REPORT_EVERY = 256  # documents between two progress reports


@dataclass
class DownloadConfig:
    sources: list[str]
    names: list[str] = field(default_factory=list)
    text_field: str = "text"
    split_on: str | None = None
    split: str | None = None
    max_docs: int | None = None
    strict: bool = False
    part_rows: int = 50_000
    seed: int = 0

    def validate(self) -> None:
        """Raise SourceError naming the option for a value no download can use."""
        if not isinstance(self.text_field, str) or not self.text_field:
            raise SourceError(f"--text-field {self.text_field!r}: give the key or column that holds the text")
        if not isinstance(self.part_rows, int) or isinstance(self.part_rows, bool) or self.part_rows < 1:
            raise SourceError(f"--part-rows {self.part_rows!r}: must be a whole number >= 1")
        if self.max_docs is not None and (not isinstance(self.max_docs, int) or self.max_docs < 1):
            raise SourceError(f"--max-docs {self.max_docs!r}: must be a whole number >= 1")
        if self.names and self.sources and len(self.names) not in (1, len(self.sources)):
            raise SourceError(f"--name was given {len(self.names)} times for {len(self.sources)} sources: "
                              "give it once (one label for all) or once per source")


@dataclass
class SourceFile:
    """One file of a source, and how to get it onto local disk."""

    kind: str  # "local" | "hub" | "url" | "sample"
    location: str  # local path, path in the Hub repo, or URL
    key: str  # stable name of the file within its source, used in document ids
    repo_id: str | None = None
    revision: str | None = None
    fingerprint: str = ""  # what makes a rerun "the same input"
    version: UrlVersion | None = None  # a URL: the version the server had when the run planned


@dataclass
class DownloadTask:
    index: int
    source: str | None  # label; None: the sample labels each document by its language
    files: list[SourceFile]
    max_docs: int | None
    config: DownloadConfig
    output_dir: Path  # the task's parts go here under their final names: part-TTTTT-CCCC.parquet
    cache_dir: Path
    scratch: Path | None = None  # its quarantine file; set by the driver's context
    refetch_before: float | None = None  # --force: URL copies cached before this time.time() are fetched again


@dataclass
class TaskOutput:
    parts: list[dict]  # as the manifest lists them
    quarantine: Path | None
    counts: Counts
    id_hashes: np.ndarray  # xxh3-64 of every document id, for the uniqueness check


# --------------------------------------------------------------------------- resolving sources


def source_label(spec: str) -> str:
    """The default `source` label of a SOURCE argument."""
    if spec.startswith("hf:"):
        from nonllama.pipeline.remote import parse_hub_spec

        hub = parse_hub_spec(spec)
        name = hub.repo_id.split("/")[-1]
        return f"{name}-{hub.config}" if hub.config else name
    if re.match(r"https?://", spec):
        return _stem(spec.split("?")[0].rstrip("/").rsplit("/", 1)[-1]) or "url"
    path = Path(spec)
    if any(ch in spec for ch in "*?["):
        # a glob: name it after the last directory without wildcards
        fixed = [p for p in path.parts if not any(ch in p for ch in "*?[")]
        return Path(*fixed).name if fixed else "files"
    if path.is_dir():
        return path.resolve().name
    return _stem(path.name)


def _stem(filename: str) -> str:
    return filename.split(".")[0]


def resolve_source(spec: str, config: DownloadConfig, skipped: list[str] | None = None) -> list[SourceFile]:
    """A SOURCE argument -> the files to read, in a stable order.

    `skipped` collects "path: why" for local paths passed over (symlink loops, a file reached
    twice, files no reader handles)."""
    if not spec.strip():
        raise SourceError("an empty SOURCE was given (a file, directory, glob, hf:OWNER/NAME, URL or 'sample')")
    if spec == SAMPLE_SOURCE and not Path(spec).exists():
        return [SourceFile("sample", SAMPLE_SOURCE, "sample", fingerprint=f"sample:{config.seed}")]
    if spec.startswith("hf:"):
        from nonllama.pipeline.remote import parse_hub_spec, resolve_hub_files

        hub = parse_hub_spec(spec)
        return [
            SourceFile("hub", path, path, hub.repo_id, rev, fingerprint=f"{hub.repo_id}@{rev}:{path}")
            for path, rev in resolve_hub_files(hub, config.split)
        ]
    if re.match(r"https?://", spec):
        from nonllama.pipeline.remote import probe_url

        name = spec.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        # the server's validators are part of the input: a file changed upstream is a changed
        # input, so the stage is not up to date (and fetch_url fetches it again)
        version = probe_url(spec)
        return [SourceFile("url", spec, name, fingerprint=f"{spec} {version.describe()}", version=version)]
    if "://" in spec or (":" in spec.split("/")[0] and not Path(spec).exists()):
        raise SourceError(
            f"{spec}: unknown scheme (use a local path, hf:OWNER/NAME, http(s):// or 'sample')"
        )
    from nonllama.pipeline.readers import expand_local

    files = []
    for path, key in expand_local(spec, skipped=skipped):
        stat = path.stat()
        files.append(
            SourceFile("local", str(path), key, fingerprint=f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
        )
    if skipped is not None:
        skipped.extend(f"{path}: no reader for this file type" for path in unsupported_files(spec))
    return files


def local_root(spec: str) -> Path | None:
    """The local path a SOURCE reads below (a glob's fixed leading folder), None if not local."""
    if (spec == SAMPLE_SOURCE and not Path(spec).exists()) or spec.startswith("hf:") or "://" in spec \
            or not spec.strip():
        return None
    from nonllama.pipeline.readers import glob_base

    path = Path(os.path.expanduser(spec))
    return glob_base(path) if any(ch in spec for ch in "*?[") else path


def unsupported_files(spec: str) -> list[str]:
    """Files in a directory SOURCE that no reader handles: reported, never dropped silently."""
    from nonllama.pipeline.readers import is_supported

    directory = Path(os.path.expanduser(spec))
    if not directory.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):  # symlinked folders are not entered
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(str(Path(dirpath, n)) for n in filenames if not n.startswith(".") and not is_supported(n))
    return sorted(found)


@dataclass
class _Source:
    """One SOURCE argument on its way to tasks: its label and files."""

    index: int
    spec: str
    label: str | None  # None: the sample labels each document by its language
    files: list[SourceFile]


def _unique_labels(sources: list[_Source]) -> None:
    """Two default labels that are the same (`y2023/train.jsonl`, `y2024/train.jsonl`) become the
    paths that tell them apart (`y2023-train`, `y2024-train`), else get a number."""
    by_label: dict[str | None, list[_Source]] = {}
    for source in sources:
        by_label.setdefault(source.label, []).append(source)
    for label, group in by_label.items():
        if label is None or len(group) < 2:
            continue
        roots = [local_root(s.spec) for s in group]
        if all(roots):
            absolute = [str(Path(r).resolve()) for r in roots if r is not None]
            common = os.path.commonpath(absolute)
            for source, path in zip(group, absolute, strict=True):
                relative = Path(os.path.relpath(path, common))
                named = "-".join([*relative.parent.parts, _stem(relative.name)]).strip("-.")
                source.label = named or source.label
    taken: dict[str | None, int] = {}
    for source in sources:
        if source.label is None:
            continue
        n = taken.get(source.label, 0)
        taken[source.label] = n + 1
        if n:
            source.label = f"{source.label}-{n + 1}"


def _unique_keys(sources: list[_Source]) -> None:
    """Files of one label from different sources that share a key (`--name x` over `a/train.jsonl`
    and `b/train.jsonl`) are keyed by their path below the common folder instead, so ids differ."""
    by_label: dict[str | None, list[_Source]] = {}
    for source in sources:
        by_label.setdefault(source.label, []).append(source)
    for label, group in by_label.items():
        keys = [f.key for s in group for f in s.files]
        if len(keys) == len(set(keys)):
            continue
        local = [f for s in group for f in s.files if f.kind == "local"]
        common = os.path.commonpath([str(Path(f.location).resolve()) for f in local]) if local else ""
        for source in group:
            for f in source.files:
                if f.kind == "local":
                    f.key = Path(os.path.relpath(Path(f.location).resolve(), common)).as_posix()
                else:
                    f.key = f"{source.index + 1}/{f.key}"
        keys = [f.key for s in group for f in s.files]
        if len(keys) != len(set(keys)):
            repeated = next(k for k in keys if keys.count(k) > 1)
            raise SourceError(f"source {label!r}: two files would get the document ids {label}/{repeated}#N; "
                              "give the sources different --name labels")


def _refuse_repeated_files(sources: list[_Source], labelled: bool) -> None:
    """A file given twice (`a.jsonl a.jsonl`, or `data data/sub`) would repeat its documents: refused,
    unless each source has a label of its own from --name (reading a corpus twice on purpose)."""
    first: dict[str, tuple[_Source, SourceFile]] = {}
    for source in sources:
        for f in source.files:
            identity = f.fingerprint.rsplit(":", 2)[0] if f.kind == "local" else f.fingerprint
            if identity in first:
                other, other_file = first[identity]
                if labelled and other.label != source.label:
                    continue
                raise SourceError(f"{f.location} is read twice: by SOURCE {other.spec!r} (as {other_file.location}) "
                                  f"and by SOURCE {source.spec!r}; give each file once (or each source its own "
                                  "--name to read it twice on purpose)")
            first[identity] = (source, f)


def plan_tasks(config: DownloadConfig, output_dir: Path, skipped: list[str] | None = None) -> list[DownloadTask]:
    if not config.sources:
        raise SourceError("no SOURCE given (try `nonllama download sample`)")
    config.validate()
    names = config.names
    for name in names:
        if not name.strip() or "#" in name:
            raise SourceError(f"--name {name!r}: a label must be non-empty and without '#' (it starts document ids)")
    sources = []
    for i, spec in enumerate(config.sources):
        files = resolve_source(spec, config, skipped)
        if names:
            label: str | None = names[i] if len(names) > 1 else names[0]
        else:
            label = None if files and files[0].kind == "sample" else source_label(spec)
        sources.append(_Source(i, spec, label, files))
    _refuse_repeated_files(sources, labelled=len(names) == len(config.sources) > 1)
    if not names:
        _unique_labels(sources)
    _unique_keys(sources)

    cache_dir = output_dir / CACHE_DIR_NAME
    tasks: list[DownloadTask] = []
    for source in sources:
        # With --max-docs a source is read in order until it has enough, so it is one task;
        # otherwise every file is a task of its own and the pool spreads them.
        groups = [source.files] if config.max_docs is not None else [[f] for f in source.files]
        for group in groups:
            n = len(tasks)
            tasks.append(
                DownloadTask(n, source.label, group, config.max_docs, config, output_dir, cache_dir)
            )
    return tasks


# --------------------------------------------------------------------------- reading


def _records(file: SourceFile, task: DownloadTask) -> Iterator[Record | BadRecord]:
    cfg = task.config
    if file.kind == "sample":
        from nonllama.pipeline.sample import sample_documents

        yield from sample_documents(seed=cfg.seed)
        return
    from nonllama.pipeline.readers import iter_file

    path, shown = local_copy(file, task.cache_dir, task.refetch_before)
    yield from iter_file(path, text_field=cfg.text_field, split_on=cfg.split_on, display_name=shown)


def local_copy(file: SourceFile, cache_dir: Path, refetch_before: float | None = None) -> tuple[Path, str]:
    """(a path on this machine holding `file`, the name its bad records are reported under): a
    local file as it is; a Hub or URL file fetched into `cache_dir` (or found there)."""
    if file.kind == "local":
        return Path(file.location), file.location
    if file.kind == "hub":
        from nonllama.pipeline.remote import HubSpec, fetch_hub_file

        assert file.repo_id is not None and file.revision is not None
        path = fetch_hub_file(HubSpec(file.repo_id, None, file.revision), file.location, file.revision, cache_dir / "hf")
        return path, f"hf:{file.repo_id}@{file.revision}/{file.location}"
    from nonllama.pipeline.remote import fetch_url

    return fetch_url(file.location, cache_dir / "http", version=file.version, refetch_before=refetch_before), file.location


def _bad_record_category(reason: str) -> str:
    return "bad_record: " + reason.split(":")[0].strip()


def task_part_name(task: int, chunk: int) -> str:
    """Download's parts are named by the task that wrote them: final names, known to no one else."""
    return f"part-{task:05d}-{chunk:04d}.parquet"


def read_task(task: DownloadTask, report: Reporter) -> TaskOutput:
    """Read every file of a task into parts of at most `part_rows` documents, written under their
    final names (atomically); bad records to the task's own quarantine file."""
    assert task.scratch is not None
    task.scratch.mkdir(parents=True, exist_ok=True)
    counts = Counts()
    parts: list[dict] = []
    writer: PartWriter | None = None
    rows: list[dict] = []
    quarantine_path = task.scratch / f"quarantine-{task.index:05d}.jsonl"
    quarantine = None
    unreported_docs = unreported_bytes = 0
    id_hashes = array("Q")

    def flush() -> None:
        nonlocal writer
        if not rows:
            return
        if writer is None:
            writer = PartWriter(task.output_dir / task_part_name(task.index, len(parts)), DOCUMENT_SCHEMA)
        writer.write(pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA))
        rows.clear()
        if writer.rows >= task.config.part_rows:
            close_chunk()

    def close_chunk() -> None:
        nonlocal writer
        if writer is not None and writer.rows:
            path = writer.close()
            assert path is not None
            parts.append(describe_part(path, writer.rows, writer.chars))
        writer = None

    try:
        for file in task.files:
            for rec in _records(file, task):
                if task.max_docs is not None and counts.rows_out >= task.max_docs:
                    break
                if isinstance(rec, BadRecord):
                    if task.config.strict:
                        where = f"{rec.file}:{rec.line}" if rec.line else rec.file
                        raise StageError(f"{where}: {rec.reason} (--strict)")
                    if quarantine is None:
                        quarantine = open(quarantine_path, "w", encoding="utf-8")
                    entry = {"source": task.source, **asdict(rec)}
                    quarantine.write(json.dumps(entry, ensure_ascii=False) + "\n")
                    counts.rows_in += 1
                    counts.drop_reasons[_bad_record_category(rec.reason)] += 1
                    counts.add_source(task.source or "sample", rows_in=1)
                    continue
                label = task.source or f"sample-{rec.meta.get('lang', 'xx')}"
                doc_id = f"{label}/{file.key}#{rec.position}"
                id_hashes.append(xxhash.xxh3_64_intdigest(doc_id.encode("utf-8", "surrogatepass")))
                rows.append(
                    {
                        "id": doc_id,
                        "text": rec.text,
                        "source": label,
                        "meta": json.dumps(rec.meta, ensure_ascii=False, sort_keys=True) if rec.meta else None,
                    }
                )
                nchars = len(rec.text)
                counts.rows_in += 1
                counts.rows_out += 1
                counts.chars_in += nchars
                counts.chars_out += nchars
                counts.add_source(label, rows_in=1, rows_out=1, chars_in=nchars, chars_out=nchars)
                unreported_docs += 1
                unreported_bytes += len(rec.text.encode("utf-8", "surrogatepass"))
                if len(rows) >= min(1000, task.config.part_rows - (writer.rows if writer else 0)):
                    flush()
                if unreported_docs >= REPORT_EVERY:
                    report(unreported_docs, unreported_bytes)
                    unreported_docs = unreported_bytes = 0
            if task.max_docs is not None and counts.rows_out >= task.max_docs:
                break
        flush()
        close_chunk()
        report(unreported_docs, unreported_bytes)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if quarantine is not None:
            quarantine.close()
    hashes = np.frombuffer(id_hashes, dtype=np.uint64) if id_hashes else np.zeros(0, np.uint64)
    return TaskOutput(parts, quarantine_path if quarantine is not None else None, counts, hashes)


# --------------------------------------------------------------------------- the stage


def run_download(
    config: DownloadConfig,
    output_dir: Path,
    *,
    workers: int = 1,
    executor: Executor | None = None,
    force: bool = False,
    console=None,
) -> StageRun:
    """Read every source into `output_dir`; a no-op when the sources and config are unchanged."""
    output_dir = Path(output_dir)
    skipped: list[str] = []
    tasks = plan_tasks(config, output_dir, skipped)
    if force:  # --force also distrusts the URL cache: a server without validators may have changed
        started = time.time()
        for task in tasks:
            task.refetch_before = started
    fingerprints = [[f.fingerprint for f in t.files] for t in tasks]
    digest = json_digest(fingerprints)
    if not any(t.files for t in tasks):
        raise SourceError("the sources contain no files to read")
    local = [root for spec in config.sources if (root := local_root(spec)) is not None]

    def work(ctx: StageContext) -> dict:
        for task in tasks:
            task.scratch = ctx.work_dir
        results = ctx.map(read_task, tasks, label=STAGE)
        return _assemble(results, tasks, output_dir, ctx.work_dir, skipped)

    input_info: dict = {"sources": config.sources, "files": sum(len(f) for f in fingerprints), "digest": digest}
    remote = {f.location: asdict(f.version) for t in tasks for f in t.files if f.version is not None}
    if remote:  # which version of each URL this output was made from
        input_info["urls"] = remote
    job = StageJob(STAGE, asdict(config), output_dir, local, input_info, work)
    return drive(job, executor=executor, workers=workers, force=force, console=console)


def _assemble(results: list[TaskOutput], tasks: list[DownloadTask], output_dir: Path, scratch: Path,
              skipped: list[str]) -> dict:
    """The manifest section: the tasks' parts in task order, their quarantines joined (streamed)."""
    _check_unique_ids(results, tasks, output_dir)
    counts = Counts()
    parts: list[dict] = []
    with atomic_path(output_dir / QUARANTINE_NAME) as quarantine_tmp:
        with open(quarantine_tmp, "wb") as quarantine:
            for result in results:
                counts.merge(result.counts)
                parts.extend(result.parts)
                if result.quarantine is not None:
                    with open(scratch / result.quarantine.name, "rb") as part:
                        shutil.copyfileobj(part, quarantine)
    if not parts:  # keep the contract: a finished stage has at least one (empty) part
        empty = PartWriter(output_dir / task_part_name(0, 0), DOCUMENT_SCHEMA).close()
        assert empty is not None
        parts.append(describe_part(empty, 0, 0))
    counts.check_balance(f"download -> {output_dir}")
    return document_section(counts, parts, None, extra={
        "quarantine": QUARANTINE_NAME,
        "quarantined": counts.rows_removed,
        "skipped_files": skipped,
    })


def _check_unique_ids(results: list[TaskOutput], tasks: list[DownloadTask], output_dir: Path) -> None:
    """Refuse to finish when a document id repeats: a later stage's `duplicate_of`, pack's index and
    the report's accounting all name documents by id. 8 bytes per document in this process."""
    hashes = np.sort(np.concatenate([r.id_hashes for r in results])) if results else np.zeros(0, np.uint64)
    repeated = set(np.unique(hashes[1:][hashes[1:] == hashes[:-1]]).tolist())
    if not repeated:
        return
    # 64-bit hashes of distinct ids can collide (rarely, on huge corpora): compare the ids themselves
    first_seen: dict[str, int] = {}
    for i, result in enumerate(results):
        if not np.isin(result.id_hashes, list(repeated)).any():
            continue
        for part in result.parts:
            for doc_id in pq.read_table(output_dir / part["name"], columns=["id"]).column("id").to_pylist():
                if xxhash.xxh3_64_intdigest(doc_id.encode("utf-8", "surrogatepass")) not in repeated:
                    continue
                if doc_id in first_seen:
                    files = {f.location for t in (tasks[first_seen[doc_id]], tasks[i]) for f in t.files}
                    raise StageError(f"document id {doc_id!r} is given to two documents (read from "
                                     f"{' and '.join(sorted(files))}); give the sources different --name labels")
                first_seen[doc_id] = i
