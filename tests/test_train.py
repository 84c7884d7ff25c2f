"""`nonllama train`: learning, exact resume, DDP through torch.distributed.run, errors, config."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import TINY, VOCAB, one_line, one_thread, write_corpus  # noqa: F401 - one_thread: a fixture

from nonllama.train.config import TrainConfig
from nonllama.train.loop import lr_at

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    write_corpus(tmp_path / "packed")
    return tmp_path


def records(run: Path, split: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    # timing differs between runs; everything else must not
    return [{k: v for k, v in r.items() if k != "tokens_per_s"}
            for r in map(json.loads, lines) if r["split"] == split]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    last = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    return torch.load(last, weights_only=True)["model"]


def test_tiny_model_learns_the_corpus(cli, workdir: Path) -> None:
    train = write_corpus(workdir / "other", seed=0)
    counts = np.bincount(train, minlength=VOCAB) / len(train)
    unigram_entropy = -sum(p * math.log(p) for p in counts if p > 0)
    cli("train", "--workdir", workdir, *TINY, "--lr", "1e-2", "--max-steps", "150", "--eval-every", "50")
    run = workdir / "runs" / "tiny"
    train_records, val_records = records(run, "train"), records(run, "val")
    assert [r["step"] for r in val_records] == [50, 100, 150]
    assert train_records[-1]["loss"] < 0.4 * unigram_entropy, (train_records[-1], unigram_entropy)
    assert val_records[-1]["val_loss"] < 0.4 * unigram_entropy
    assert val_records[-1]["val_ppl"] == pytest.approx(math.exp(val_records[-1]["val_loss"]))
    assert val_records[-1]["val_top1"] > 0.7 and val_records[-1]["val_top5"] >= val_records[-1]["val_top1"]
    assert all(math.isfinite(r["grad_norm"]) for r in train_records)
    assert train_records[-1]["tokens"] == 150 * 8 * 32
    assert (run / "loss.png").stat().st_size > 0
    saved = (run / "config.toml").read_text()
    assert 'preset = "tiny"' in saved and "max_steps = 150" in saved


def test_shards_train_exactly_as_one_file_of_the_same_tokens(cli, workdir: Path) -> None:
    """Windows cross shard boundaries: the corpus in its three shards trains as in one file."""
    from nonllama.train.data import PackedData, write_packed

    data = PackedData(workdir / "packed")
    assert len(data.train.paths) == 3 and len(data.val.paths) == 2
    write_packed(workdir / "one", {split: [tokens[0:len(tokens)]] for split, tokens in
                                   (("train", data.train), ("val", data.val))}, VOCAB)
    common = [*TINY, "--max-steps", "6", "--eval-every", "3", "--eval-batches", "40"]
    cli("train", "--data", workdir / "packed", "--out", workdir / "shards", *common)
    cli("train", "--data", workdir / "one", "--out", workdir / "one-file", *common)
    for split in ("train", "val"):
        assert records(workdir / "shards", split) == records(workdir / "one-file", split)


def test_resume_continues_the_run_bit_for_bit(cli, workdir: Path) -> None:
    common = ["--workdir", workdir, *TINY, "--max-steps", "20", "--eval-every", "3", "--save-every", "5",
              "--keep", "2"]
    cli("train", *common, "--out", workdir / "straight")
    cli("train", *common, "--out", workdir / "resumed", "--stop-at", "12")
    assert records(workdir / "resumed", "train")[-1]["step"] == 12
    assert sorted(p.name for p in (workdir / "resumed" / "checkpoints").iterdir()) == [
        "step-00000010.pt", "step-00000012.pt"]  # the last --keep, and one where it stopped
    cli("train", "--workdir", workdir, "--out", workdir / "resumed", "--resume")  # the saved config
    for split in ("train", "val"):
        assert records(workdir / "resumed", split) == records(workdir / "straight", split)
    straight, resumed = final_weights(workdir / "straight"), final_weights(workdir / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_run_that_died_after_its_checkpoint_resumes_cleanly(cli, workdir: Path) -> None:
    """metrics.jsonl lines written after the last checkpoint are dropped and redone."""
    common = ["--workdir", workdir, *TINY, "--max-steps", "4", "--eval-every", "2", "--save-every", "2"]
    cli("train", *common, "--out", workdir / "a")
    (workdir / "a" / "checkpoints" / "step-00000004.pt").unlink()  # as if killed before saving step 4
    before = records(workdir / "a", "train")
    cli("train", *common, "--out", workdir / "a", "--resume")
    assert records(workdir / "a", "train") == before


def test_ddp_on_two_processes_matches_gradient_accumulation(cli, workdir: Path) -> None:
    common = ["--workdir", workdir, *TINY, "--batch-size", "4", "--max-steps", "6", "--eval-every", "3"]
    cli("train", *common, "--out", workdir / "one", "--grad-accum", "2")
    env = {**os.environ, "NONLLAMA_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-m", "nonllama", "train", *map(str, common),
                           "--out", str(workdir / "two"), "--nproc", "2"],
                          env=env, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "val loss" in done.stderr  # the summary, printed once by the launching command
    one, two = records(workdir / "one", "train"), records(workdir / "two", "train")
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4
    for a, b in zip(records(workdir / "one", "val"), records(workdir / "two", "val"), strict=True):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-5 and a["val_top1"] == pytest.approx(b["val_top1"])
    w1, w2 = final_weights(workdir / "one"), final_weights(workdir / "two")
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)


def test_non_finite_losses_are_skipped_then_stop_the_run(cli, workdir: Path, monkeypatch) -> None:
    from nonllama import model as model_module

    forward = model_module.Llama.forward
    calls = {"n": 0}

    def flaky_forward(self, tokens, targets=None, **kwargs):
        logits, loss = forward(self, tokens, targets, **kwargs)
        calls["n"] += 1
        if targets is not None and calls["n"] in poisoned:
            loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(model_module.Llama, "forward", flaky_forward)
    poisoned = {2, 3}
    cli("train", "--workdir", workdir, *TINY, "--max-steps", "6", "--eval-every", "100", "--out", workdir / "a")
    train_records = records(workdir / "a", "train")
    assert [r["skipped"] for r in train_records] == [0, 1, 2, 2, 2, 2]
    assert math.isnan(train_records[1]["grad_norm"]) and math.isfinite(train_records[3]["loss"])
    calls["n"], poisoned = 0, set(range(1, 100))
    result = cli("train", "--workdir", workdir, *TINY, "--max-steps", "6", "--max-bad-steps", "3",
                 "--out", workdir / "b", expect=2)
    assert "loss not finite for 3 steps in a row, the last at step 3" in one_line(result.output)


def test_user_mistakes_are_one_line_errors(cli, workdir: Path, tmp_path: Path) -> None:
    result = cli("train", "--workdir", tmp_path / "empty", *TINY, expect=2)
    assert "_manifest.json not found: run `nonllama pack` first" in one_line(result.output)
    result = cli("train", "--workdir", workdir, *TINY, "--dim", "30", expect=2)
    assert "--dim 30 is not divisible by --n-heads 4" in one_line(result.output)
    result = cli("train", "--workdir", workdir, *TINY, "--schedule", "linear", expect=2)
    assert "--schedule 'linear'" in one_line(result.output)
    result = cli("train", "--workdir", workdir, *TINY, "--resume", expect=2)
    assert "--resume: no checkpoint" in one_line(result.output)
    cli("train", "--workdir", workdir, *TINY, "--max-steps", "2")
    result = cli("train", "--workdir", workdir, *TINY, "--max-steps", "2", expect=2)
    assert "already holds checkpoints: pass --resume" in one_line(result.output)
    result = cli("train", "--workdir", workdir, *TINY, "--dim", "64", "--resume", expect=2)
    assert "--dim 64 differs from the checkpoint's None" in one_line(result.output)


def test_config_file_and_show_config(cli, workdir: Path) -> None:
    config = workdir / "train.toml"
    config.write_text('[train]\npreset = "260k"\nlr = 1e-3\nmax_tokens = 100000\nschedule = "wsd"\n')
    shown = cli("train", "--workdir", workdir, "--config", config, "--lr", "2e-3", "--show-config").stdout
    assert 'preset = "260k"' in shown and "lr = 0.002" in shown and "max_tokens = 100000" in shown
    assert f'out = "{workdir / "runs" / "260k"}"' in shown
    assert "max_steps" not in shown
    shown = cli("train", "--workdir", workdir, "--config", config, "--max-steps", "7", "--show-config").stdout
    assert "max_steps = 7" in shown and "max_tokens" not in shown  # the command line's budget wins
    config.write_text("[train]\nlearning_rate = 1e-3\n")
    result = cli("train", "--workdir", workdir, "--config", config, expect=2)
    assert "unknown training option 'learning_rate'" in one_line(result.output)


def test_schedules() -> None:
    cosine = TrainConfig(lr=1.0, min_lr=0.1, warmup=10, schedule="cosine")
    assert lr_at(0, cosine, 100) == pytest.approx(1 / 11)
    assert lr_at(10, cosine, 100) == pytest.approx(1.0)
    assert lr_at(55, cosine, 100) == pytest.approx(0.55)
    assert lr_at(100, cosine, 100) == pytest.approx(0.1)
    wsd = TrainConfig(lr=1.0, min_lr=0.0, warmup=10, schedule="wsd", decay_frac=0.2)
    assert lr_at(79, wsd, 100) == 1.0 and lr_at(90, wsd, 100) == pytest.approx(0.5)
    assert lr_at(50, TrainConfig(lr=1.0, warmup=10, schedule="constant"), 100) == 1.0
    assert TrainConfig(seq_len=256, batch_size=4, grad_accum=2, max_tokens=10_000).total_steps(2) == 3
