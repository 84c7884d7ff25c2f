"""Stage directories: what a stage may read, and what it may overwrite.

A stage's input is read exactly as its manifest lists it (:func:`open_input`): the manifest
must be a well-formed manifest of a stage that may come before this one, every listed part
must be there with the size and row count it had when written, and its checksum is compared
when that is cheap (or always, with ``--verify-input``). A directory that merely holds
``part-*.parquet`` files, or a manifest of the wrong stage, is refused with one line.

A stage's output directory is claimed before anything in it changes (:class:`OutputDir`):

- it must not be, contain, or lie inside any of the stage's inputs (``filter -i w/normalized
  -o w`` would empty its own input);
- it is only ever emptied when it is new, empty, or holds an output of the same stage (its
  manifest, or the lock file a run of that stage leaves behind when it is killed); anything
  else is refused with a message naming what is in it;
- one run at a time: ``_lock.json`` holds the process id, host and command of the run that
  holds the directory, locked with ``flock``, so the kernel releases it when that process dies;
  a lock left by a dead run is taken over with a message.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from nonllama.pipeline.io import (
    CACHE_DIR_NAME,
    MANIFEST_NAME,
    StageError,
    file_sha256,
    is_up_to_date,
    output_digest,
    read_manifest,
    reset_output,
)
from nonllama.pipeline.stages import stages_before

try:  # POSIX; the lock degrades to "pid and host in a file" elsewhere
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "_lock.json"
# Input checksums are compared on every run up to this many bytes of parts (a second or so of
# reading); above it only with --verify-input. Sizes and row counts are always compared.
CHEAP_VERIFY_BYTES = 512 << 20
_PART_NAME = re.compile(r"part-\d{5,}(-\d{4,})?\.parquet")  # download names its parts by task: part-TTTTT-CCCC
_SHA256 = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- reading inputs


@dataclass(frozen=True)
class InputPart:
    """One Parquet part of a finished stage, as its manifest describes it."""

    path: Path
    rows: int
    size: int | None  # bytes on disk; None in manifests written before sizes were recorded
    sha256: str


@dataclass(frozen=True)
class StageInput:
    """A finished stage directory, checked against its manifest."""

    dir: Path
    manifest: dict
    parts: list[InputPart]

    @property
    def stage(self) -> str:
        return self.manifest["stage"]

    @property
    def digest(self) -> str:
        """What the next stage records as its input digest: the content of these parts."""
        return self.manifest["output_digest"]

    @property
    def paths(self) -> list[Path]:
        return [p.path for p in self.parts]

    @property
    def rows(self) -> int:
        return self.manifest["rows_out"]


def open_input(directory: Path, *, stage: str, verify: bool = False) -> StageInput:
    """The finished document directory `stage` reads, or a StageError saying what is wrong.

    `verify`: compare every part's sha256 with the manifest whatever the input's size.
    """
    directory = Path(directory)
    accepts = stages_before(stage)
    wanted = " or ".join(f"`nonllama {s}`" for s in accepts[-1:]) if accepts else "a document stage"
    if not directory.exists():
        raise StageError(f"input directory {directory} does not exist: run {wanted} first")
    if not directory.is_dir():
        raise StageError(f"input {directory} is not a directory (-i takes a stage's output directory)")
    manifest = read_manifest(directory)
    if manifest is None:
        holder = _lock_info(directory / LOCK_NAME)
        if holder is not None:
            raise StageError(f"input directory {directory} holds an unfinished run of `nonllama "
                             f"{holder.get('stage', '?')}` (no {MANIFEST_NAME}): run it again to finish it")
        raise StageError(f"input directory {directory} has no {MANIFEST_NAME}: it is not the output of a "
                         f"finished stage (run {wanted} there first)")
    path = directory / MANIFEST_NAME
    found = manifest.get("stage")
    if found not in accepts:
        what = f"the output of `nonllama {found}`" if isinstance(found, str) else "not a stage's output"
        raise StageError(f"{path}: {what}; `nonllama {stage}` reads the output of "
                         f"{', '.join(f'`{s}`' for s in accepts)}")
    parts = check_document_manifest(manifest, path)
    total = sum(p.size or 0 for p in parts)
    check_parts(parts, path, checksums=verify or total <= CHEAP_VERIFY_BYTES)
    return StageInput(directory, manifest, parts)


def _field(manifest: dict, key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    value = manifest.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        shown = "missing" if key not in manifest else f"{json.dumps(value)[:40]}"
        raise StageError(f"{path}: not a well-formed manifest ({key!r} is {shown}); rerun the stage that wrote it")
    return value


def check_document_manifest(manifest: dict, path: Path) -> list[InputPart]:
    """The parts a document stage's manifest lists, after checking that it adds up."""
    rows_out = _field(manifest, "rows_out", int, path)
    parts_field = _field(manifest, "parts", list, path)
    _field(manifest, "output_digest", str, path)
    parts: list[InputPart] = []
    for i, entry in enumerate(parts_field):
        if not isinstance(entry, dict):
            raise StageError(f"{path}: not a well-formed manifest (part {i} is not an object)")
        name, rows, sha, size = (entry.get(k) for k in ("name", "rows", "sha256", "bytes"))
        # a name is a bare part file name: a manifest must not point outside its directory
        if not (isinstance(name, str) and _PART_NAME.fullmatch(name)):
            raise StageError(f"{path}: not a well-formed manifest (part {i} is named {name!r})")
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise StageError(f"{path}: not a well-formed manifest ({name}: rows {rows!r})")
        if not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            raise StageError(f"{path}: not a well-formed manifest ({name}: sha256 {sha!r})")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise StageError(f"{path}: not a well-formed manifest ({name}: bytes {size!r})")
        parts.append(InputPart(path.parent / name, rows, size, sha))
    if len({p.path.name for p in parts}) != len(parts):
        raise StageError(f"{path}: not a well-formed manifest (a part is listed twice)")
    if sum(p.rows for p in parts) != rows_out:
        raise StageError(f"{path}: its parts hold {sum(p.rows for p in parts):,} rows, its rows_out says "
                         f"{rows_out:,}; rerun the stage that wrote it")
    if output_digest([{"name": p.path.name, "sha256": p.sha256} for p in parts]) != manifest["output_digest"]:
        raise StageError(f"{path}: its output_digest does not match its parts; rerun the stage that wrote it")
    return parts


