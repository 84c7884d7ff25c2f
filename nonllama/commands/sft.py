"""`nonllama sft`: fine-tune a trained run on conversations (the loop is `train`'s)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from nonllama.cli import WorkdirOpt, app, console, load_stage_config
from nonllama.commands.train import D, _opt, print_notices, print_summary

# SFT's own defaults, over the base run's model, batch and learning rates: a short run (a short
# warmup: the weights are trained already) with frequent evaluations
SFT_DEFAULTS: dict[str, Any] = {"warmup": 10, "max_steps": 300, "eval_every": 50, "eval_batches": 10,
                                "save_every": 100}
MODEL_KEYS = ("preset", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "tie_embeddings", "seq_len")
FROM_BASE = (*MODEL_KEYS, "batch_size", "lr", "min_lr", "schedule", "decay_frac", "weight_decay", "clip")
NOT_SETTABLE = (*MODEL_KEYS, "data", "out")  # the model and windows come from --from; --out is an option


@app.command()
def sft(
    base: Annotated[Path | None, typer.Option("--from", help="The run to fine-tune (a `nonllama train` run directory): its latest checkpoint, tokenizer and model. \\[default with --resume: the one the run started from]")] = None,
    data: Annotated[list[str] | None, typer.Option("--data", help="Conversations: .jsonl/.json/.parquet files, directories, globs, hf:OWNER/NAME, URLs, or 'sample' (the built-in chat sample); repeatable. Records: 'messages' (role/content), 'prompt'/'response', or 'instruction'/'input'/'output'. \\[default with --resume: the run's]")] = None,
    out: Annotated[Path | None, _opt("-o", "--out", help="Run directory.", default="<workdir>/runs/<name>")] = None,
    name: Annotated[str | None, _opt("--name", help="Run name.", default="<base run's name>-sft")] = None,
    workdir: WorkdirOpt = Path("work"),
    split: Annotated[str | None, _opt("--split", help="hf: sources: the split to read.", default="train")] = None,
    val_fraction: Annotated[float | None, _opt("--val-fraction", help="Share of the conversations held out for evaluation.", default=0.05)] = None,
    config_file: Annotated[Path | None, typer.Option("--config", help="TOML file; its \\[sft] table sets any training option below.")] = None,
    show_config: Annotated[bool, typer.Option("--show-config", help="Print the effective training config as TOML and exit.")] = False,
    batch_size: Annotated[int | None, _opt("--batch-size", help="Windows per process and micro-step.", default="the base run's")] = None,
    grad_accum: Annotated[int | None, _opt("--grad-accum", help="Micro-steps per optimizer step.", default=D.grad_accum)] = None,
    lr: Annotated[float | None, _opt("--lr", help="Peak learning rate.", default="the base run's")] = None,
    min_lr: Annotated[float | None, _opt("--min-lr", help="Learning rate at the end of the decay.", default="the base run's")] = None,
    warmup: Annotated[int | None, _opt("--warmup", help="Linear warmup steps.", default=SFT_DEFAULTS["warmup"])] = None,
    schedule: Annotated[str | None, _opt("--schedule", help="cosine, wsd or constant.", default="the base run's")] = None,
    decay_frac: Annotated[float | None, _opt("--decay-frac", help="wsd: share of the steps spent decaying.", default=D.decay_frac)] = None,
    weight_decay: Annotated[float | None, _opt("--weight-decay", help="AdamW weight decay (matrices only).", default=D.weight_decay)] = None,
    clip: Annotated[float | None, _opt("--clip", help="Gradient norm clip; 0 turns it off.", default=D.clip)] = None,
    max_steps: Annotated[int | None, _opt("--max-steps", help="Optimizer steps to train.", default=SFT_DEFAULTS["max_steps"])] = None,
    max_tokens: Annotated[int | None, _opt("--max-tokens", help="Window tokens to train on (instead of --max-steps).")] = None,
    eval_every: Annotated[int | None, _opt("--eval-every", help="Evaluate on the held-out conversations every this many steps.", default=SFT_DEFAULTS["eval_every"])] = None,
    eval_batches: Annotated[int | None, _opt("--eval-batches", help="Batches of held-out windows per evaluation.", default=SFT_DEFAULTS["eval_batches"])] = None,
    save_every: Annotated[int | None, _opt("--save-every", help="Checkpoint every this many steps (and at the end).", default=SFT_DEFAULTS["save_every"])] = None,
    keep: Annotated[int | None, _opt("--keep", help="Checkpoints kept (the latest).", default=D.keep)] = None,
    dtype: Annotated[str | None, _opt("--dtype", help="auto, fp32, bf16, fp16.", default=D.dtype)] = None,
    compile: Annotated[bool | None, _opt("--compile/--no-compile", help="torch.compile the model; neither: compiled after two steps when the rest of the run saves more than compiling costs.", default="auto")] = None,
    seed: Annotated[int | None, _opt("--seed", help="Seeds the window order, the held-out split and the packing.", default=D.seed)] = None,
    max_bad_steps: Annotated[int | None, _opt("--max-bad-steps", help="Non-finite steps in a row that stop the run.", default=D.max_bad_steps)] = None,
    stop_at: Annotated[int | None, _opt("--stop-at", help="Stop at this step with a checkpoint; --resume continues.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its latest checkpoint.")] = False,
    auto_resume: Annotated[bool, typer.Option("--auto-resume", help="make's mode: resume the run in --out if it has this config and data, do nothing if it is finished, start it over if either changed.")] = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Worker processes on this machine (DDP; gloo on CPU).")] = 1,
) -> None:
    """Fine-tune a trained run on conversations: loss on the assistant's replies only; --nproc N, --resume."""
    from nonllama.pipeline.dirs import DirLock, check_not_nested
    from nonllama.pipeline.io import StageError
    from nonllama.sft.data import DATA_DIR, QUARANTINE_NAME
    from nonllama.train.checkpoint import latest_checkpoint, load_checkpoint
    from nonllama.train.config import default_out, to_toml

    training = {k: v for k, v in locals().items()
                if k in ("batch_size", "grad_accum", "lr", "min_lr", "warmup", "schedule", "decay_frac", "weight_decay",
                         "clip", "max_steps", "max_tokens", "eval_every", "eval_batches", "save_every", "keep", "dtype",
                         "compile", "seed", "max_bad_steps", "stop_at") and v is not None}
    if auto_resume and resume:
        raise ValueError("--resume and --auto-resume: give one")
    file_values = load_stage_config(config_file, "sft")
    for key in file_values:
        if key.replace("-", "_") in NOT_SETTABLE:
            raise ValueError(f"--config {config_file} [sft]: {key} comes from the base run (--from) or the command "
                             "line; it cannot be set here")
    if out is None:
        if base is None:
            raise ValueError("--from: give the run to fine-tune (or --out of the run to --resume)")
        out = Path(default_out(workdir, name or f"{Path(base).name}-sft"))
    out = Path(out)
    previous = _previous(out / DATA_DIR)
    if base is None:
        if not (resume or auto_resume) or previous is None:
            raise ValueError("--from: give the run to fine-tune (a `nonllama train` run directory)")
        base = Path(previous["base"]["run"])
    if not data:
        if not (resume or auto_resume) or previous is None:
            raise ValueError("--data: give the conversations to fine-tune on (a file, hf:OWNER/NAME, or 'sample')")
        data = list(previous["sources"])
    base = Path(base)
    check_not_nested(out, [base], "--out")
    base_run = load_base(base)

    with ExitStack() as held:
        if not show_config:
            lock = held.enter_context(DirLock(out, "sft", what="--out"))
            print_notices(lock)
        # the training config: the base run's model and batch < SFT's defaults < --config [sft] < options
        saved = None
        checkpoint = latest_checkpoint(out)
        if resume:
            if checkpoint is None:
                raise StageError(f"--resume: no checkpoint in {out / 'checkpoints'}")
            saved = dict(load_checkpoint(checkpoint)["config"])
            saved.pop("stop_at", None)
        config = sft_config(base_run, out, file_values, training, saved)
        if show_config:
            print(to_toml(config), end="")
            return
        from nonllama.sft.data import prepare

        manifest = prepare(
            data, processor=base_run["processor"], ids=base_run["ids"], seq_len=config.seq_len,
            vocab_size=base_run["vocab_size"], data_dir=out / DATA_DIR, quarantine_path=out / QUARANTINE_NAME,
            val_fraction=0.05 if val_fraction is None else val_fraction, seed=config.seed,
            split="train" if split is None else split, cache_dir=workdir / ".cache",
            base={"run": str(base.resolve()), "checkpoint": str(base_run["checkpoint"].resolve()),
                  "sha256": base_run["checkpoint_sha256"]},
            tokenizer=base_run["tokenizer"])
        print_preparation(manifest, out / QUARANTINE_NAME)
        if auto_resume:
            from nonllama.train.loop import clear_run, decide_auto_resume

            decision = decide_auto_resume(config, nproc)
            if decision.action == "up_to_date":
                console.print(f"[green]sft[/]: up to date ({out}, {decision.reason}); delete it or choose another "
                              "--out to train again", highlight=False, soft_wrap=True)
                return
            if decision.action == "restart":
                console.print(f"[yellow]sft[/]: changed since the run in {out} ({decision.reason}); starting over",
                              highlight=False, soft_wrap=True)
                clear_run(out)
            resume = decision.action == "resume"
            if resume:
                console.print(f"[green]sft[/]: resuming {out} {decision.reason}", highlight=False, soft_wrap=True)
                saved = dict(load_checkpoint(latest_checkpoint(out))["config"])
                saved.pop("stop_at", None)
                config = sft_config(base_run, out, file_values, training, saved)
        if resume:
            state = load_checkpoint(latest_checkpoint(out))
            if state.get("data_digest") != manifest["output_digest"]:
                raise StageError(f"--resume: the conversations (--data, --val-fraction, --split) or the base run changed "
                                 f"since {out} started: its windows differ; start a new run with another --out")
        from nonllama.train.loop import prepare_run

        prepare_run(config, resume)
        if nproc > 1:
            from nonllama.train.launch import launch

            code = launch(config, resume, nproc)
            if code:
                console.print(f"[bold red]error:[/] fine-tuning failed (exit code {code}); the last checkpoint in "
                              f"{out} is resumable with --resume", highlight=False, soft_wrap=True)
                raise typer.Exit(code)
        else:
            from nonllama.train.loop import train as run_training

            try:
                run_training(config, resume=resume, console=console)
            except KeyboardInterrupt:
                console.print(f"[yellow]interrupted[/]: continue from the last checkpoint with --resume --out {out}",
                              highlight=False)
                raise typer.Exit(130) from None
        print_summary(out)


