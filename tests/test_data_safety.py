"""Never lose a person's data: each case a hostile but ordinary user hit, run through the CLI.

Every case asserts what a user relies on: no traceback; where the input is unusable, a non-zero
exit with a one-line message naming the path or option; every record kept, removed with a
reason or quarantined with a reason; and no file outside the output directory touched (a
checksum listing of the working tree before and after).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zstandard
from tiny_runs import invoker, tiny_run_dir

from nonllama.pipeline.dirs import LOCK_NAME
from nonllama.pipeline.io import MANIFEST_NAME, read_manifest, read_parts

STAGES = {  # stage: (its input under the workdir, its default output)
    "normalize": ("raw", "normalized"),
    "filter": ("normalized", "filtered"),
    "dedup": ("filtered", "deduped"),
    "train-tokenizer": ("deduped", "tokenizer"),
    "pack": ("deduped", "packed"),
}
TOKENIZER_OPTS = ["--vocab-size", "2000", "--threads", "1"]


def stage_args(stage: str) -> list[str]:
    return TOKENIZER_OPTS if stage == "train-tokenizer" else []


def listing(root: Path, *, outside: Path | None = None) -> dict[str, str]:
    """sha256 of every file under `root` (links: their target), leaving out `outside` and what is below it."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if outside is not None and Path(dirpath).resolve() == outside.resolve():
            dirnames[:] = []
            continue
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_symlink():
                found[str(path)] = "-> " + os.readlink(path)
            elif outside is None or outside.resolve() not in path.resolve().parents:
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def one_line_error(result, *words: str, code: int = 2) -> str:
    """The run failed with `code` and said why on one line (no traceback), mentioning `words`."""
    output = result.output
    assert result.exit_code == code, (result.exit_code, output)
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "internal error"))]
    assert len(errors) == 1 and errors[0].startswith("error:"), output
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def accounted(directory: Path) -> dict:
    """The manifest of a finished stage, after checking kept + removed = read."""
    m = read_manifest(directory)
    assert m is not None
    assert m["rows_out"] + m["rows_removed"] == m["rows_in"], m
    return m


def write_docs(path: Path, n: int, start: int = 0, tag: str = "doc") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": f"This is {tag} number {start + i}, a plain sentence about the sea and ships."})
             for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def funnel(tmp_path_factory) -> Path:
    """A work directory with every data stage run on the built-in sample."""
    work = tmp_path_factory.mktemp("funnel") / "work"
    cli = invoker()
    cli("download", "sample", "--workdir", work, "--part-rows", "300")
    for stage in STAGES:
        cli(stage, "--workdir", work, *stage_args(stage))
    return work


@pytest.fixture
def work(funnel: Path, tmp_path: Path) -> Path:
    """A copy of the funnel's work directory that a test may change."""
    copy = tmp_path / "work"
    shutil.copytree(funnel, copy, symlinks=True)
    return copy


# --------------------------------------------------------------------------- 1. output directories


def test_download_into_the_current_directory_deletes_nothing(tmp_path, cli, monkeypatch):
    write_docs(tmp_path / "mydata" / "a.jsonl", 5)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("buy milk\n")
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    result = cli("download", "mydata", "-o", ".", expect=None)
    one_line_error(result, "contains the input mydata")
    assert listing(tmp_path) == before


def test_a_directory_of_other_files_is_never_emptied(tmp_path, cli):
    write_docs(tmp_path / "mydata" / "a.jsonl", 5)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("buy milk\n")
    (notes / "drafts").mkdir()
    before = listing(tmp_path)
    result = cli("download", tmp_path / "mydata", "-o", notes, expect=None)
    one_line_error(result, str(notes), "not empty", "drafts/, todo.txt", "nothing was deleted")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("where", ["input", "parent", "inside"])
def test_output_may_not_be_the_input_or_nested_with_it(work: Path, cli, stage: str, where: str):
    inp = work / STAGES[stage][0]
    out = {"input": inp, "parent": work, "inside": inp / "sub"}[where]
    before = listing(work)
    result = cli(stage, "-i", inp, "-o", out, "--workdir", work, *stage_args(stage), expect=None)
    words = {"input": ["is also the input"], "parent": ["contains the input"], "inside": ["lies inside the input"]}
    one_line_error(result, str(out), *words[where])
    assert listing(work) == before