def check_parts(parts: Sequence[InputPart], manifest_path: Path, *, checksums: bool) -> None:
    """Every part present, with the size and row count (and checksum) its manifest recorded."""
    rerun = "rerun the stage that wrote it (with --force)"
    for part in parts:
        if not part.path.is_file():
            raise StageError(f"{part.path}: missing, but listed in {manifest_path}; {rerun}")
        size = part.path.stat().st_size
        if part.size is not None and size != part.size:
            raise StageError(f"{part.path}: {size:,} bytes, {manifest_path} says {part.size:,}: "
                             f"it changed after it was written; {rerun}")
        try:
            rows = pq.read_metadata(part.path).num_rows
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a broken footer
            raise StageError(f"{part.path}: not a readable Parquet file ({e}); {rerun}") from None
        if rows != part.rows:
            raise StageError(f"{part.path}: {rows:,} rows, {manifest_path} says {part.rows:,}; {rerun}")
        if checksums and file_sha256(part.path) != part.sha256:
            raise StageError(f"{part.path}: its sha256 differs from {manifest_path}: "
                             f"it changed after it was written; {rerun}")


# --------------------------------------------------------------------------- claiming outputs


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_not_nested(output_dir: Path, inputs: Iterable[Path], what: str = "-o") -> None:
    """Output and every input are distinct and neither lies inside the other."""
    out = Path(output_dir).resolve()
    for given in inputs:
        inp = Path(given).resolve()
        if out == inp:
            raise StageError(f"{what} {output_dir} is also the input: write to another directory")
        if _is_within(inp, out):
            raise StageError(f"{what} {output_dir} contains the input {given}: a stage empties its output "
                             "directory, so choose one outside the input")
        if _is_within(out, inp):
            raise StageError(f"{what} {output_dir} lies inside the input {given}: choose a directory outside it")


