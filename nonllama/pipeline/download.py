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
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

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
    is_up_to_date,
    json_digest,
    part_name,
    read_manifest,
    reset_output,
    run_tasks,
    write_manifest,
)
from nonllama.pipeline.records import BadRecord, Record, SourceError

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


@dataclass
class SourceFile:
    """One file of a source, and how to get it onto local disk."""

    kind: str  # "local" | "hub" | "url" | "sample"
    location: str  # local path, path in the Hub repo, or URL
    key: str  # stable name of the file within its source, used in document ids
    repo_id: str | None = None
    revision: str | None = None
    fingerprint: str = ""  # what makes a rerun "the same input"


@dataclass
class DownloadTask:
    index: int
    source: str | None  # label; None: the sample labels each document by its language
    files: list[SourceFile]
    max_docs: int | None
    config: DownloadConfig
    work_dir: Path
    cache_dir: Path


@dataclass
class TaskOutput:
    chunks: list[tuple[Path, int, int]]  # path, rows, chars
    quarantine: Path | None
    counts: Counts


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


def resolve_source(spec: str, config: DownloadConfig) -> list[SourceFile]:
    """A SOURCE argument -> the files to read, in a stable order."""
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
        name = spec.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        return [SourceFile("url", spec, name, fingerprint=spec)]
    if "://" in spec or (":" in spec.split("/")[0] and not Path(spec).exists()):
        raise SourceError(
            f"{spec}: unknown scheme (use a local path, hf:OWNER/NAME, http(s):// or 'sample')"
        )
    from nonllama.pipeline.readers import expand_local

    files = []
    for path, key in expand_local(spec):
        stat = path.stat()
        files.append(
            SourceFile("local", str(path), key, fingerprint=f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
        )
    return files


def unsupported_files(spec: str, files: list[SourceFile]) -> list[str]:
    """Files in a directory SOURCE that no reader handles: reported, never dropped silently."""
    directory = Path(spec)
    if not directory.is_dir():
        return []
    read = {Path(f.location).resolve() for f in files}
    return sorted(
        str(p)
        for p in directory.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
        and p.resolve() not in read
    )


def plan_tasks(config: DownloadConfig, output_dir: Path) -> list[DownloadTask]:
    if not config.sources:
        raise SourceError("no SOURCE given (try `nonllama download sample`)")
    names = config.names
    if names and len(names) not in (1, len(config.sources)):
        raise SourceError(
            f"--name was given {len(names)} times for {len(config.sources)} sources: "
            "give it once (one label for all) or once per source"
        )
    work_dir = output_dir / ".tmp"
    cache_dir = output_dir / CACHE_DIR_NAME
    tasks: list[DownloadTask] = []
    for i, spec in enumerate(config.sources):
        files = resolve_source(spec, config)
        if names:
            label: str | None = names[i] if len(names) > 1 else names[0]
        else:
            label = None if files and files[0].kind == "sample" else source_label(spec)
        # With --max-docs a source is read in order until it has enough, so it is one task;
        # otherwise every file is a task of its own and the pool spreads them.
        groups = [files] if config.max_docs is not None else [[f] for f in files]
        for group in groups:
            n = len(tasks)
            tasks.append(
                DownloadTask(n, label, group, config.max_docs, config, work_dir / f"task-{n:05d}", cache_dir)
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

    if file.kind == "local":
        path, shown = Path(file.location), file.location
    elif file.kind == "hub":
        from nonllama.pipeline.remote import HubSpec, fetch_hub_file

        assert file.repo_id is not None and file.revision is not None
        path = fetch_hub_file(HubSpec(file.repo_id, None, file.revision), file.location, file.revision, task.cache_dir / "hf")
        shown = f"hf:{file.repo_id}@{file.revision}/{file.location}"
    else:
        from nonllama.pipeline.remote import fetch_url

        path, shown = fetch_url(file.location, task.cache_dir / "http"), file.location
    yield from iter_file(path, text_field=cfg.text_field, split_on=cfg.split_on, display_name=shown)


def _bad_record_category(reason: str) -> str:
    return "bad_record: " + reason.split(":")[0].strip()


def read_task(task: DownloadTask, report: Reporter) -> TaskOutput:
    """Read every file of a task into chunk files in the task's private directory."""
    task.work_dir.mkdir(parents=True, exist_ok=True)
    counts = Counts()
    chunks: list[tuple[Path, int, int]] = []
    writer: PartWriter | None = None
    rows: list[dict] = []
    quarantine_path = task.work_dir / QUARANTINE_NAME
    quarantine = None
    unreported_docs = unreported_bytes = 0

    def flush() -> None:
        nonlocal writer
        if not rows:
            return
        if writer is None:
            writer = PartWriter(task.work_dir / f"chunk-{len(chunks):05d}.parquet", DOCUMENT_SCHEMA)
        writer.write(pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA))
        rows.clear()
        if writer.rows >= task.config.part_rows:
            close_chunk()

    def close_chunk() -> None:
        nonlocal writer
        if writer is not None and writer.rows:
            path = writer.close()
            assert path is not None
            chunks.append((path, writer.rows, writer.chars))
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
                rows.append(
                    {
                        "id": f"{label}/{file.key}#{rec.position}",
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
    return TaskOutput(chunks, quarantine_path if quarantine is not None else None, counts)


# --------------------------------------------------------------------------- the stage


def run_download(
    config: DownloadConfig,
    output_dir: Path,
    *,
    workers: int = 1,
    force: bool = False,
    console=None,
) -> StageRun:
    """Read every source into `output_dir`; a no-op when the sources and config are unchanged."""
    started = time.time()
    output_dir = Path(output_dir)
    tasks = plan_tasks(config, output_dir)
    skipped = [
        path
        for spec in config.sources
        for path in unsupported_files(spec, [f for t in tasks for f in t.files])
    ]
    fingerprints = [[f.fingerprint for f in t.files] for t in tasks]
    digest = json_digest(fingerprints)
    effective = asdict(config)
    if not force and is_up_to_date(output_dir, STAGE, digest, effective):
        return StageRun(read_manifest(output_dir) or {}, True, output_dir)
    if not any(t.files for t in tasks):
        raise SourceError("the sources contain no files to read")

    reset_output(output_dir)
    results: list[TaskOutput] = run_tasks(
        read_task, tasks, workers=workers, description=STAGE, total_docs=None, console=console
    )

    counts = Counts()
    parts: list[dict] = []
    with atomic_path(output_dir / QUARANTINE_NAME) as quarantine_tmp:
        with open(quarantine_tmp, "w", encoding="utf-8") as quarantine:
            for result in results:
                counts.merge(result.counts)
                for chunk, rows, chars in result.chunks:
                    final = output_dir / part_name(len(parts))
                    os.replace(chunk, final)
                    parts.append(describe_part(final, rows, chars))
                if result.quarantine is not None:
                    quarantine.write(result.quarantine.read_text(encoding="utf-8"))
    if not parts:  # keep the contract: a finished stage has at least one (empty) part
        PartWriter(output_dir / part_name(0), DOCUMENT_SCHEMA).close()
        parts.append(describe_part(output_dir / part_name(0), 0, 0))
    counts.check_balance(f"download -> {output_dir}")
    import shutil

    shutil.rmtree(output_dir / ".tmp", ignore_errors=True)
    manifest = write_manifest(
        output_dir,
        stage=STAGE,
        config=effective,
        input_info={"sources": config.sources, "files": sum(len(f) for f in fingerprints), "digest": digest},
        counts=counts,
        parts=parts,
        side_dir=None,
        started=started,
        extra={
            "quarantine": QUARANTINE_NAME,
            "quarantined": counts.rows_removed,
            "skipped_files": skipped,
        },
    )
    return StageRun(manifest, False, output_dir)
