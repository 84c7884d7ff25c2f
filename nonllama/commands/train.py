"""`nonllama train`: options only; the work is in nonllama.train.loop (and .launch for --nproc)."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from nonllama.cli import WorkdirOpt, app, console, load_stage_config
from nonllama.pipeline.dirs import DirLock, check_not_nested
from nonllama.train.config import TrainConfig

D = TrainConfig()  # the defaults, for the help text (options left out keep None: "not given")


def _opt(*names: str, help: str, default: object = None) -> typer.models.OptionInfo:
    shown = f" \\[default: {default}]" if default is not None else ""  # \[: not rich markup
    return typer.Option(*names, help=help + shown, show_default=False)


@app.command()
def train(
    data: Annotated[Path | None, _opt("--data", help="The packed/ directory to read.", default="<workdir>/packed")] = None,
    out: Annotated[Path | None, _opt("-o", "--out", help="Run directory.", default="<workdir>/runs/<name>")] = None,
    name: Annotated[str | None, _opt("--name", help="Run name.", default="the preset")] = None,
    workdir: WorkdirOpt = Path("work"),
    config_file: Annotated[Path | None, typer.Option("--config", help="TOML file; its \\[train] table sets any option below.")] = None,
    show_config: Annotated[bool, typer.Option("--show-config", help="Print the effective config as TOML and exit.")] = False,
    preset: Annotated[str | None, _opt("--preset", help="Model size: tiny, 260k, 2m, 15m, 42m, 110m.", default=D.preset)] = None,
    dim: Annotated[int | None, _opt("--dim", help="Model width (overrides the preset).")] = None,
    n_layers: Annotated[int | None, _opt("--n-layers", help="Transformer blocks.")] = None,
    n_heads: Annotated[int | None, _opt("--n-heads", help="Attention heads.")] = None,
    n_kv_heads: Annotated[int | None, _opt("--n-kv-heads", help="Key/value heads (< heads: grouped-query attention).")] = None,
    hidden_dim: Annotated[int | None, _opt("--hidden-dim", help="Feed-forward width.", default="8/3 dim, rounded up to a multiple of 32 (of 4 for 260k)")] = None,
    tie_embeddings: Annotated[bool | None, _opt("--tie-embeddings/--no-tie-embeddings", help="Share the embedding and output weights.", default=D.tie_embeddings)] = None,
    seq_len: Annotated[int | None, _opt("--seq-len", help="Tokens per training window.", default=D.seq_len)] = None,
    batch_size: Annotated[int | None, _opt("--batch-size", help="Windows per process and micro-step.", default=D.batch_size)] = None,
    grad_accum: Annotated[int | None, _opt("--grad-accum", help="Micro-steps per optimizer step.", default=D.grad_accum)] = None,
    lr: Annotated[float | None, _opt("--lr", help="Peak learning rate.", default=D.lr)] = None,
    min_lr: Annotated[float | None, _opt("--min-lr", help="Learning rate at the end of the decay.", default=D.min_lr)] = None,
    warmup: Annotated[int | None, _opt("--warmup", help="Linear warmup steps.", default=D.warmup)] = None,
    schedule: Annotated[str | None, _opt("--schedule", help="cosine, wsd (warmup-stable-decay) or constant.", default=D.schedule)] = None,
    decay_frac: Annotated[float | None, _opt("--decay-frac", help="wsd: share of the steps spent decaying.", default=D.decay_frac)] = None,
    weight_decay: Annotated[float | None, _opt("--weight-decay", help="AdamW weight decay (matrices only).", default=D.weight_decay)] = None,
    clip: Annotated[float | None, _opt("--clip", help="Gradient norm clip; 0 turns it off.", default=D.clip)] = None,
    max_steps: Annotated[int | None, _opt("--max-steps", help="Optimizer steps to train.", default=1000)] = None,
    max_tokens: Annotated[int | None, _opt("--max-tokens", help="Tokens to train on (instead of --max-steps).")] = None,
    eval_every: Annotated[int | None, _opt("--eval-every", help="Evaluate on the val shards every this many steps.", default=D.eval_every)] = None,
    eval_batches: Annotated[int | None, _opt("--eval-batches", help="Batches of validation windows per evaluation.", default=D.eval_batches)] = None,
    save_every: Annotated[int | None, _opt("--save-every", help="Checkpoint every this many steps (and at the end).", default=D.save_every)] = None,
    keep: Annotated[int | None, _opt("--keep", help="Checkpoints kept (the latest).", default=D.keep)] = None,
    dtype: Annotated[str | None, _opt("--dtype", help="auto (bf16 where the device computes in it natively: a GPU from Ampere on, a CPU with AVX-512 BF16 or AMX; else fp32), fp32, bf16, fp16.", default=D.dtype)] = None,
    compile: Annotated[bool | None, _opt("--compile/--no-compile", help="torch.compile the model; neither: compiled after two steps when the rest of the run saves more than compiling costs.", default="auto")] = None,
    peak_flops: Annotated[float | None, _opt("--peak-flops", help="Peak FLOP/s of one device in the training dtype, for MFU.", default="the GPU's datasheet; measured on a CPU")] = None,
    seed: Annotated[int | None, _opt("--seed", help="Seeds the weights and the window order.", default=D.seed)] = None,
    max_bad_steps: Annotated[int | None, _opt("--max-bad-steps", help="Steps in a row skipped for a non-finite loss or gradient norm that stop the run.", default=D.max_bad_steps)] = None,
    stop_at: Annotated[int | None, _opt("--stop-at", help="Stop at this step with a checkpoint (the schedule still spans --max-steps); --resume continues.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its latest checkpoint.")] = False,
    auto_resume: Annotated[bool, typer.Option("--auto-resume", help="make's mode: resume the run in --out if it has this config and data, do nothing if it is finished, start it over if either changed.")] = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Worker processes on this machine (one per GPU; gloo on CPU).")] = 1,
    nnodes: Annotated[int, typer.Option("--nnodes", min=1, help="Machines taking part.")] = 1,
    node_rank: Annotated[int, typer.Option("--node-rank", min=0, help="This machine's rank among --nnodes.")] = 0,
    master_addr: Annotated[str | None, typer.Option("--master-addr", help="Address of the machine with --node-rank 0.")] = None,
    master_port: Annotated[int | None, typer.Option("--master-port", help="Its port \\[default: 29500; a free one with --nnodes 1].")] = None,
) -> None:
    """Train a Llama on packed/ tokens; --nproc N for N processes (DDP), --resume to continue."""
    from nonllama.train.config import resolve, to_toml
    from nonllama.train.launch import LAUNCHED_ENV, in_worker, launch

    given = {k: v for k, v in locals().items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    for key in ("data", "out"):
        if key in given:
            given[key] = str(given[key])
    file_values = load_stage_config(config_file, "train")
    if auto_resume and resume:
        raise ValueError("--resume and --auto-resume: give one")
    base = resolve(file_values, given, workdir=workdir, name=name, resume=False)
    with ExitStack() as held:
        if not show_config and not in_worker():  # the ranks of a launched run are under their launcher's lock
            print_notices(held.enter_context(_claim_run(base)))
        if auto_resume:
            resume = _auto_resume(base, nproc * nnodes, show_config, in_worker())
            if resume is None:
                return
        config = resolve(file_values, given, workdir=workdir, name=name, resume=resume)
        if show_config:
            print(to_toml(config), end="")
            return
        if (nproc > 1 or nnodes > 1) and not in_worker():
            from nonllama.train.data import PackedData
            from nonllama.train.loop import prepare_run

            prepare_run(config, resume)  # the user's mistakes, caught once, before N processes start
            PackedData(Path(config.data)).verify()
            code = launch(config, resume, nproc, nnodes, node_rank, master_addr, master_port)
            if code:
                console.print(f"[bold red]error:[/] training failed (exit code {code}); "
                              f"the last checkpoint in {config.out} is resumable with --resume", highlight=False, soft_wrap=True)
                raise typer.Exit(code)
            if node_rank == 0:
                print_summary(Path(config.out))
            return

        from nonllama.train.loop import train as run_training

        try:
            summary = run_training(config, resume=resume, console=console)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted[/]: checkpoints are complete files; "
                          f"continue from the last one with --resume --out {config.out}", highlight=False)
            raise typer.Exit(130) from None
        if summary.get("checkpoint") and os.environ.get(LAUNCHED_ENV) != "1":
            print_summary(Path(config.out))


def _claim_run(config: TrainConfig) -> DirLock:
    """One `nonllama train` at a time in a run directory, which may not be inside its data (or hold it)."""
    check_not_nested(Path(config.out), [Path(config.data)], "--out")
    return DirLock(Path(config.out), "train", what="--out")


def print_notices(lock: DirLock) -> None:
    for notice in lock.notices:
        console.print(f"[yellow]train[/]: {notice}", highlight=False, soft_wrap=True)


def _auto_resume(config: TrainConfig, world_size: int, dry_run: bool, worker: bool) -> bool | None:
    """--auto-resume: True to resume, False to start (clearing a changed run), None when the
    run is finished and up to date (nothing to do)."""
    from nonllama.train.loop import clear_run, decide_auto_resume

    decision = decide_auto_resume(config, world_size)
    out = Path(config.out)
    if decision.action == "up_to_date" and not dry_run:
        console.print(f"[green]train[/]: up to date ({out}, {decision.reason}); "
                      "delete it or choose another --out to train again", highlight=False, soft_wrap=True)
        return None
    if decision.action == "restart" and not dry_run:
        if worker:  # several ranks must not race to delete one directory
            raise ValueError(f"--auto-resume: {out} holds another run ({decision.reason}); "
                             "delete it or choose another --out")
        console.print(f"[yellow]train[/]: changed since the run in {out} ({decision.reason}); starting over",
                      highlight=False, soft_wrap=True)
        clear_run(out)
    if decision.action == "resume" and not dry_run:
        console.print(f"[green]train[/]: resuming {out} {decision.reason}", highlight=False, soft_wrap=True)
    return decision.action in ("resume", "up_to_date")


def print_summary(out: Path) -> None:
    """The last train and val metrics of a run, from its metrics.jsonl."""
    from nonllama.train.checkpoint import latest_checkpoint
    from nonllama.train.metrics import PLOT_NAME, last_metrics, read_metrics

    table = Table(title=f"train -> {out}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric, value in last_metrics(read_metrics(out)):
        table.add_row(metric, value)
    console.print(table)
    console.print(f"[green]train[/]: checkpoint {latest_checkpoint(out)}, plot {out / PLOT_NAME}", highlight=False)