def _listing(directory: Path, limit: int = 3) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_claimable(output_dir: Path, stage: str, what: str = "-o") -> None:
    """Refuse an output directory that holds anything but an earlier output of `stage`."""
    output_dir = Path(output_dir)
    if not output_dir.exists():
        if output_dir.is_symlink():
            raise StageError(f"{what} {output_dir}: a dangling symbolic link; remove it or choose another directory")
        for parent in output_dir.parents:  # -o under a regular file: say which one
            if parent.exists():
                if not parent.is_dir():
                    raise StageError(f"{what} {output_dir}: {parent} is a file, not a directory")
                break
        return
    if not output_dir.is_dir():
        raise StageError(f"{what} {output_dir}: exists and is not a directory")
    entries = [p for p in output_dir.iterdir() if p.name != LOCK_NAME]
    if not entries:
        return
    try:
        manifest = read_manifest(output_dir)
    except StageError:
        manifest = {"stage": None}
    if manifest is not None:
        found = manifest.get("stage")
        if found == stage:
            return
        owner = f"the output of `nonllama {found}`" if isinstance(found, str) else f"a {MANIFEST_NAME} not written by nonllama"
        raise StageError(f"{what} {output_dir} holds {owner}, which `nonllama {stage}` would delete: "
                         "choose another directory")
    holder = _lock_info(output_dir / LOCK_NAME)
    if holder is not None and holder.get("stage") == stage:
        return  # an interrupted run of this stage: ours to redo
    if holder is not None:
        raise StageError(f"{what} {output_dir} holds an unfinished output of `nonllama {holder.get('stage')}`, "
                         f"which `nonllama {stage}` would delete: choose another directory")
    if [p.name for p in entries] == [CACHE_DIR_NAME]:
        return  # download's cache, left by a run that stopped before it wrote anything else
    raise StageError(f"{what} {output_dir} is not empty and holds no earlier output of `nonllama {stage}` "
                     f"({_listing(output_dir)}): choose a new or empty directory; nothing was deleted")


