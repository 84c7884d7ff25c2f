"""train throughput on CPU: tokens/s and MFU of `nonllama train` in fp32 and bf16, eager and
compiled, against a minimal PyTorch loop and (with --llama2c) llama2.c's model and optimizer.

baseline: the same model (nonllama.model.Llama) and AdamW in a bare loop over random tokens,
float32, eager: no data pipeline, no logging, no checkpoint. nonllama: the real `train` on a
packed/ directory of random tokens (memory-mapped windows, metrics, eval and checkpoint at the
end). llama2.c: its model.py's Transformer and configure_optimizers, timed in the bare loop
(forward, backward, clip, AdamW) the way its train.py runs on CPU (float32: its autocast
context is off on CPU; eager: --compile=False); pass the directory of a llama2.c checkout
(github.com/karpathy/llama2.c): its model.py is imported from there, nothing of it is copied.

Figures are medians over the timed steps (the first `--warmup-steps` are dropped: a compiled
run compiles in its first). Runs in this process take turns `--repeat` times and the best
median of each counts: on a shared 2-core machine a burst of load from elsewhere then hits
all of them, not one. Compiled runs and --nproc 2 run in subprocesses (a compile is cached
per process). MFU: tokens/s x FLOPs per token (nonllama.train.perf, nanoGPT's estimate) over
the peak `train` measures on this CPU for the dtype (a large matrix product on the threads).
Ratios: nonllama fp32 / baseline (target >= 0.95), 2 processes / 1 process, each variant /
nonllama fp32 eager, nonllama's best / llama2.c (target >= 1.2).
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("NONLLAMA_NO_PROGRESS", "1")

from nonllama.model import Llama, preset_config  # noqa: E402
from nonllama.train.config import TrainConfig  # noqa: E402
from nonllama.train.perf import flops_per_token, measure_cpu_peak  # noqa: E402


def timed_loop(args: argparse.Namespace, step: Callable[[torch.Tensor], None]) -> float:
    """Median tokens/s of `step` on random (batch, seq_len + 1) token windows."""
    rates = []
    for _ in range(args.warmup_steps + args.steps):
        started = time.perf_counter()
        step(torch.randint(0, args.vocab, (args.batch_size, args.seq_len + 1)))
        rates.append(args.batch_size * args.seq_len / (time.perf_counter() - started))
    return statistics.median(rates[args.warmup_steps:])


def backward_and_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """A bare training step after the forward pass, the same for both baselines: backward, clip
    at 1.0, AdamW, and the loss read back (as any loop that logs it syncs once per step)."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss.item()


def baseline(args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    model = Llama(preset_config(args.preset, vocab_size=args.vocab, max_seq_len=args.seq_len))
    optimizer = model.configure_optimizer(5e-4, 0.1)

    def step(tokens: torch.Tensor) -> None:
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        backward_and_step(model, optimizer, loss)

    return timed_loop(args, step)


def llama2c(args: argparse.Namespace) -> float:
    """llama2.c's model and optimizer on the same model shape, as its train.py steps on CPU."""
    sys.path.insert(0, str(args.llama2c))
    try:
        from model import ModelArgs, Transformer  # llama2.c's model.py
    finally:
        sys.path.remove(str(args.llama2c))
    c = preset_config(args.preset, vocab_size=args.vocab, max_seq_len=args.seq_len)
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=c.dim, n_layers=c.n_layers, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads,
                                  vocab_size=c.vocab_size, hidden_dim=c.hidden_dim, multiple_of=c.multiple_of,
                                  norm_eps=c.norm_eps, max_seq_len=c.max_seq_len, dropout=0.0))
    optimizer = model.configure_optimizers(0.1, 5e-4, (0.9, 0.95), "cpu")

    def step(tokens: torch.Tensor) -> None:
        model(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())  # as its data loader gives them
        backward_and_step(model, optimizer, model.last_loss)

    return timed_loop(args, step)


