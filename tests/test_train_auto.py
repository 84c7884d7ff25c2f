"""`nonllama train --auto-resume`, make's mode: resume, leave alone, or start over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_runs import TINY, one_thread, write_corpus  # noqa: F401 - one_thread: a fixture

pytestmark = pytest.mark.usefixtures("one_thread")

AUTO = [*TINY, "--eval-every", "100", "--save-every", "2", "--auto-resume"]


def steps_logged(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["split"] == "train"]


def weights(run: Path) -> dict[str, torch.Tensor]:
    last = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    return torch.load(last, weights_only=True)["model"]


def test_auto_resume_starts_resumes_skips_and_restarts(cli, tmp_path: Path) -> None:
    write_corpus(tmp_path / "packed")
    run = tmp_path / "runs" / "tiny"
    # a straight run of 6 steps, for comparison
    cli("train", "--workdir", tmp_path, *AUTO, "--max-steps", "6", "--out", tmp_path / "straight")

    out = cli("train", "--workdir", tmp_path, *AUTO, "--max-steps", "6", "--stop-at", "4").output
    assert steps_logged(run) == [1, 2, 3, 4]
    out = cli("train", "--workdir", tmp_path, *AUTO, "--max-steps", "6").output
    assert "resuming" in out and "from step 4" in out
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]
    straight = weights(tmp_path / "straight")
    assert all(torch.equal(w, straight[k]) for k, w in weights(run).items())

    before = {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()}
    out = cli("train", "--workdir", tmp_path, *AUTO, "--max-steps", "6").output
    assert "up to date" in out
    assert {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()} == before

    # another option: another run, started over in the same directory
    out = cli("train", "--workdir", tmp_path, *AUTO, "--max-steps", "6", "--lr", "1e-3").output
    assert "starting over" in out and "lr" in out
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]
    assert not all(torch.equal(w, straight[k]) for k, w in weights(run).items())

    # other tokens (pack reran): started over too
    write_corpus(tmp_path / "packed2", seed=5)
    out = cli("train", "--workdir", tmp_path, *AUTO, "--max-steps", "6", "--lr", "1e-3",
              "--data", tmp_path / "packed2").output
    assert "starting over" in out and "the tokens in" in out


def test_auto_resume_with_resume_is_an_error(cli, tmp_path: Path) -> None:
    write_corpus(tmp_path / "packed")
    result = cli("train", "--workdir", tmp_path, *AUTO, "--resume", expect=2)
    assert "--resume and --auto-resume" in result.output
