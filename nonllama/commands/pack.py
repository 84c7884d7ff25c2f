"""`nonllama pack`: options only; the work is in nonllama.pipeline.pack."""

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
from nonllama.commands.train_tokenizer import split_list
from nonllama.pipeline.io import StageRun


@app.command()
def pack(
    input_dir: Annotated[Path | None, typer.Option("-i", "--input", help="Input directory (any finished document stage) [default: <workdir>/deduped].")] = None,
    output_dir: Annotated[Path | None, typer.Option("-o", "--output", help="Output directory [default: <workdir>/packed].")] = None,
    tokenizer_dir: Annotated[Path | None, typer.Option("--tokenizer", help="train-tokenizer output [default: <workdir>/tokenizer].")] = None,
    workdir: WorkdirOpt = Path("work"),
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of documents in val, chosen by a hash of the id (at least one).")] = 0.005,
    mix: Annotated[list[str] | None, typer.Option("--mix", help="SOURCE=WEIGHT: each source's share of the training tokens (repeat, or comma-separate; every source needs one).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the val split and the mixing [default: 0]; with --inspect, of the windows [default: random].")] = None,
    inspect: Annotated[Path | None, typer.Option("--inspect", help="Print the counts of a pack output DIR and decode a few random windows; packs nothing.")] = None,
    windows: Annotated[int, typer.Option("--windows", min=1, help="With --inspect: windows to decode from train.")] = 3,
    window_tokens: Annotated[int, typer.Option("--window-tokens", min=1, help="With --inspect: tokens per window.")] = 64,
    workers: WorkersOpt = 1,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    force: ForceOpt = False,
    verify_input: VerifyInputOpt = False,
) -> None:
    """Encode every document into token shards train-NNNNN.bin / val-NNNNN.bin (one per input part; BOS before and EOS after each document) and index-NNNNN.parquet."""
    from nonllama.pipeline.pack import PackConfig, inspect_packed, parse_mix, run_pack

    if inspect is not None:
        manifest, found = inspect_packed(inspect, tokenizer_dir, windows=windows, window_tokens=window_tokens, seed=seed)
        print_counts(manifest, inspect)
        for w in found:
            console.rule(f"{w.split} tokens {w.offset:,}..{w.offset + len(w.tokens):,} ({w.where})", style="dim")
            console.print(w.text, highlight=False, markup=False)
        return
    config = PackConfig(val_fraction=val_fraction, mix=parse_mix(split_list(mix)), seed=seed or 0)
    inp, out = stage_dirs(workdir, "pack", input_dir, output_dir)
    assert inp is not None
    with executor_for(executor, workers, ray_address) as runner:
        run = run_pack(inp, tokenizer_dir or workdir / "tokenizer", out, config, executor=runner, force=force,
                       verify_input=verify_input, console=console)
    print_notices(run, "pack")
    print_pack_summary(run)


def print_counts(m: dict, where: Path) -> None:
    shards = m.get("shards", {}).get("train", [])
    table = Table(title=f"pack -> {where} ({m['dtype']}, vocab {m['vocab_size']:,}, {len(shards):,} shards)",
                  title_justify="left")
    for col in ("source", "train docs", "train tokens", "val docs", "val tokens", "repeat", "train share"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for source, v in m["per_source"].items():
        table.add_row(
            source, f"{v['mixed_train_docs']:,}", f"{v['mixed_train_tokens']:,}", f"{v['val_docs']:,}",
            f"{v['val_tokens']:,}", f"{v['repeat_factor']:.2f}", f"{v['train_share']:.1%}",
        )
    table.add_row("[bold]total", f"[bold]{m['docs']['train']:,}", f"[bold]{m['tokens']['train']:,}",
                  f"[bold]{m['docs']['val']:,}", f"[bold]{m['tokens']['val']:,}", "", "")
    console.print(table)


def print_pack_summary(run: StageRun) -> None:
    m = run.manifest
    if run.up_to_date:
        console.print(f"[green]pack[/]: up to date ({run.output_dir}); --force to redo")
        return
    print_counts(m, run.output_dir)
    console.print(
        f"[green]pack[/]: {m['tokens']['train']:,} train and {m['tokens']['val']:,} val tokens "
        f"(BOS and EOS included) from {m['rows_in']:,} documents, {m['wall_time_s']:.1f}s",
        highlight=False,
    )