def _lock_info(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _holder_info(path: Path, wait_s: float = 2.0) -> dict | None:
    """Who holds a flock-ed lock file: its holder writes its info just after taking the flock, so
    a run refused in that instant waits briefly for it rather than naming "another process"."""
    deadline = time.monotonic() + wait_s
    while (info := _lock_info(path)) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return info


def _start_ticks(pid: int) -> int | None:
    """When a process started (clock ticks since boot), to tell a reused pid apart; None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(info: dict) -> bool | None:
    """Whether the process a lock file names still runs: None when it is on another host."""
    if info.get("host") != socket.gethostname():
        return None
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    ticks = info.get("start_ticks")
    return ticks is None or _start_ticks(pid) in (None, ticks)


def _describe_holder(info: dict | None) -> str:
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"`nonllama {info.get('stage', '?')}` (pid {info.get('pid')} on {info.get('host')}, since {since})"


class DirLock:
    """One run at a time in a directory: ``_lock.json``, flock-ed while the run goes on.

    The file says who holds it (stage, pid, host, command); the kernel releases the flock when
    that process ends however it ends, so a lock file whose flock is free was left by a run that
    died, and is taken over with a notice. `keep_on_failure` keeps the file when the block fails,
    as the mark of an unfinished output of `stage`.
    """

    def __init__(self, directory: Path, stage: str, *, what: str = "-o", keep_on_failure: bool = False):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.stage = stage
        self.what = what
        self.keep_on_failure = keep_on_failure
        self.notices: list[str] = []
        self._fd: int | None = None

    def __enter__(self) -> DirLock:
        self._created = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    raise StageError(f"{self.what} {self.directory} is in use by {_describe_holder(_holder_info(self.path))}: "
                                     "wait for it to finish (or stop it), then run again") from None
                try:  # the file we locked may have been removed by its holder meanwhile: lock the new one
                    if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                        os.close(fd)
                        continue
                except FileNotFoundError:
                    os.close(fd)
                    continue
            previous = _lock_info(self.path)
            if previous and fcntl is None and _alive(previous) is not False:
                os.close(fd)
                raise StageError(f"{self.what} {self.directory} is in use by {_describe_holder(previous)}; if no "
                                 f"such run is going on, delete {self.path}")
            if previous:
                state = "no longer running" if _alive(previous) is False else "not holding it any more"
                self.notices.append(f"took over the lock of {self.directory} left by {_describe_holder(previous)}, "
                                    f"{state}")
            info = {"stage": self.stage, "pid": os.getpid(), "host": socket.gethostname(),
                    "start_ticks": _start_ticks(os.getpid()), "started": time.time(),
                    "command": " ".join(["nonllama", *sys.argv[1:]])}
            data = (json.dumps(info) + "\n").encode()
            os.pwrite(fd, data, 0)  # written before the truncation, so a reader never sees it empty
            os.ftruncate(fd, len(data))
            self._fd = fd
            return self
        raise StageError(f"{self.what} {self.directory}: could not take its lock {self.path} (it keeps changing)")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.release(remove=exc_type is None or not self.keep_on_failure)

    def release(self, remove: bool = True) -> None:
        if self._fd is None:
            return
        if remove:  # removed while still locked, so nobody locks a file that is about to go
            self.path.unlink(missing_ok=True)
        os.close(self._fd)  # releases the flock
        self._fd = None
        if remove and self._created and not any(self.directory.iterdir()):
            self.directory.rmdir()  # a run that wrote nothing leaves nothing, not even its directory


class OutputDir:
    """A stage's output directory, claimed for one run: checked, locked, then reset or reused.

    ``with OutputDir(path, stage, inputs=[...]) as out:`` refuses a directory that is an input
    (or nested with one), holds something else than this stage's output, or is locked by a live
    run; inside the block this process holds the lock. `notices` says what the claim did that a
    person should know (a stale lock taken over).
    """

    def __init__(self, path: Path, stage: str, *, inputs: Iterable[Path] = (), what: str = "-o"):
        self.path = Path(path)
        self.stage = stage
        self.inputs = [Path(p) for p in inputs]
        self.what = what
        self._lock = DirLock(self.path, stage, what=what, keep_on_failure=True)

    @property
    def notices(self) -> list[str]:
        return self._lock.notices

    def __enter__(self) -> OutputDir:
        check_not_nested(self.path, self.inputs, self.what)
        check_claimable(self.path, self.stage, self.what)
        self._lock.__enter__()
        try:
            check_claimable(self.path, self.stage, self.what)  # again, now that nobody else can change it
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # A run that failed after its reset leaves its lock file as the mark of an unfinished output
        # of this stage (so the next run may reset the directory); a finished one has its manifest;
        # one that failed before it wrote anything leaves nothing, not even the directory it made.
        untouched = [p.name for p in self.path.iterdir()] == [LOCK_NAME]
        self._lock.release(remove=exc_type is None or untouched or (self.path / MANIFEST_NAME).exists())

    def up_to_date(self, input_digest: str, config: dict, dependencies: dict | None = None) -> dict | None:
        """The manifest of an earlier run with this input, config and data files, or None."""
        if is_up_to_date(self.path, self.stage, input_digest, config, dependencies):
            return read_manifest(self.path)
        return None

    def reset(self) -> None:
        """Empty the directory for a fresh run (the lock and download's cache stay)."""
        reset_output(self.path, keep=(CACHE_DIR_NAME, LOCK_NAME))
