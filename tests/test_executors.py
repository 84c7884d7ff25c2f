"""The executor seam: every data stage writes the same bytes with `local` 1 worker, `local`
2 workers and `ray` (a Ray instance of 2 CPUs started by this module), and an interrupted stage
resumes task by task."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nonllama.pipeline.io import MANIFEST_NAME, read_manifest

ray = pytest.importorskip("ray", reason="the dev extra installs ray")

from nonllama.pipeline.dedup import DedupConfig, run_dedup  # noqa: E402
from nonllama.pipeline.download import DownloadConfig, run_download  # noqa: E402
from nonllama.pipeline.executors import LocalExecutor, RayExecutor  # noqa: E402
from nonllama.pipeline.filter import FilterConfig, run_filter  # noqa: E402
from nonllama.pipeline.normalize import NormalizeConfig, run_normalize  # noqa: E402
from nonllama.pipeline.pack import PackConfig, run_pack  # noqa: E402
from nonllama.pipeline.tokenizer import TokenizerConfig, run_train_tokenizer  # noqa: E402

EXECUTORS = ("local-1", "local-2", "ray")


@pytest.fixture(scope="module")
def executors():
    """One executor of each kind; Ray started once for the module (2 CPUs) and stopped after."""
    made = {"local-1": LocalExecutor(1), "local-2": LocalExecutor(2), "ray": RayExecutor(workers=2)}
    yield made
    made["ray"].close()


def tree(directory: Path) -> dict[str, str]:
    """sha256 of every file below `directory` but the manifest, by relative path."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST_NAME
    }


def comparable(manifest: dict) -> dict:
    """A manifest without what legitimately differs between two runs: timing, and where they wrote."""
    m = json.loads(json.dumps(manifest))
    m.pop("wall_time_s", None)
    for key in ("input", "tokenizer"):
        if isinstance(m.get(key), dict):
            m[key].pop("dir", None)
    return m


def assert_same(directories: list[Path]) -> None:
    first, *others = directories
    for other in others:
        assert tree(other) == tree(first), f"{other} differs from {first}"
        assert comparable(read_manifest(other)) == comparable(read_manifest(first)), f"{other} manifest"


def write_sources(root: Path) -> list[str]:
    """Several files of several formats (so several download tasks), one with bad records."""
    texts = [
        "The harbour was quiet when the ships came back from the northern sea.",
        "A small boat carried bread, salt and letters to the island every week.",
        "新华社北京一月电，今天上午，首都各界人士在人民大会堂举行集会。",
        "孩子们在院子里读书，老师在黑板上写下了今天的题目。",
    ]
    files = []
    for i in range(4):
        path = root / f"src/part{i}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"text": f"{texts[(i + j) % 4]} Number {i * 100 + j}."}) for j in range(150)]
        lines.insert(7, "{not json")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files.append(str(path))
    (root / "src" / "notes.txt").write_text("\n\n".join(texts * 3), encoding="utf-8")
    return [*files, str(root / "src" / "notes.txt"), "sample"]


def test_every_data_stage_writes_the_same_bytes_on_every_executor(tmp_path: Path, executors):
    sources = write_sources(tmp_path)
    outs = {name: tmp_path / name for name in EXECUTORS}
    for name, executor in executors.items():
        work = outs[name]
        run_download(DownloadConfig(sources, split_on="blank-line", part_rows=200), work / "raw", executor=executor)
        run_normalize(work / "raw", work / "normalized", NormalizeConfig(), executor=executor)
        run_filter(work / "normalized", work / "filtered", FilterConfig(), executor=executor)
        run_dedup(work / "filtered", work / "deduped", DedupConfig(paragraphs=True), executor=executor)
        run_train_tokenizer(work / "deduped", work / "tokenizer", TokenizerConfig(vocab_size=1500, threads=1),
                            executor=executor)
        run_pack(work / "deduped", work / "tokenizer", work / "packed", PackConfig(val_fraction=0.05),
                 executor=executor)
    for stage in ("raw", "normalized", "filtered", "deduped", "tokenizer", "packed"):
        assert_same([outs[name] / stage for name in EXECUTORS])
    assert read_manifest(outs["ray"] / "raw")["quarantined"] == 4


def test_ray_refuses_relative_paths_before_starting_anything(tmp_path: Path, cli, monkeypatch):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n')
    monkeypatch.chdir(tmp_path)
    result = cli("download", "a.jsonl", "-o", "raw", "--executor", "ray", expect=2)
    assert "relative path" in result.output and "absolute" in result.output
    assert not (tmp_path / "raw").exists()


def test_the_cli_runs_a_stage_on_ray_and_a_rerun_is_up_to_date(tmp_path: Path, cli):
    work = tmp_path / "work"
    cli("download", "sample", "--workdir", work, "--executor", "ray", "--workers", "2")
    local = tmp_path / "local"
    cli("download", "sample", "--workdir", local)
    assert_same([work / "raw", local / "raw"])
    again = cli("download", "sample", "--workdir", work, "--executor", "ray")
    assert "up to date" in again.output


def test_an_unknown_executor_is_one_line(tmp_path: Path, cli):
    result = cli("download", "sample", "--workdir", tmp_path, "--executor", "spark", expect=2)
    assert "--executor 'spark'" in result.output and "local, ray" in result.output


def _markers(directory: Path) -> int:
    return len(list((directory / ".work" / "tasks").rglob("*.done")))


def test_a_killed_stage_resumes_task_by_task_with_the_same_bytes(tmp_path: Path, cli):
    data = tmp_path / "data"
    for i in range(10):
        path = data / f"f{i:02d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "A long plain sentence about harbours, ships and the sea, written again and again. " * 15
        path.write_text("\n".join(json.dumps({"text": f"{text} {i}-{j}"}) for j in range(1500)) + "\n")
    cli("download", data, "-o", tmp_path / "raw", "--part-rows", "1500")
    cli("normalize", "-i", tmp_path / "raw", "-o", tmp_path / "whole")
    out = tmp_path / "normalized"
    env = {**os.environ, "NONLLAMA_NO_PROGRESS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "nonllama", "normalize", "-i", tmp_path / "raw", "-o", out],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while _markers(out) < 3 and run.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    done = _markers(out)
    assert 3 <= done < 10 and not (out / MANIFEST_NAME).exists(), done
    marked = [int(m.stem) for m in (out / ".work" / "tasks").rglob("*.done")]
    finished = {f"part-{i:05d}.parquet": (out / f"part-{i:05d}.parquet").stat().st_mtime_ns for i in marked}
    result = cli("normalize", "-i", tmp_path / "raw", "-o", out)
    assert f"resumed an interrupted run: {done} of 10 tasks were already done" in " ".join(result.output.split())
    assert_same([out, tmp_path / "whole"])
    for name, mtime in finished.items():  # a finished task's part was not written again
        assert (out / name).stat().st_mtime_ns == mtime, name
    assert not (out / ".work").exists()
