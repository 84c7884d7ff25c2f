"""`make all` end to end on the built-in sample, at a small size: up to date on a second run,
an option change reruns that stage and the ones after it, a run killed at any point and rerun
ends with the outputs of an uninterrupted one, two processes train as one with doubled
gradient accumulation, and the report's funnel adds up."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SMALL = {
    "PART_ROWS": "120", "WORKERS": "2", "VOCAB_SIZE": "2000", "PRESET": "tiny", "STEPS": "40", "SEQ_LEN": "64",
    "BATCH_SIZE": "8", "LR": "3e-3", "WARMUP": "5", "MAX_NEW_TOKENS": "24",
    "TRAIN_OPTS": "--save-every 10 --eval-every 20 --eval-batches 2",
}
STAGE_DIRS = ["raw", "normalized", "filtered", "deduped", "tokenizer", "packed"]
RUN = "tiny"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make_command(work: Path, target: str = "all", **variables: str) -> list[str]:
    values = {**SMALL, **variables, "WORK": str(work), "NONLLAMA": f"{sys.executable} -m nonllama"}
    return ["make", "--no-print-directory", "-C", str(REPO), target, *(f"{k}={v}" for k, v in values.items())]


def make(work: Path, target: str = "all", **variables: str) -> str:
    env = {**os.environ, "NONLLAMA_NO_PROGRESS": "1", "COLUMNS": "200"}
    done = subprocess.run(make_command(work, target, **variables), capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def outputs(work: Path) -> dict:
    """What a finished funnel produced, without what may differ between runs (times, paths)."""
    result = {d: json.loads((work / d / "_manifest.json").read_text())["output_digest"] for d in STAGE_DIRS}
    run = work / "runs" / RUN
    checkpoints = sorted((run / "checkpoints").glob("step-*.pt"))
    result["checkpoint"] = checkpoints[-1].name
    result["weights"] = torch.load(checkpoints[-1], weights_only=True)["model"]
    result["metrics"] = [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "mfu")}
                         for line in (run / "metrics.jsonl").read_text().splitlines()]
    result["samples"] = [s["completion"] for s in json.loads((run / "samples.json").read_text())["samples"]]
    return result


def assert_same(a: dict, b: dict) -> None:
    for key in a:
        if key == "weights":
            assert a[key].keys() == b[key].keys()
            for name, tensor in a[key].items():
                assert torch.equal(tensor, b[key][name]), name
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, dict, str]:
    """One uninterrupted `make all`: its work directory, outputs and printed text."""
    work = tmp_path_factory.mktemp("straight") / "work"
    printed = make(work)
    return work, outputs(work), printed


def test_make_all_runs_every_stage_and_ends_with_generated_text(straight) -> None:
    work, result, printed = straight
    for command in ("download", "normalize", "filter", "dedup", "train-tokenizer", "pack", "train", "generate"):
        assert f"nonllama {command}" in printed
    assert len(result["samples"]) == 2 and all(result["samples"])
    assert "Once upon a time" in printed and "很久很久以前" in printed


def test_make_all_on_ray_gives_the_same_bytes_and_the_same_model(straight, tmp_path: Path) -> None:
    """`make all EXECUTOR=ray`: every data stage as Ray tasks (a Ray instance of WORKERS CPUs
    started by each stage): the same outputs, so the same training and the same samples."""
    pytest.importorskip("ray", reason="the dev extra installs ray")
    work = tmp_path / "work"
    printed = make(work, EXECUTOR="ray")
    assert "--executor ray" in printed
    assert_same(outputs(work), straight[1])


def test_second_make_all_is_up_to_date_and_touches_nothing(straight) -> None:
    work, result, _ = straight
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    printed = make(work)
    for stage in ("download", "normalize", "filter", "dedup", "train-tokenizer", "pack", "train", "generate"):
        assert f"{stage}: up to date" in printed, (stage, printed[-2000:])
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()} == before
    assert_same(result, outputs(work))


def test_changing_the_filter_config_reruns_filter_and_what_follows(straight, tmp_path: Path) -> None:
    source, result, _ = straight
    work = tmp_path / "work"
    shutil.copytree(source, work)
    config = tmp_path / "filter.toml"
    config.write_text('[filter]\nlanguages = ["en"]\n')
    printed = make(work, FILTER_CONFIG=str(config))
    assert "download: up to date" in printed and "normalize: up to date" in printed
    assert "filter: up to date" not in printed and "dedup: up to date" not in printed
    assert "train: changed since the run" in printed
    changed = outputs(work)
    assert changed["raw"] == result["raw"] and changed["normalized"] == result["normalized"]
    assert all(changed[d] != result[d] for d in ("filtered", "deduped", "tokenizer", "packed"))
    assert changed["metrics"] != result["metrics"]


def _session_alive(pid: int) -> bool:
    return any(_sid(int(p.name)) == pid for p in Path("/proc").iterdir() if p.name.isdigit())


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def test_make_all_killed_anywhere_then_rerun_gives_the_uninterrupted_outputs(straight, tmp_path: Path) -> None:
    """Kill the whole make (SIGKILL, every process) as soon as the stage's output starts to
    appear, for a data stage at a time and twice in training; then rerun until it completes."""
    _, expected, _ = straight
    work = tmp_path / "work"
    rng = random.Random(0)
    # (what to wait for, relative to the work directory); each trigger is a file the stage
    # writes while it works, so the kill lands part way through that stage
    triggers = [("raw", "part-*.parquet"), ("filtered", "part-*.parquet"), ("deduped", "*.parquet"),
                ("packed", "*"), (f"runs/{RUN}/checkpoints", "step-*.pt"), (f"runs/{RUN}/checkpoints", "step-*.pt")]
    killed = []
    env = {**os.environ, "NONLLAMA_NO_PROGRESS": "1"}
    for where, pattern in triggers:
        started = time.time()
        seen_before = {p for p in (work / where).rglob(pattern)} if (work / where).exists() else set()
        proc = subprocess.Popen(make_command(work), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        while proc.poll() is None and time.time() - started < 300:
            found = [p for p in (work / where).rglob(pattern) if p not in seen_before] if (work / where).exists() else []
            if found:
                time.sleep(rng.uniform(0, 0.3))
                break
            time.sleep(0.02)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed.append(where)
        deadline = time.time() + 30
        while _session_alive(proc.pid) and time.time() < deadline:  # every child gone too
            time.sleep(0.05)
    assert len(killed) >= 4, killed
    make(work)  # the rerun completes what was interrupted
    assert_same(expected, outputs(work))


def test_two_processes_train_as_one_with_doubled_accumulation(straight, tmp_path: Path) -> None:
    source, _, _ = straight
    work = tmp_path / "work"
    shutil.copytree(source, work, ignore=shutil.ignore_patterns("runs"))
    make(work, "train", NPROC="2", RUN="ddp")
    make(work, "train", GRAD_ACCUM="2", RUN="accum")

    def losses(run: str) -> list[float]:
        lines = (work / "runs" / run / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if r["split"] == "train"]

    assert len(losses("ddp")) == int(SMALL["STEPS"])
    assert losses("ddp") == pytest.approx(losses("accum"), abs=1e-5)


def test_report_renders_the_sample_run_and_the_funnel_adds_up(straight, tmp_path: Path) -> None:
    from nonllama.report import build_report

    work, _, _ = straight
    summary = build_report(work, tmp_path / "report.html")
    assert summary.adds_up, [c.what for c in summary.checks if not c.ok]
    assert summary.runs == [RUN] and summary.figures > 10
    page = (tmp_path / "report.html").read_text()
    for heading in ("Funnel", "Drop reasons", "Filter rule values", "Largest duplicate clusters",
                    "Tokenizer and tokens", f"Training run {RUN}"):
        assert f"<h2>{heading}</h2>" in page
    assert "很久很久以前" in page  # the saved generations
    md = build_report(work, tmp_path / "report.md")
    assert (tmp_path / "report_files").is_dir() and md.figures == len(list((tmp_path / "report_files").iterdir()))


def test_make_sft_ends_its_answers_where_the_base_model_does_not(straight) -> None:
    """`make sft` after `make all`: fine-tunes the run on the chat sample and prints a conversation.
    On the held-out conversations (the sft val split), the fine-tuned model ends its answers with
    `<|end|>` far more often than the base model, and its loss on their assistant tokens is lower."""
    from nonllama.chat import chat_ids, encode_prompt
    from nonllama.generate import load_run
    from nonllama.sft.data import held_out
    from nonllama.sft.sample import chat_sample
    from nonllama.sft.windows import ChatWindows

    work = straight[0]
    printed = make(work, "sft", SFT_STEPS="150", SFT_OPTS="--eval-every 50 --eval-batches 4 --val-fraction 0.25")
    sft_run, base_run = work / "runs" / f"{RUN}-sft", work / "runs" / RUN
    replies = [json.loads(line) for line in (sft_run / "chat-out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(replies) == 2 and all(r["messages"][-1]["role"] == "assistant" for r in replies)
    assert replies[0]["messages"][-1]["content"] in printed  # the conversation is printed

    manifest = json.loads((sft_run / "sft-data" / "_manifest.json").read_text())
    options = manifest["options"]
    base = load_run(base_run)
    ids = chat_ids(base.processor, "base")
    questions = [{"messages": c["messages"][: 3 if c["messages"][0]["role"] == "system" else 2][:-1]}
                 for i, c in enumerate(chat_sample(options["seed"]))
                 if held_out("sample", i, options["val_fraction"], options["seed"])]
    # those whose prompt leaves room for a 16-token answer in the tiny model's 64-token context
    questions = [q for q in questions if len(encode_prompt(base.processor, q["messages"], ids)) + 16 <= manifest["seq_len"]]
    assert len(questions) >= 10
    asked = work / "held-out-questions.jsonl"
    asked.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")

    def ended(run: Path) -> int:
        out = run / "held-out-replies.jsonl"
        done = subprocess.run([sys.executable, "-m", "nonllama", "generate", "--chat", "--run", str(run), "--input",
                               str(asked), "--output", str(out), "--temperature", "0", "--max-new-tokens", "16"],
                              capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
        assert done.returncode == 0, done.stderr[-2000:]
        return (done.stdout + done.stderr).count("stopped at end")

    base_ended, sft_ended = ended(base_run), ended(sft_run)
    assert sft_ended >= 0.8 * len(questions) and sft_ended >= base_ended + 0.5 * len(questions), (base_ended, sft_ended)

    windows = ChatWindows(sft_run / "sft-data")
    seq_len = manifest["seq_len"]
    x, y = windows.batch("val", list(range(len(windows.val))), seq_len, torch.device("cpu"))

    def held_out_loss(run: Path) -> float:
        with torch.no_grad():
            return float(load_run(run).model(x, y)[1])

    assert held_out_loss(sft_run) < held_out_loss(base_run) - 0.5