def test_filter_into_its_own_workdir_keeps_the_workdir(work: Path, cli):
    """`nonllama filter -i w/normalized -o w` emptied `w`, its own input included."""
    before = listing(work)
    one_line_error(cli("filter", "-i", work / "normalized", "-o", work, expect=None), "contains the input")
    assert listing(work) == before


@pytest.mark.parametrize("stage", ["normalize", "filter", "dedup", "train-tokenizer", "pack"])
def test_output_of_another_stage_is_not_overwritten(work: Path, cli, stage: str):
    other = "raw" if stage != "normalize" else "filtered"
    before = listing(work)
    result = cli(stage, "--workdir", work, "-o", work / other, *stage_args(stage), expect=None)
    assert "Traceback" not in result.output
    if other == "raw" and stage in ("normalize",):
        one_line_error(result, "is also the input")
    else:
        one_line_error(result, str(work / other), "holds the output of `nonllama")
    assert listing(work) == before


def test_a_killed_run_leaves_a_mark_that_lets_the_next_run_redo_it(work: Path, cli):
    """A run killed after emptying its directory leaves its lock file (naming the stage and a dead
    process): the next run takes the directory over, says so, and finishes."""
    out = work / "filtered"
    for child in out.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
    (out / "part-00000.parquet").write_bytes(b"half written")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_NAME).write_text(json.dumps({"stage": "filter", "pid": int(dead.stdout), "host": socket.gethostname(),
                                             "started": time.time()}))
    result = cli("filter", "--workdir", work)
    assert "took over the lock" in result.output and f"pid {int(dead.stdout)}" in result.output
    accounted(out)
    assert not (out / LOCK_NAME).exists()


def test_an_unfinished_output_of_another_stage_is_not_taken(work: Path, cli):
    out = work / "elsewhere"
    out.mkdir()
    (out / "part-00000.parquet").write_bytes(b"x")
    (out / LOCK_NAME).write_text(json.dumps({"stage": "normalize", "pid": 1, "host": "gone", "started": 0}))
    before = listing(work)
    one_line_error(cli("filter", "--workdir", work, "-o", out, expect=None), "unfinished output of `nonllama normalize`")
    assert listing(work) == before


