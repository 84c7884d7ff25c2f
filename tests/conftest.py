"""Shared fixtures: the real corpora when present, and a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_hub import fake_hub  # noqa: F401 - a fixture: a local stand-in for the Hugging Face Hub
from tiny_runs import invoker

os.environ.setdefault("NONLLAMA_NO_PROGRESS", "1")
# Ray instances the tests start live on this machine for a few seconds: no token authentication,
# the same for all of them (a process keeps the mode of the first instance it joined)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
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


@pytest.fixture(scope="module")
def ray_executor():
    """A Ray instance of 2 CPUs on this machine (the dev extra installs Ray), started once for
    the module that asks for it and stopped after."""
    from nonllama.pipeline.executors import RayExecutor

    executor = RayExecutor(workers=2)
    yield executor
    executor.close()
