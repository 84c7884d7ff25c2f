"""`nonllama train-tokenizer`: options only; the work is in nonllama.pipeline.tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from nonllama.cli import (
    ExecutorOpt,
    ForceOpt,
    RayAddressOpt,
    VerifyInputOpt,
    WorkdirOpt,
    WorkersOpt,
    app,
    config_opt,
    console,
    executor_for,
    print_notices,
    resolve_config,
    show_config,
    stage_dirs,
)
from nonllama.pipeline.io import StageRun
from nonllama.pipeline.tokenizer import TokenizerConfig

D = TokenizerConfig()  # the defaults, for the help text (an option left out is None: "not given")
SECTION = "train-tokenizer"  # the TOML table: [train-tokenizer], as the command is named


def split_list(values: list[str] | None) -> list[str]:
    """Repeated options and comma-separated values alike: `--x a --x b,c` -> [a, b, c]."""
    return [v for value in values or [] for v in value.split(",") if v]


def _size(value: object) -> object:
    """`sample_bytes` in the TOML table: a number of bytes, or a size such as "500M"."""
    from nonllama.pipeline.tokenizer import parse_size

    return parse_size(value) if isinstance(value, str) else value


def _shown_size(n: int) -> str:
    """1000000000 -> '1G', as --sample-bytes takes it."""
    for unit, size in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


@app.command("train-tokenizer")
def train_tokenizer(
    input_dir: Annotated[Path | None, typer.Option("-i", "--input", help="Input directory (any finished document stage) \\[default: <workdir>/deduped].")] = None,
    output_dir: Annotated[Path | None, typer.Option("-o", "--output", help="Output directory \\[default: <workdir>/tokenizer].")] = None,
    workdir: WorkdirOpt = Path("work"),
    config_file: Annotated[Path | None, typer.Option("--config", help="TOML file; its \\[train-tokenizer] table sets any option below.")] = None,
    show: Annotated[bool, typer.Option("--show-config", help="Print the effective config as TOML and exit.")] = False,
    vocab_size: Annotated[int | None, config_opt("--vocab-size", help="Pieces in the vocabulary, special and byte pieces included.", default=D.vocab_size)] = None,
    model_type: Annotated[str | None, config_opt("--model-type", help="bpe or unigram.", default=D.model_type)] = None,
    character_coverage: Annotated[float | None, config_opt("--character-coverage", help="Share of characters the vocabulary covers as pieces; the rest fall back to bytes (0.9995 suits Chinese).", default=D.character_coverage)] = None,
    user_symbols: Annotated[list[str] | None, config_opt("--user-symbols", help="Strings always kept as one piece (repeat, or comma-separate).", default=D.user_symbols)] = None,
    sample_bytes: Annotated[str | None, config_opt("--sample-bytes", help="Train on a deterministic sample of at most this much text (500M, 1G, ...).", default=_shown_size(D.sample_bytes))] = None,
    seed: Annotated[int | None, config_opt("--seed", help="Seed of the sample.", default=D.seed)] = None,
    threads: Annotated[int | None, config_opt("--threads", help="SentencePiece threads (the model depends on it: same threads, same bytes).", default=D.threads)] = None,
    workers: WorkersOpt = 1,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    force: ForceOpt = False,
    verify_input: VerifyInputOpt = False,
) -> None:
    """Train a SentencePiece tokenizer (byte fallback, lossless) on a sample of the corpus."""
    from nonllama.pipeline.tokenizer import run_train_tokenizer

    given = dict(vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage,
                 user_symbols=split_list(user_symbols) or None, sample_bytes=_size(sample_bytes), seed=seed,
                 threads=threads)
    config = resolve_config(TokenizerConfig, SECTION, config_file, given, convert={"sample_bytes": _size})
    if show:
        show_config(SECTION, config)
        return
    inp, out = stage_dirs(workdir, "train-tokenizer", input_dir, output_dir)
    assert inp is not None
    with executor_for(executor, workers, ray_address) as runner:
        run = run_train_tokenizer(inp, out, config, executor=runner, force=force, verify_input=verify_input,
                                  console=console)
    print_notices(run, "train-tokenizer")
    print_tokenizer_summary(run)


def print_tokenizer_summary(run: StageRun) -> None:
    m = run.manifest
    if run.up_to_date:
        console.print(f"[green]train-tokenizer[/]: up to date ({run.output_dir}); --force to redo")
        return
    compression = m["compression"]
    for key, title in (("by_source", "source"), ("by_lang", "language")):
        rows = compression.get(key) or {}
        if not rows or (key == "by_lang" and len(rows) < 2):
            continue
        table = Table(title=f"compression on held-out documents, per {title}", title_justify="left")
        for col in (title, "docs", "chars", "tokens", "chars/token", "bytes/token"):
            table.add_column(col, justify="left" if col == title else "right")
        for name, v in rows.items():
            table.add_row(name, f"{v['docs']:,}", f"{v['chars']:,}", f"{v['tokens']:,}",
                          f"{v['chars_per_token']:.2f}", f"{v['bytes_per_token']:.2f}")
        console.print(table)
    sample = m["sample"]
    console.print(
        f"[green]train-tokenizer[/]: {m['vocab_size']:,} pieces ({m['config']['model_type']}) from "
        f"{sample['docs']:,} documents, {sample['bytes'] / 1e6:.1f} MB -> "
        f"{run.output_dir / m['model']}, {m['wall_time_s']:.1f}s",
        highlight=False,
    )
