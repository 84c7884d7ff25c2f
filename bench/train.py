"""train throughput on CPU: tokens/s of `nonllama train` against a minimal PyTorch loop.

baseline: the same model (nonllama.model.Llama) and AdamW in a bare loop over random tokens:
no data pipeline, no logging, no checkpoint. nonllama: the real `train` on a packed/
directory of random tokens (memory-mapped windows, metrics, eval and checkpoint at the end).
Figures are medians over the timed steps (the first `--warmup-steps` are dropped). The
baseline and the one-process `nonllama train` (its `train()` in this process, so both share
one interpreter and allocator) take turns `--repeat` times and the best median of each counts:
on a shared 2-core machine a burst of load from elsewhere then hits both, not one.
Ratios: nonllama / baseline (target >= 0.95), 2 processes / 1 process, --compile / eager.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("NONLLAMA_NO_PROGRESS", "1")

from nonllama.model import Llama, preset_config  # noqa: E402
from nonllama.train.config import TrainConfig  # noqa: E402


def baseline(args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    model = Llama(preset_config(args.preset, vocab_size=args.vocab, max_seq_len=args.seq_len))
    optimizer = model.configure_optimizer(5e-4, 0.1)
    rates = []
    for _ in range(args.warmup_steps + args.steps):
        started = time.perf_counter()
        tokens = torch.randint(0, args.vocab, (args.batch_size, args.seq_len + 1))
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        rates.append(args.batch_size * args.seq_len / (time.perf_counter() - started))
    return statistics.median(rates[args.warmup_steps:])


def write_packed(directory: Path, vocab: int, n_tokens: int) -> None:
    """Random tokens in pack's layout: train in 4 shards (as 4 input parts would give), val in 1."""
    from nonllama.train.data import write_packed as write

    rng = np.random.default_rng(0)
    train, val = rng.integers(0, vocab, n_tokens), rng.integers(0, vocab, n_tokens // 10)
    write(directory, {"train": np.array_split(train, 4), "val": [val]}, vocab, dtype="uint16")


def nonllama(args: argparse.Namespace, work: Path, nproc: int, compile: bool, in_process: bool = False) -> float:
    out = work / f"run-{nproc}-{int(compile)}"
    shutil.rmtree(out, ignore_errors=True)
    config = TrainConfig(data=str(work / "packed"), out=str(out), preset=args.preset, seq_len=args.seq_len,
                         batch_size=args.batch_size // nproc, max_steps=args.warmup_steps + args.steps,
                         eval_every=10**9, eval_batches=1, save_every=10**9, compile=compile)
    if in_process:
        from rich.console import Console

        from nonllama.train.loop import train

        train(config, console=Console(file=io.StringIO()))
    else:
        (work / "train.toml").write_text("\n".join(
            ["[train]"] + [f"{k} = {json.dumps(v)}" for k, v in config.to_dict().items() if v is not None]))
        command = [sys.executable, "-m", "nonllama", "train", "--config", str(work / "train.toml"),
                   "--nproc", str(nproc)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if r["split"] == "train"]
    return statistics.median(rates[args.warmup_steps:])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="15m")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8, help="global: split over the processes")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="turns of baseline and nonllama; the best counts")
    parser.add_argument("--compile", action="store_true", help="also time --compile")
    args = parser.parse_args(argv)
    print(f"preset {args.preset}, vocab {args.vocab}, seq {args.seq_len}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_packed(work / "packed", args.vocab, 2_000_000)
        base, one = 0.0, 0.0
        for _ in range(args.repeat):
            base = max(base, baseline(args))
            one = max(one, nonllama(args, work, 1, False, in_process=True))
        print(f"baseline (bare loop)     {base:10,.0f} tok/s", flush=True)
        print(f"nonllama train           {one:10,.0f} tok/s  x{one / base:.3f} of baseline", flush=True)
        two = nonllama(args, work, 2, False)
        print(f"nonllama train --nproc 2 {two:10,.0f} tok/s  x{two / one:.3f} of 1 process", flush=True)
        if args.compile:
            compiled = nonllama(args, work, 1, True)
            print(f"nonllama train --compile {compiled:10,.0f} tok/s  x{compiled / one:.3f} of eager", flush=True)
    return 0 if one >= 0.95 * base else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
