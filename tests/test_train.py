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
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")}
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
    assert "loss or gradient norm not finite for 3 steps in a row, the last at step 3 (loss nan)" in one_line(
        result.output)


def checkpoints(run: Path) -> dict[int, dict]:
    return {int(p.stem.removeprefix("step-")): torch.load(p, weights_only=True)
            for p in sorted((run / "checkpoints").glob("step-*.pt"))}


def poison_gradient(monkeypatch, steps: set[int]) -> None:
    """Make the gradient of one weight NaN (the loss stays finite) at these steps (1-based,
    one micro-step each)."""
    from nonllama import model as model_module

    forward = model_module.Llama.forward
    calls = {"n": 0}

    def forward_poisoning_one_gradient(self, tokens, targets=None, **kwargs):
        if targets is not None:  # a training micro-step (evaluation passes no targets)
            calls["n"] += 1
            if calls["n"] == 1:
                weight = self.layers[0].feed_forward.w1.weight
                weight.register_hook(lambda grad: torch.full_like(grad, math.nan) if calls["n"] in steps else grad)
        return forward(self, tokens, targets, **kwargs)

    monkeypatch.setattr(model_module.Llama, "forward", forward_poisoning_one_gradient)


def test_a_non_finite_gradient_skips_its_step(cli, workdir: Path, monkeypatch) -> None:
    """A NaN in one gradient, the loss finite: the step leaves the weights and the optimizer as
    they were, is counted, and its gradients do not leak into the next step."""
    poison_gradient(monkeypatch, {3})
    run = workdir / "a"
    result = cli("train", "--workdir", workdir, *TINY, "--max-steps", "5", "--eval-every", "100",
                 "--save-every", "1", "--keep", "10", "--out", run)
    assert "step 3 skipped, gradient norm nan" in one_line(result.output)
    train_records = records(run, "train")
    assert [r["skipped"] for r in train_records] == [0, 0, 1, 1, 1]
    assert math.isfinite(train_records[2]["loss"]) and math.isnan(train_records[2]["grad_norm"])
    assert all(math.isfinite(r["grad_norm"]) for r in train_records if r["step"] != 3)
    saved = checkpoints(run)
    assert saved[5]["skipped_steps"] == 1
    for step in saved:
        assert all(torch.isfinite(w).all() for w in saved[step]["model"].values()), step
    # step 3 changed nothing; step 4 trained again
    assert all(torch.equal(saved[2]["model"][k], saved[3]["model"][k]) for k in saved[2]["model"])
    assert saved[3]["optimizer"]["state"][0]["step"] == saved[2]["optimizer"]["state"][0]["step"] == 2
    assert not torch.equal(saved[3]["model"]["norm.weight"], saved[4]["model"]["norm.weight"])


def test_fp16_overflows_lower_the_scale_without_stopping_the_run(cli, workdir: Path, monkeypatch) -> None:
    """With --dtype fp16 a non-finite gradient is first the grad scaler's overflow: skipped and
    counted, the scale halved, but no bad step while the scale is above 1."""
    poison_gradient(monkeypatch, {2, 3, 4})
    run = workdir / "a"
    cli("train", "--workdir", workdir, *TINY, "--max-steps", "5", "--eval-every", "100", "--dtype", "fp16",
        "--max-bad-steps", "2", "--out", run)
    assert [r["skipped"] for r in records(run, "train")] == [0, 1, 2, 3, 3]
    last = checkpoints(run)[5]
    assert last["scaler"]["scale"] == 2.0**16 / 2**3 and last["bad_streak"] == 0
    assert all(torch.isfinite(w).all() for w in last["model"].values())


def test_weights_that_are_not_finite_are_never_checkpointed(cli, workdir: Path, monkeypatch) -> None:
    from nonllama.train import loop

    schedule = loop.lr_at
    # a learning rate of NaN at step 3 turns every weight into NaN through AdamW itself
    monkeypatch.setattr(loop, "lr_at", lambda step, *args: math.nan if step == 2 else schedule(step, *args))
    run = workdir / "a"
    result = cli("train", "--workdir", workdir, *TINY, "--max-steps", "6", "--eval-every", "100",
                 "--save-every", "2", "--out", run, expect=2)
    message = one_line(result.output)
    assert "step 4: the weights are not finite (" in message and "not saving a checkpoint" in message
    assert f"the last good checkpoint, {run / 'checkpoints' / 'step-00000002.pt'}, is kept" in message
    saved = checkpoints(run)
    assert list(saved) == [2]
    assert all(torch.isfinite(w).all() for w in saved[2]["model"].values())