def _previous(data_dir: Path) -> dict | None:
    from nonllama.pipeline.io import read_manifest

    try:
        return read_manifest(data_dir)
    except Exception:  # noqa: BLE001 - a broken manifest is only no help with the defaults
        return None


def load_base(run: Path) -> dict:
    """What sft takes from the base run: its latest checkpoint (and checksum), training config,
    tokenizer (which must have the chat tokens) and vocabulary size."""
    from nonllama.chat import chat_ids
    from nonllama.pipeline.io import StageError, file_sha256
    from nonllama.pipeline.tokenizer import load_processor
    from nonllama.train.checkpoint import latest_checkpoint, load_checkpoint

    if not run.is_dir():
        raise StageError(f"--from {run}: no such run directory")
    checkpoint = latest_checkpoint(run)
    if checkpoint is None:
        raise StageError(f"--from {run}: no checkpoint in {run / 'checkpoints'} (train it first with `nonllama train`)")
    tokenizer = run / "tokenizer.model"
    if not tokenizer.is_file():
        raise StageError(f"--from {run}: no tokenizer.model beside its checkpoints (train copies it there from the "
                         "packed data's tokenizer)")
    processor = load_processor(tokenizer)
    ids = chat_ids(processor, where=f"--from {run}")
    state = load_checkpoint(checkpoint)
    sha = file_sha256(tokenizer)
    if state.get("tokenizer_digest") and state["tokenizer_digest"] != sha:
        raise StageError(f"--from {run}: {tokenizer} is not the tokenizer {checkpoint} was trained with (sha256 differs)")
    vocab = int(state["model_config"]["vocab_size"])
    if vocab != processor.vocab_size():
        raise StageError(f"--from {run}: the model has a vocabulary of {vocab}, {tokenizer} of {processor.vocab_size()}")
    return {"run": run, "checkpoint": checkpoint, "checkpoint_sha256": file_sha256(checkpoint),
            "config": dict(state["config"]), "model_config": dict(state["model_config"]), "tokenizer": tokenizer,
            "processor": processor, "ids": ids, "vocab_size": vocab}


