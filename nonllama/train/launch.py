"""`nonllama train --nproc N`: start N workers through PyTorch's own launcher.

The command re-executes itself as

    python -m nonllama.train.launch --nproc-per-node N --standalone \
        --module nonllama.train --config <effective config> [--resume]

`nonllama.train.launch` as a program is `torch.distributed.run` with one difference: when a
worker fails it prints one line per failed worker instead of the launcher's traceback (the
worker has already printed its own message). Each worker runs `python -m nonllama.train`,
which is `nonllama train`: under the launcher it trains as one rank instead of launching.
Several machines: run the same command on each with --nnodes, --node-rank, --master-addr
and --master-port (a static rendezvous); one machine uses --standalone, which picks a free port.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from nonllama.train.config import TrainConfig, to_toml

LAUNCHED_ENV = "NONLLAMA_LAUNCHED"  # set for workers started by `nonllama train --nproc`


def in_worker() -> bool:
    """True inside a process started by torch.distributed.run (ours or the user's torchrun)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launcher_args(nproc: int, nnodes: int = 1, node_rank: int = 0, master_addr: str | None = None,
                  master_port: int | None = None) -> list[str]:
    """torch.distributed.run's options for N processes on this machine, or one node of several."""
    if nproc < 1 or nnodes < 1:
        raise ValueError(f"--nproc {nproc} and --nnodes {nnodes} must be at least 1")
    args = ["--nproc-per-node", str(nproc), "--max-restarts", "0"]
    if nnodes == 1 and master_addr is None and master_port is None:
        return [*args, "--standalone"]
    if nnodes > 1 and master_addr is None:
        raise ValueError("--nnodes > 1 needs --master-addr, the address of the node with --node-rank 0")
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"--node-rank {node_rank} must lie in 0..{nnodes - 1}")
    return [*args, "--nnodes", str(nnodes), "--node-rank", str(node_rank),
            "--master-addr", master_addr or "127.0.0.1", "--master-port", str(master_port or 29500)]


def launch(config: TrainConfig, resume: bool, nproc: int, nnodes: int = 1, node_rank: int = 0,
           master_addr: str | None = None, master_port: int | None = None) -> int:
    """Run the training `config` describes in N worker processes; return the launcher's exit code."""
    args = launcher_args(nproc, nnodes, node_rank, master_addr, master_port)
    with tempfile.TemporaryDirectory(prefix="nonllama-launch-") as tmp:
        config_path = Path(tmp) / "train.toml"
        config_path.write_text(to_toml(config), encoding="utf-8")
        command = [sys.executable, "-m", "nonllama.train.launch", *args,
                   "--module", "nonllama.train", "--config", str(config_path)]
        if resume:
            command.append("--resume")
        env = {**os.environ, LAUNCHED_ENV: "1"}
        # workers set their own thread count (cores / local processes); saying so here
        # spares the launcher's warning that it forces one thread
        env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // nproc)))
        try:
            return subprocess.run(command, env=env, check=False).returncode
        except KeyboardInterrupt:  # the launcher forwards the signal to its workers
            return 130


def main(argv: list[str]) -> int:
    """torch.distributed.run, reporting failed workers in a line each."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    try:
        run(get_args_parser().parse_args(argv))
    except ChildFailedError as e:
        codes = []
        for rank, failure in sorted(e.failures.items()):
            codes.append(failure.exitcode)
            print(f"error: training worker {rank} exited with code {failure.exitcode}", file=sys.stderr)
        return next((c for c in codes if c > 0), 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
