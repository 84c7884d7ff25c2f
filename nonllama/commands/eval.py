"""`nonllama eval`: options only; the work is in nonllama.eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from nonllama.cli import app, console


@app.command("eval")
def eval_command(
    data: Annotated[list[str] | None, typer.Argument(help="What to score: a packed/ directory (its val split), a document stage's directory (raw, normalized, filtered, deduped), files, directories or globs of any format `download` reads, hf:OWNER/NAME\\[:CONFIG], URLs or `sample` \\[default: the run's own packed data, val split].", show_default=False)] = None,
    run: Annotated[list[Path] | None, typer.Option("--run", help="Run directory of `nonllama train` (repeat to compare runs side by side).", show_default=False)] = None,
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", help="A checkpoint file, or a step of the run (one --run only) \\[default: the latest].")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="The JSON file (one --run only) \\[default: <run>/eval/<data>.json].")] = None,
    stride: Annotated[int | None, typer.Option("--stride", min=1, help="Tokens between two windows over a document longer than the context; each token is scored once, with at least context - stride + 1 tokens of left context; the context: independent chunks \\[default: half the context].")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Windows per forward pass.")] = 16,
    max_docs: Annotated[int | None, typer.Option("--max-docs", min=1, help="Documents per source at most (the first ones).")] = None,
    max_bytes: Annotated[str | None, typer.Option("--max-bytes", help="Bytes of text per source at most, e.g. 5M (documents taken whole: the last one may pass it).")] = None,
    eos: Annotated[bool, typer.Option("--eos/--no-eos", help="Score each document's EOS, as pack lays documents out (BOS + text + EOS); --no-eos scores the text tokens only, as lm-eval's rolling loglikelihood does.")] = True,
    quantize: Annotated[str | None, typer.Option("--quantize", help="int8: evaluate the model with its matrices replaced by their int8 round trip (export --quantize int8's weights) \\[default: as trained].", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, or auto (cuda when there is one).")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto (bf16 on a GPU that has it, else fp32), fp32, bf16, fp16; the output head is always float32.")] = "auto",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads \\[default: torch's].")] = None,
    text_field: Annotated[str, typer.Option("--text-field", help="Files and hf: the key or column holding the text (as download).")] = "text",
    split_on: Annotated[str | None, typer.Option("--split-on", help="A .txt file: one document (default), several split on 'blank-line' or a regular expression (as download).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="hf: datasets: the split to read, e.g. validation or test (as download).")] = None,
    name: Annotated[list[str] | None, typer.Option("--name", help="Files and hf: the source label (once for all, or once per source; as download).")] = None,
) -> None:
    """Score a trained run on text: loss, perplexity, bits per byte, top-1/top-5 accuracy, per source."""
    from nonllama.eval import EvalSettings, evaluate
    from nonllama.pipeline.io import make_progress
    from nonllama.pipeline.tokenizer import parse_size

    limit = None
    if max_bytes is not None:
        try:
            limit = parse_size(max_bytes)
        except Exception:  # noqa: BLE001 - parse_size names --sample-bytes
            raise ValueError(f"--max-bytes {max_bytes!r}: expected a size like 500K, 5M or 250000") from None
    settings = EvalSettings(stride=stride, batch_size=batch_size, max_docs=max_docs, max_bytes=limit, eos=eos,
                            quantize=quantize, dtype=dtype, device=device, threads=threads, text_field=text_field,
                            split_on=split_on, split=split, names=list(name or []))
    settings.check()
    with make_progress(console) as progress:
        current: list = []

        def on_start(description: str, total: int | None) -> None:
            current[:] = [progress.add_task(description, total=total, bytes=0)]

        def on_doc(docs: int, nbytes: int) -> None:
            task = current[0]
            progress.update(task, advance=docs, bytes=progress.tasks[task].fields.get("bytes", 0) + nbytes)

        done = evaluate(list(run or []), list(data or []), settings, checkpoint=checkpoint, output=output,
                        on_start=on_start, on_doc=on_doc)
    for result, path in done:
        s = result["settings"]
        table = Table(title=f"{result['run']} step {result['step']} on {result['data_name']}", title_justify="left")
        from nonllama.eval import METRIC_HEADER, metric_rows

        for i, column in enumerate(METRIC_HEADER):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in metric_rows(result):
            table.add_row(*map(escape, row))
        console.print(table)
        console.print(f"[dim]context {s['context']}, stride {s['stride']}, batch {s['batch_size']}, "
                      f"{s['device']} {s['dtype']}{', int8 weights' if s['quantize'] else ''}, "
                      f"{'EOS scored' if s['eos'] else 'EOS not scored'}; {result['wall_time_s']:.1f}s[/]",
                      highlight=False, soft_wrap=True)
        for source, n in result["bad_records"].items():
            console.print(f"[yellow]{source}[/]: {n:,} records could not be read (download would quarantine them)",
                          highlight=False, soft_wrap=True)
        console.print(f"[green]eval[/]: {path}", highlight=False, soft_wrap=True)
    if len(done) > 1:
        from nonllama.eval import compare_rows

        results = [r for r, _ in done]
        table = Table(title="bits per byte (lower is better)", title_justify="left")
        table.add_column("source")
        for r in results:
            table.add_column(escape(f"{Path(r['run']).name} (step {r['step']})"), justify="right")
        for row in compare_rows(results):
            table.add_row(*map(escape, row))
        console.print(table)
