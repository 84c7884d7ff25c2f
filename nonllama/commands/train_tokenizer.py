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
    console,
    executor_for,
    print_notices,
    stage_dirs,
)
from nonllama.pipeline.io import StageRun


def split_list(values: list[str] | None) -> list[str]:
    """Repeated options and comma-separated values alike: `--x a --x b,c` -> [a, b, c]."""
    return [v for value in values or [] for v in value.split(",") if v]


@app.command("train-tokenizer")
def train_tokenizer(
    input_dir: Annotated[Path | None, typer.Option("-i", "--input", help="Input directory (any finished document stage) [default: <workdir>/deduped].")] = None,
    output_dir: Annotated[Path | None, typer.Option("-o", "--output", help="Output directory [default: <workdir>/tokenizer].")] = None,
    workdir: WorkdirOpt = Path("work"),
    vocab_size: Annotated[int, typer.Option("--vocab-size", min=1, help="Pieces in the vocabulary, special and byte pieces included.")] = 16_000,
    model_type: Annotated[str, typer.Option("--model-type", help="bpe or unigram.")] = "bpe",
    character_coverage: Annotated[float, typer.Option("--character-coverage", help="Share of characters the vocabulary covers as pieces; the rest fall back to bytes (0.9995 suits Chinese).")] = 0.9995,
    user_symbols: Annotated[list[str] | None, typer.Option("--user-symbols", help="Strings always kept as one piece (repeat, or comma-separate).")] = None,
    sample_bytes: Annotated[str, typer.Option("--sample-bytes", help="Train on a deterministic sample of at most this much text (500M, 1G, ...).")] = "1G",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample.")] = 0,
    threads: Annotated[int, typer.Option("--threads", min=1, help="SentencePiece threads (the model depends on it: same threads, same bytes).")] = 8,
    workers: WorkersOpt = 1,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    force: ForceOpt = False,
    verify_input: VerifyInputOpt = False,
) -> None:
    """Train a SentencePiece tokenizer (byte fallback, lossless) on a sample of the corpus."""
    from nonllama.pipeline.tokenizer import TokenizerConfig, parse_size, run_train_tokenizer

    config = TokenizerConfig(
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        user_symbols=split_list(user_symbols),
        sample_bytes=parse_size(sample_bytes),
        seed=seed,
        threads=threads,
    )
    inp, out = stage_dirs(workdir, "deduped", "tokenizer", input_dir, output_dir)
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