def sft_config(base_run: dict, out: Path, file_values: dict, options: dict, saved: dict | None):
    """The effective training config of the SFT run: defaults < the base run's model, seq len,
    batch size and learning rates (FROM_BASE) < SFT_DEFAULTS < the resumed checkpoint's < --config [sft] < the options."""
    from nonllama.model import ModelConfig
    from nonllama.pipeline.io import StageError
    from nonllama.sft.data import DATA_DIR
    from nonllama.train.config import merge
    from nonllama.train.loop import model_differences

    from_base = {k: base_run["config"].get(k) for k in FROM_BASE}
    layers = [("the run's directories", {"data": str(out / DATA_DIR), "out": str(out)}),
              (f"--from {base_run['run']}", from_base), ("sft defaults", SFT_DEFAULTS)]
    if saved is not None:
        layers.append(("the checkpoint", {k: v for k, v in saved.items() if k not in ("data", "out")}))
    layers += [("--config [sft]", file_values), ("command line", options)]
    config = merge(layers)
    if saved is not None and saved.get("dtype", config.dtype) != config.dtype:
        raise ValueError(f"run {out} was started with --dtype {saved['dtype']}; resume it with that --dtype "
                         "(or leave --dtype out)")
    differences = model_differences({"model_config": base_run["model_config"]},
                                    config.model_config(base_run["vocab_size"]))
    differences += [f"{k} {saved.get(k)!r} -> {getattr(config, k)!r}" for k in MODEL_KEYS
                     if saved is not None and saved.get(k) != getattr(config, k)]
    if differences:
        raise StageError(f"--from {base_run['run']}: its checkpoint holds another model than its config makes, or than "
                         f"the one this run started from ({', '.join(differences)})")
    ModelConfig(**base_run["model_config"]).check()
    return config