def test_resuming_with_another_dtype_says_what_to_do(cli, workdir: Path) -> None:
    run = workdir / "runs" / "tiny"
    cli("train", "--workdir", workdir, *TINY, "--max-steps", "2", "--eval-every", "100", "--dtype", "fp32")
    result = cli("train", "--workdir", workdir, *TINY, "--max-steps", "3", "--dtype", "fp16", "--resume", expect=2)
    message = one_line(result.output)
    assert (f"run {run} was started with --dtype fp32; resume it with --dtype fp32 (or leave --dtype out), "
            "or start a new run with --dtype fp16 and another --out") in message
    assert "Traceback" not in result.output and "internal error" not in message
    cli("train", "--workdir", workdir, *TINY, "--max-steps", "3", "--resume")  # as the message says
    assert records(run, "train")[-1]["step"] == 3


def test_a_run_whose_preset_changed_is_not_resumed_into_another_model(cli, workdir: Path, monkeypatch) -> None:
    """The 260k preset's feed-forward went from 192 to llama2.c's 172: a run started before
    cannot continue as the same model; --resume says so, --auto-resume starts it over."""
    from nonllama import model as model_module

    common = ["--workdir", workdir, *TINY, "--max-steps", "3", "--eval-every", "100"]
    cli("train", *common, "--stop-at", "2")
    monkeypatch.setitem(model_module.PRESETS, "tiny", {**model_module.PRESETS["tiny"], "multiple_of": 4})
    result = cli("train", *common, "--resume", expect=2)
    assert "holds another model than the options now make (hidden_dim 96 -> 88)" in one_line(result.output)
    result = cli("train", *common, "--auto-resume")
    assert "starting over" in result.output and "hidden_dim 96 -> 88" in one_line(result.output)
    assert final_weights(workdir / "runs" / "tiny")["layers.0.feed_forward.w1.weight"].shape == (88, 32)


def test_checkpoints_hold_the_cuda_rng_state_of_their_own_device(tmp_path: Path, monkeypatch) -> None:
    """One generator state, the saving process's device's, restored to the resuming process's
    device; an old checkpoint's list of every device's state loads too (on fewer devices).
    No GPU here: torch.cuda's generator functions are replaced by a table of two devices."""
    from nonllama.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

    generators = {0: torch.zeros(16, dtype=torch.uint8), 1: torch.arange(16, dtype=torch.uint8)}

    def set_generator(state: torch.Tensor, device: int) -> None:
        generators[device] = state.clone()

    def every_device(*args) -> None:
        raise AssertionError("the generators of every device were read or written")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: generators[device].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_generator)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_device)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", every_device)

    state = rng_state()
    assert isinstance(state["cuda"], torch.Tensor) and torch.equal(state["cuda"], generators[1])
    path = save_checkpoint(tmp_path, 1, {"model": {}, "rng": state}, keep=2)
    generators[1] = torch.full((16,), 5, dtype=torch.uint8)
    set_rng_state(load_checkpoint(path)["rng"])
    assert torch.equal(generators[1], torch.arange(16, dtype=torch.uint8))
    assert torch.equal(generators[0], torch.zeros(16, dtype=torch.uint8))

    # written by get_rng_state_all on rank 0 of a 3-GPU machine, whose own device was cuda:0
    old = {**state, "cuda": [torch.full((16,), i, dtype=torch.uint8) for i in (7, 8, 9)]}
    path = save_checkpoint(tmp_path, 2, {"model": {}, "rng": old}, keep=2)
    set_rng_state(load_checkpoint(path)["rng"])
    assert torch.equal(generators[1], torch.full((16,), 7, dtype=torch.uint8))
    assert torch.equal(generators[0], torch.zeros(16, dtype=torch.uint8))


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
