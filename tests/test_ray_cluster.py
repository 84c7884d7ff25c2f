"""A real two-node Ray cluster on this machine (`ray start --head` and a second `ray start
--address` node, 1 CPU each), started and stopped by this module: dedup and pack give the same
bytes there as on one local worker, and a Ray worker process killed in the middle of a stage
changes nothing (Ray reruns its task)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the dev extra installs ray")

from test_executors import assert_same  # noqa: E402

RAY = Path(sys.executable).parent / "ray"
# A cluster started by `ray start` turns on token authentication; the test cluster lives on this
# machine for the length of the module, so it does without, as the drivers do (tests/conftest.py)
CLUSTER_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """The address of a two-node Ray cluster on 127.0.0.1."""
    if not RAY.exists():
        pytest.fail(f"{RAY} not found: the dev extra installs ray")
    saved = {k: os.environ.get(k) for k in CLUSTER_ENV}
    os.environ.update(CLUSTER_ENV)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([RAY, "start", "--address", address, *common], check=True, capture_output=True, timeout=120)
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_the_cluster_has_two_nodes(cluster):
    import ray

    ray.init(address=cluster, logging_level="ERROR")
    try:
        alive = [n for n in ray.nodes() if n["Alive"]]
        assert len(alive) == 2 and ray.cluster_resources()["CPU"] == 2
    finally:
        ray.shutdown()


def write_corpus(root: Path, parts: int = 6, docs: int = 800) -> Path:
    """Parts of short real-looking documents with near copies across parts (work for dedup)."""
    rng = random.Random(0)
    words = ("harbour ship sea bread salt letter island boat sail wind north winter morning "
             "captain crew rope anchor market village river bridge lamp tower garden").split()
    originals = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) for _ in range(parts * docs // 2)]
    for p in range(parts):
        rows = []
        for d in range(docs):
            text = rng.choice(originals)
            if rng.random() < 0.3:  # a near copy: one word changed
                tokens = text.split()
                tokens[rng.randrange(len(tokens))] = rng.choice(words)
                text = " ".join(tokens)
            rows.append(json.dumps({"text": f"{text}. Entry {p}-{d % 7}."}))
        path = root / "src" / f"part{p}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(rows) + "\n")
    return root / "src"


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    """filter -> dedup -> tokenizer -> pack with one local worker: the reference bytes."""
    from tiny_runs import invoker

    work = tmp_path_factory.mktemp("local") / "work"
    cli = invoker()
    cli("download", write_corpus(work.parent), "--workdir", work, "--part-rows", "400")
    for stage in ("normalize", "filter", "dedup"):
        cli(stage, "--workdir", work)
    cli("train-tokenizer", "--workdir", work, "--vocab-size", "400", "--threads", "1")
    cli("pack", "--workdir", work, "--val-fraction", "0.05")
    return work


def test_dedup_and_pack_on_a_two_node_cluster_give_the_same_bytes(cluster, local_run: Path, tmp_path: Path, cli):
    work = tmp_path / "work"
    for stage in ("raw", "normalized", "filtered", "tokenizer"):
        shutil.copytree(local_run / stage, work / stage)
    on_ray = ["--executor", "ray", "--ray-address", cluster]
    cli("dedup", "--workdir", work, *on_ray)
    cli("pack", "--workdir", work, "--val-fraction", "0.05", *on_ray)
    assert_same([work / "deduped", local_run / "deduped"])
    assert_same([work / "packed", local_run / "packed"])


def _ray_task_pids() -> list[int]:
    """Ray worker processes running a nonllama task right now (Ray titles them after the function)."""
    found = subprocess.run(["pgrep", "-f", "ray::_run_on_ray"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_a_worker_killed_mid_stage_changes_nothing(cluster, local_run: Path, tmp_path: Path):
    work = tmp_path / "work"
    for stage in ("raw", "normalized"):
        shutil.copytree(local_run / stage, work / stage)
    env = {**os.environ, "NONLLAMA_NO_PROGRESS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "nonllama", "filter", "--workdir", work, "--executor", "ray",
                            "--ray-address", cluster], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    killed = None
    deadline = time.time() + 120
    while killed is None and run.poll() is None and time.time() < deadline:
        pids = _ray_task_pids()
        if pids:
            time.sleep(0.3)  # well inside its task
            try:
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
            except ProcessLookupError:
                continue
        time.sleep(0.05)
    _, stderr = run.communicate(timeout=300)
    assert killed is not None, "no Ray task was seen running"
    assert run.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert_same([work / "filtered", local_run / "filtered"])