def print_preparation(manifest: dict, quarantine: Path) -> None:
    counts = manifest["counts"]
    table = Table(title="sft data", title_justify="left")
    for column in ("split", "conversations", "windows", "tokens", "assistant tokens", "fill"):
        table.add_column(column, justify="left" if column == "split" else "right")
    seq = manifest["seq_len"] + 1
    for which in ("train", "val"):
        windows = counts[f"{which}_windows"]
        fill = counts[f"{which}_tokens"] / (windows * seq) if windows else 0.0
        table.add_row(which, f"{counts[f'{which}_conversations']:,}", f"{windows:,}", f"{counts[f'{which}_tokens']:,}",
                      f"{counts[f'{which}_counted_tokens']:,}", f"{fill:.0%}")
    console.print(table)
    if counts.get("split_conversations"):
        dropped = counts.get("exchanges_too_long", 0)
        console.print(f"sft: {counts['split_conversations']:,} conversations longer than a window split at turn "
                      f"boundaries" + (f", {dropped:,} exchanges longer than a window dropped" if dropped else ""),
                      highlight=False)
    if counts["quarantined"]:
        console.print(f"[yellow]sft[/]: {counts['quarantined']:,} of {counts['records']:,} records quarantined "
                      f"(see {quarantine}):", highlight=False, soft_wrap=True)
        for reason, n in counts["quarantine_reasons"].items():
            console.print(f"  {reason}: {n:,}", highlight=False)
    else:
        console.print(f"[green]sft[/]: {counts['records']:,} records read, none quarantined", highlight=False)
