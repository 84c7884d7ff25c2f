"""Checkpoints: the whole training state in one file, written atomically, the last K kept.

`<out>/checkpoints/step-00001000.pt` holds the model, optimizer and grad-scaler states, the
step, the random states (python, numpy, torch, and the CUDA generator of the saving process's
own device), the sampler position, the config and the tokenizer digest. There is no scheduler
state: the learning rate is a function of the step (`loop.lr_at`). Everything in it is a tensor
or a plain Python value, so it loads with `torch.load(weights_only=True)`. A checkpoint is only
written from finite weights: a run that diverged keeps its last good one.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

from nonllama.pipeline.io import StageError, atomic_path

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step-(\d+)\.pt")


def checkpoint_path(out: Path, step: int) -> Path:
    return Path(out) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def list_checkpoints(out: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    directory = Path(out) / CHECKPOINT_DIR
    found = [p for p in directory.glob("step-*.pt") if _NAME.fullmatch(p.name)] if directory.is_dir() else []
    return sorted(found, key=lambda p: int(_NAME.fullmatch(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(out: Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors holding a NaN or an infinity."""
    return [name for name, t in tensors.items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite_weights(out: Path, step: int, weights: dict[str, torch.Tensor]) -> None:
    """Raise StageError, naming the step and the last good checkpoint, when `weights` are not
    all finite: a checkpoint of them would only resume into the same NaNs."""
    bad = non_finite_tensors(weights)
    if not bad:
        return
    named = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    last = latest_checkpoint(out)
    kept = (f"the last good checkpoint, {last}, is kept: resume from it with --resume and a lower --lr "
            "(or a higher --warmup, or --dtype fp32)" if last is not None
            else f"{Path(out) / CHECKPOINT_DIR} holds no checkpoint")
    raise StageError(f"step {step}: the weights are not finite ({named}); not saving a checkpoint of them; {kept}")


def save_checkpoint(out: Path, step: int, state: dict, keep: int) -> Path:
    """Write `state` under its step's name (temporary file, then rename); drop all but the last
    `keep`. Refuses (StageError) when its model's weights are not finite, writing nothing."""
    check_finite_weights(out, step, state["model"])
    path = checkpoint_path(out, step)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in list_checkpoints(out)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a truncated or foreign file: say which, not a pickle traceback
        raise StageError(f"{path}: not a readable nonllama checkpoint ({type(e).__name__}: {e})") from None


def rng_state() -> dict:
    """Every random state a step may draw from, as tensors and plain values."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        # this process's own device only: every rank draws from the generator of its device, and
        # a list of all visible devices' states cannot be restored on a machine with fewer
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_own_cuda_rng_state(state["cuda"]), torch.cuda.current_device())


def _own_cuda_rng_state(saved: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """The CUDA generator state to restore on this process's device from a checkpoint's "cuda":
    one tensor (the saving process's device), or, in checkpoints written before that, the list
    of every visible device's state (`get_rng_state_all`) of the process that saved it, rank 0,
    whose device was cuda:0: its first entry is the generator that process drew from."""
    if isinstance(saved, (list, tuple)):
        return saved[0]
    return saved


def _tuples(value):
    """random.setstate wants the tuples that saving may have turned into lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
