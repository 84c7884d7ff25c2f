"""Shared fixtures: the real corpora when present, and a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_hub import fake_hub  # noqa: F401 - a fixture: a local stand-in for the Hugging Face Hub
from tiny_runs import invoker

os.environ.setdefault("NONLLAMA_NO_PROGRESS", "1")
# rich lays tables out at the terminal's width, which differs between machines (and with the
# length of pytest's temporary paths); one fixed width makes what the tests read the same everywhere
os.environ["COLUMNS"] = "120"

SHARED_CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


@pytest.fixture
def corpora() -> Path:
    """../shared/corpora, or skip: a user's fresh clone does not have it."""
    if not SHARED_CORPORA.is_dir():
        pytest.skip(f"shared corpora not found at {SHARED_CORPORA}")
    return SHARED_CORPORA


@pytest.fixture
def cli():
    """Run `nonllama ARGS...` in-process (`input`: its stdin); returns the click Result."""
    return invoker()