def write_packed(directory: Path, vocab: int, n_tokens: int) -> None:
    """Random tokens in pack's layout: train in 4 shards (as 4 input parts would give), val in 1."""
    from nonllama.train.data import write_packed as write

    rng = np.random.default_rng(0)
    train, val = rng.integers(0, vocab, n_tokens), rng.integers(0, vocab, n_tokens // 10)
    write(directory, {"train": np.array_split(train, 4), "val": [val]}, vocab, dtype="uint16")


def nonllama(args: argparse.Namespace, work: Path, nproc: int, dtype: str, compile: bool,
             in_process: bool = False) -> float:
    """Median tokens/s of `nonllama train` on `nproc` processes."""
    out = work / f"run-{nproc}-{dtype}-{int(compile)}"
    shutil.rmtree(out, ignore_errors=True)
    config = TrainConfig(data=str(work / "packed"), out=str(out), preset=args.preset, seq_len=args.seq_len,
                         batch_size=args.batch_size // nproc, max_steps=args.warmup_steps + args.steps,
                         eval_every=10**9, eval_batches=1, save_every=10**9, dtype=dtype, compile=compile)
    if in_process:
        from rich.console import Console

        from nonllama.train.loop import train

        train(config, console=Console(file=io.StringIO()))
    else:
        (work / "train.toml").write_text("\n".join(
            ["[train]"] + [f"{k} = {json.dumps(v)}" for k, v in config.to_dict().items() if v is not None]))
        command = [sys.executable, "-m", "nonllama", "train", "--config", str(work / "train.toml"),
                   "--nproc", str(nproc)]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, torch.get_num_threads() // nproc))}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if r["split"] == "train"][args.warmup_steps:]
    return statistics.median(r["tokens_per_s"] for r in timed)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="15m")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8, help="global: split over the processes")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="turns of the in-process runs; the best counts")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled runs (a first compile: ~1 min)")
    parser.add_argument("--no-nproc", action="store_true", help="skip --nproc 2")
    parser.add_argument("--llama2c", type=Path, help="a llama2.c checkout: also time its model.py and optimizer")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    print(f"preset {args.preset}, vocab {args.vocab}, seq {args.seq_len}, batch {args.batch_size}, "
          f"{threads} threads, torch {torch.__version__}", flush=True)
    config = preset_config(args.preset, vocab_size=args.vocab, max_seq_len=args.seq_len)
    flops = flops_per_token(config, args.seq_len)
    peaks = {dtype: measure_cpu_peak(getattr(torch, name), threads, budget_s=1.0)
             for dtype, name in (("fp32", "float32"), ("bf16", "bfloat16"))}
    print(f"{flops / 1e6:,.1f} MFLOP per token; measured peak {peaks['fp32'] / 1e9:,.0f} GFLOP/s fp32, "
          f"{peaks['bf16'] / 1e9:,.0f} GFLOP/s bf16", flush=True)

    def line(name: str, rate: float, dtype: str, versus: str = "") -> None:
        # one peak per dtype for every row (train's own MFU measures it again, in its process)
        print(f"{name:34s} {rate:8,.0f} tok/s  MFU {rate * flops / peaks[dtype]:5.1%}  {versus}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_packed(work / "packed", args.vocab, 2_000_000)
        best: dict[str, float] = {}
        for _ in range(args.repeat):
            turn = {"baseline": baseline(args), "fp32": nonllama(args, work, 1, "fp32", False, in_process=True),
                    "bf16": nonllama(args, work, 1, "bf16", False, in_process=True)}
            if args.llama2c:
                turn["llama2c"] = llama2c(args)
            best = {k: max(v, best.get(k, 0.0)) for k, v in turn.items()}
        base, eager = best["baseline"], best["fp32"]
        line("baseline (bare loop)  fp32", base, "fp32")
        line("nonllama train        fp32", eager, "fp32", f"x{eager / base:.3f} of baseline")
        line("nonllama train        bf16", best["bf16"], "bf16", f"x{best['bf16'] / eager:.3f} of fp32")
        if not args.no_compile:
            for dtype in ("bf16", "fp32"):
                best[f"{dtype} compile"] = nonllama(args, work, 1, dtype, True)
                line(f"nonllama train --compile {dtype}", best[f"{dtype} compile"], dtype,
                     f"x{best[f'{dtype} compile'] / best[dtype]:.3f} of {dtype} eager")
        if not args.no_nproc:
            two = nonllama(args, work, 2, "fp32", False)
            line("nonllama train --nproc 2 fp32", two, "fp32", f"x{two / eager:.3f} of 1 process")
        if args.llama2c:
            theirs = best.pop("llama2c")
            name, ours = max(((k, v) for k, v in best.items() if k != "baseline"), key=lambda kv: kv[1])
            line("llama2.c model.py + AdamW fp32", theirs, "fp32",
                 f"nonllama {name} x{ours / theirs:.2f}, fp32 eager x{eager / theirs:.2f}")
    return 0 if eager >= 0.95 * base else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
