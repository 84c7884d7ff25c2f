"""`nonllama export`: options only; the work is in nonllama.export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nonllama.cli import app, console


@app.command()
def export(
    output: Annotated[Path, typer.Option("-o", "--output", help="hf: a directory; llama2c: model.bin; gguf: model.gguf.", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help="hf (transformers), llama2c (run.c), gguf (llama.cpp).")] = "hf",
    run: Annotated[Path | None, typer.Option("--run", help="Run directory of `nonllama train`.")] = None,
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", help="A checkpoint file, or a step of the run \\[default: the latest].")] = None,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="tokenizer.model \\[default: the run's copy].")] = None,
    tokenizer_out: Annotated[Path | None, typer.Option("--tokenizer-out", help="llama2c: where tokenizer.bin goes \\[default: beside -o].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a previous export of the same format at -o (never other files; for hf only a directory holding nothing but a previous hf export).")] = False,
    quantize: Annotated[str | None, typer.Option("--quantize", help="int8: llama2c writes llama2.c's version-2 file (runq.c), gguf writes Q8_0 matrices; 3.5-3.8x smaller \\[default: fp32].", show_default=False)] = None,
) -> None:
    """Write a trained model for transformers, llama2.c or llama.cpp."""
    from nonllama.export import export_run

    done = export_run(fmt, output, run, checkpoint, tokenizer, tokenizer_out, force=force, quantize=quantize)
    for note in done.notes:
        console.print(f"[yellow]note[/]: {note}", highlight=False, soft_wrap=True)
    for path in done.files:
        console.print(f"  {path}  ({path.stat().st_size:,} bytes)", highlight=False, soft_wrap=True)
    console.print(f"[green]export[/]: {done.format} -> {output}", highlight=False, soft_wrap=True)