@contextmanager
def lock_held_elsewhere(directory: Path, stage: str) -> Iterator[subprocess.Popen]:
    """Another process holding the lock of `directory`, as a running `nonllama STAGE` does."""
    directory.mkdir(parents=True, exist_ok=True)
    code = (
        "import fcntl, json, os, socket, sys, time\n"
        f"fd = os.open({str(directory / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        f"os.write(fd, json.dumps({{'stage': {stage!r}, 'pid': os.getpid(), 'host': socket.gethostname(),"
        " 'started': time.time()}).encode())\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


@pytest.fixture
def held_lock(work: Path) -> Iterator[subprocess.Popen]:
    with lock_held_elsewhere(work / "filtered", "filter") as holder:
        yield holder


def test_a_second_run_on_a_locked_directory_says_who_holds_it(work: Path, cli, held_lock):
    before = listing(work)
    line = one_line_error(cli("filter", "--workdir", work, "--force", expect=None), "is in use by `nonllama filter`")
    assert f"pid {held_lock.pid}" in line and socket.gethostname() in line
    assert listing(work) == before


def test_a_run_directory_is_trained_in_by_one_process_at_a_time(work: Path, cli):
    with lock_held_elsewhere(work / "runs" / "tiny", "train") as holder:
        line = one_line_error(cli("train", "--workdir", work, "--preset", "tiny", "--max-steps", "1", "--seq-len", "32",
                                  "--batch-size", "2", expect=None), "--out", "is in use by `nonllama train`")
        assert f"pid {holder.pid}" in line
    assert not any((work / "runs" / "tiny").rglob("*.pt"))


def test_two_filter_runs_at_once_do_not_mix(work: Path, tmp_path: Path):
    """Two real processes on one output directory: each either finishes alone or is refused."""
    env = {**os.environ, "NONLLAMA_NO_PROGRESS": "1"}
    command = [sys.executable, "-m", "nonllama", "filter", "--workdir", str(work), "--force"]
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
            for _ in range(2)]
    outputs = [(r.wait(timeout=300), r.stderr.read()) for r in runs]
    assert all("Traceback" not in err for _, err in outputs), outputs
    assert any(code == 0 for code, _ in outputs), outputs
    for code, err in outputs:
        assert code == 0 or "is in use by `nonllama filter`" in err, outputs
    m = accounted(work / "filtered")
    assert [p["sha256"] for p in m["parts"]] == [
        hashlib.sha256((work / "filtered" / p["name"]).read_bytes()).hexdigest() for p in m["parts"]
    ]


# --------------------------------------------------------------------------- 2, 3. broken files


def test_truncated_zstd_is_quarantined_with_the_records_read_before_the_break(tmp_path: Path, cli):
    lines = [json.dumps({"text": f"document {i} " + "word " * 50}) for i in range(1024)]
    data = zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode())
    src = tmp_path / "docs.jsonl.zst"
    src.write_bytes(data[: len(data) * 2 // 3])
    result = cli("download", src, "-o", tmp_path / "raw")
    m = accounted(tmp_path / "raw")
    assert m["quarantined"] == 1 and 0 < m["rows_out"] < 1024
    quarantined = [json.loads(line) for line in (tmp_path / "raw" / "quarantine.jsonl").read_text().splitlines()]
    assert "truncated" in quarantined[0]["reason"] and f"after {m['rows_out']} records" in quarantined[0]["reason"]
    assert "quarantine" in result.output
    one_line_error(cli("download", src, "-o", tmp_path / "raw2", "--strict", expect=None), "docs.jsonl.zst", "truncated")
    assert not (tmp_path / "raw2" / MANIFEST_NAME).exists()


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.bz2", ".jsonl.xz"])
def test_truncated_gzip_bz2_xz_are_quarantined(tmp_path: Path, cli, suffix: str):
    import bz2
    import lzma

    compress = {".jsonl.gz": gzip.compress, ".jsonl.bz2": bz2.compress, ".jsonl.xz": lzma.compress}[suffix]
    lines = [json.dumps({"text": f"document {i} " + "word " * 50}) for i in range(1024)]
    data = compress(("\n".join(lines) + "\n").encode())
    src = tmp_path / f"docs{suffix}"
    src.write_bytes(data[: len(data) * 2 // 3])
    cli("download", src, "-o", tmp_path / "raw")
    m = accounted(tmp_path / "raw")
    assert m["quarantined"] == 1 and m["rows_out"] < 1024


def test_csv_with_an_unclosed_quote_does_not_swallow_the_rest(tmp_path: Path, cli):
    rows = ["id,text"] + [f'{i},"row {i}, a line of text"' for i in range(100)]
    rows[10] = '9,"row 9 opens a quote and never closes it'
    src = tmp_path / "rows.csv"
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    cli("download", src, "-o", tmp_path / "raw")
    m = accounted(tmp_path / "raw")
    assert (m["rows_in"], m["rows_out"], m["quarantined"]) == (100, 99, 1)
    docs = read_parts(tmp_path / "raw")
    assert docs["text"].str.len_chars().max() < 40  # nothing swallowed its neighbours
    (bad,) = [json.loads(line) for line in (tmp_path / "raw" / "quarantine.jsonl").read_text().splitlines()]
    assert bad["line"] == 11


# --------------------------------------------------------------------------- 4. inputs read as listed


def test_a_deleted_input_part_is_named_not_skipped(work: Path, cli):
    m = read_manifest(work / "normalized")
    assert len(m["parts"]) > 1
    missing = work / "normalized" / m["parts"][1]["name"]
    missing.unlink()
    one_line_error(cli("filter", "--workdir", work, "--force", expect=None), str(missing), "missing")


def test_a_part_not_in_the_manifest_is_not_read(work: Path, cli):
    m = read_manifest(work / "normalized")
    stray = work / "normalized" / "part-00999.parquet"
    shutil.copy(work / "normalized" / m["parts"][0]["name"], stray)
    cli("filter", "--workdir", work, "--force")
    assert accounted(work / "filtered")["rows_in"] == m["rows_out"]


def test_a_changed_input_part_is_refused(work: Path, cli):
    m = read_manifest(work / "normalized")
    first, second = (work / "normalized" / p["name"] for p in m["parts"][:2])
    shutil.copy(second, first)  # a valid part, but not the one the manifest lists
    one_line_error(cli("filter", "--workdir", work, "--force", expect=None), str(first))


def test_a_same_size_change_is_caught_by_the_checksum(work: Path, cli):
    m = read_manifest(work / "normalized")
    part = work / "normalized" / m["parts"][0]["name"]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    for extra in ([], ["--verify-input"]):
        one_line_error(cli("filter", "--workdir", work, "--force", *extra, expect=None), str(part))


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{}", ["not a stage's output"]),
        ("[]", ["not a manifest", "list"]),
        ("42", ["not a manifest", "int"]),
        ("{not json", ["not a manifest", "not JSON"]),
        (None, ["rows_out", "many"]),
        ("download", ["rows_out"]),  # a manifest of the right stage that says nothing else
    ],
)
def test_a_malformed_manifest_is_refused_in_one_line(work: Path, cli, content: str | None, words: list[str]):
    path = work / "normalized" / MANIFEST_NAME
    if content is None:
        path.write_text(json.dumps({**json.loads(path.read_text()), "rows_out": "many"}))
    elif content == "download":
        path.write_text(json.dumps({"stage": "normalize"}))
    else:
        path.write_text(content)
    before = listing(work)
    one_line_error(cli("filter", "--workdir", work, "--force", expect=None), str(path), *words)
    assert listing(work) == before


def test_a_manifest_of_the_wrong_stage_is_refused(work: Path, cli):
    one_line_error(cli("filter", "--workdir", work, "-i", work / "deduped", "--force", expect=None),
                   "the output of `nonllama dedup`")
    one_line_error(cli("dedup", "--workdir", work, "-i", work / "packed", "--force", expect=None),
                   "the output of `nonllama pack`")


def test_train_checks_the_token_files_against_the_pack_manifest(work: Path, cli):
    train_bin = work / "packed" / "train-00000.bin"
    tokens = np.fromfile(train_bin, dtype=read_manifest(work / "packed")["dtype"])
    tokens[len(tokens) // 2] += 1  # same size, other tokens
    tokens.tofile(train_bin)
    one_line_error(cli("train", "--workdir", work, "--preset", "tiny", "--max-steps", "1", "--seq-len", "32",
                       "--batch-size", "2", expect=None), str(train_bin), "sha256")
    assert not (work / "runs").exists() or not any((work / "runs").rglob("*.pt"))


# --------------------------------------------------------------------------- 5. ids


def test_ids_are_unique_when_two_sources_share_a_file_name(tmp_path: Path, cli):
    write_docs(tmp_path / "y2023" / "train.jsonl", 40, tag="old")
    write_docs(tmp_path / "y2024" / "train.jsonl", 40, tag="new")
    cli("download", tmp_path / "y2023" / "train.jsonl", tmp_path / "y2024" / "train.jsonl", "-o", tmp_path / "raw")
    docs = read_parts(tmp_path / "raw")
    assert docs.height == 80 and docs["id"].n_unique() == 80
    assert sorted(docs["source"].unique()) == ["y2023-train", "y2024-train"]
    cli("download", tmp_path / "y2023" / "train.jsonl", tmp_path / "y2024" / "train.jsonl", "--name", "corpus",
        "-o", tmp_path / "raw-named")
    named = read_parts(tmp_path / "raw-named")
    assert named["id"].n_unique() == 80 and named["source"].unique().to_list() == ["corpus"]
    assert {i.split("#")[0] for i in named["id"]} == {"corpus/y2023/train.jsonl", "corpus/y2024/train.jsonl"}


def test_a_file_given_twice_is_refused(tmp_path: Path, cli):
    src = write_docs(tmp_path / "data" / "a.jsonl", 5)
    one_line_error(cli("download", src, src, "-o", tmp_path / "raw", expect=None), "read twice")
    one_line_error(cli("download", tmp_path / "data", src, "-o", tmp_path / "raw", expect=None), "read twice")
    assert not (tmp_path / "raw" / MANIFEST_NAME).exists()
    # a label of its own for each source: a corpus read twice on purpose, under distinct ids
    cli("download", src, src, "--name", "first", "--name", "second", "-o", tmp_path / "raw")
    docs = read_parts(tmp_path / "raw")
    assert docs.height == 10 and docs["id"].n_unique() == 10


# --------------------------------------------------------------------------- 6. OS errors


def test_output_under_a_regular_file(work: Path, tmp_path: Path, cli):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine\n")
    for stage in ("normalize", "filter", "dedup", "train-tokenizer", "pack"):
        one_line_error(cli(stage, "--workdir", work, "-o", blocker / "out", *stage_args(stage), expect=None),
                       str(blocker), "is a file")
    one_line_error(cli("download", "sample", "-o", blocker / "out", expect=None), str(blocker))
    assert blocker.read_text() == "mine\n"


def test_config_that_is_a_directory(work: Path, cli):
    for stage in ("normalize", "filter"):
        one_line_error(cli(stage, "--workdir", work, "--config", work, expect=None), f"--config {work}", "not a file")
    one_line_error(cli("train", "--workdir", work, "--config", work, expect=None), f"--config {work}")


def test_symlink_loops_in_an_input_directory_are_skipped_and_counted(tmp_path: Path, cli):
    data = tmp_path / "data"
    write_docs(data / "a.jsonl", 10)
    (data / "self.jsonl").symlink_to("self.jsonl")
    (data / "sub").mkdir()
    (data / "sub" / "up").symlink_to("..")  # a directory loop
    result = cli("download", data, "-o", tmp_path / "raw")
    m = accounted(tmp_path / "raw")
    assert m["rows_out"] == 10
    assert any("self.jsonl" in entry and "loop" in entry for entry in m["skipped_files"]), m["skipped_files"]
    assert "skipped" in result.output
    glob = cli("download", f"{data}/**/*.jsonl", "-o", tmp_path / "raw-glob")
    assert "Traceback" not in glob.output
    assert accounted(tmp_path / "raw-glob")["rows_out"] == 10  # a.jsonl once, not once per trip round the loop


@pytest.fixture
def unprivileged(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A world-readable scratch directory and the command prefix that runs as an ordinary user
    (root ignores file permissions: as root the commands run through `setpriv` as nobody)."""
    scratch = Path(tempfile.mkdtemp(prefix="nonllama-ro-", dir="/tmp"))
    scratch.chmod(0o777)
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.fail("running as root without setpriv: cannot test read-only outputs")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    try:
        yield scratch, prefix
    finally:
        for path in scratch.rglob("*"):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(scratch)


def run_as(prefix: list[str], *args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NONLLAMA_NO_PROGRESS": "1", "HOME": str(cwd), "MPLCONFIGDIR": str(cwd / ".mpl")}
    return subprocess.run([*prefix, sys.executable, "-m", "nonllama", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def test_read_only_outputs_give_one_line(funnel: Path, tmp_path_factory, unprivileged):
    scratch, prefix = unprivileged
    work = scratch / "work"
    shutil.copytree(funnel, work)
    run = tiny_run_dir(tmp_path_factory, "ro-run")
    shutil.copytree(run, scratch / "run")
    for path in [scratch, *scratch.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    readonly = scratch / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    commands = [["download", "sample", "-o", readonly / "raw"]]
    commands += [[stage, "--workdir", work, "-o", readonly / stage, *stage_args(stage)] for stage in STAGES]
    commands += [
        ["export", "--run", scratch / "run", "--format", "hf", "-o", readonly / "hf"],
        ["export", "--run", scratch / "run", "--format", "llama2c", "-o", readonly / "model.bin"],
        ["generate", "hello", "--run", scratch / "run", "--max-new-tokens", "2", "--seed", "0",
         "--save", readonly / "samples.json"],
        ["report", "--workdir", work, "-o", readonly / "report.html"],
    ]
    before = listing(scratch)
    for command in commands:
        done = run_as(prefix, *command, cwd=scratch)
        assert done.returncode == 2, (command, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr, (command, done.stderr)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(readonly) in errors[0] and "permission denied" in errors[0], (command, done.stderr)
    assert listing(scratch) == before


def test_killing_the_driver_ends_its_helpers_without_a_traceback(tmp_path: Path, cli):
    data = tmp_path / "data"
    for i in range(16):
        write_docs(data / f"f{i:02d}.jsonl", 3000, start=i * 3000, tag="a long document " * 20)
    cli("download", data, "-o", tmp_path / "raw", "--part-rows", "3000")
    env = {**os.environ, "NONLLAMA_NO_PROGRESS": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "nonllama", "normalize", "-i", tmp_path / "raw", "-o",
                               tmp_path / "normalized", "--workers", "2"], stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
    writers: set[str] = set()  # the processes writing a part: the driver and its helper
    deadline = time.time() + 60
    while len(writers) < 2 and time.time() < deadline:
        writers = {p.name.rsplit("-", 1)[-1] for p in (tmp_path / "normalized").glob(".part-*.tmp-*")}
        time.sleep(0.02)
    assert len(writers) == 2, "the helper never started writing"
    os.kill(driver.pid, signal.SIGKILL)
    stderr = driver.stderr.read()  # returns once every process holding the pipe (the helpers) is gone
    driver.wait(timeout=30)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    # the next run takes the directory over and finishes it
    result = cli("normalize", "-i", tmp_path / "raw", "-o", tmp_path / "normalized")
    assert "took over the lock" in result.output
    assert accounted(tmp_path / "normalized")["rows_in"] == 48000


# --------------------------------------------------------------------------- 7. smaller points


def test_empty_source_is_an_error_not_the_current_directory(tmp_path: Path, cli, monkeypatch):
    write_docs(tmp_path / "a.jsonl", 3)
    monkeypatch.chdir(tmp_path)
    one_line_error(cli("download", "", "-o", tmp_path / "raw", expect=None), "empty SOURCE")
    assert not (tmp_path / "raw").exists()


def test_nan_and_infinity_in_metadata_become_valid_json(tmp_path: Path, cli):
    src = tmp_path / "docs.jsonl"
    src.write_text('{"text": "a document", "score": NaN, "hi": Infinity, "lo": -Infinity, "ok": 1.5}\n')
    cli("download", src, "-o", tmp_path / "raw")
    meta = read_parts(tmp_path / "raw")["meta"][0]
    assert json.loads(meta, parse_constant=lambda c: pytest.fail(f"{c} in meta")) == {
        "score": None, "hi": None, "lo": None, "ok": 1.5}


def test_debug_shows_the_traceback(tmp_path: Path):
    env = {**os.environ, "NONLLAMA_NO_PROGRESS": "1"}
    plain = subprocess.run([sys.executable, "-m", "nonllama", "filter", "-i", tmp_path / "nothing", "-o",
                            tmp_path / "out"], capture_output=True, text=True, env=env)
    debug = subprocess.run([sys.executable, "-m", "nonllama", "--debug", "filter", "-i", tmp_path / "nothing", "-o",
                            tmp_path / "out"], capture_output=True, text=True, env=env)
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr


def test_parts_of_every_manifest_carry_their_size(funnel: Path):
    for directory in ("raw", "normalized", "filtered", "deduped"):
        for part in read_manifest(funnel / directory)["parts"]:
            path = funnel / directory / part["name"]
            assert part["bytes"] == path.stat().st_size
            assert pq.read_metadata(path).num_rows == part["rows"]


def test_a_finished_stage_leaves_no_lock_behind(funnel: Path):
    for directory in ("raw", "normalized", "filtered", "deduped", "tokenizer", "packed"):
        assert not (funnel / directory / LOCK_NAME).exists()
