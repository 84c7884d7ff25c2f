"""`nonllama download`: options only; the work is in nonllama.pipeline.download."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nonllama.cli import (
    ExecutorOpt,
    ForceOpt,
    RayAddressOpt,
    WorkdirOpt,
    WorkersOpt,
    app,
    console,
    executor_for,
    print_summary,
    stage_dirs,
)


@app.command()
def download(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Files, directories, globs, hf:OWNER/NAME[:CONFIG][@REVISION], http(s):// URLs, or 'sample'.",
            show_default=False,
        ),
    ],
    output_dir: Annotated[Path | None, typer.Option("-o", "--output", help="Output directory [default: <workdir>/raw].")] = None,
    workdir: WorkdirOpt = Path("work"),
    name: Annotated[list[str] | None, typer.Option("--name", help="Source label: once for all sources, or once per source.")] = None,
    text_field: Annotated[str, typer.Option("--text-field", help="Column/key holding the text.")] = "text",
    split_on: Annotated[
        str | None, typer.Option("--split-on", help="Split .txt files into documents: 'blank-line' or a REGEX.")
    ] = None,
    split: Annotated[str | None, typer.Option("--split", help="Dataset split for hf: sources (e.g. train).")] = None,
    max_docs: Annotated[int | None, typer.Option("--max-docs", min=1, help="Stop each source after this many documents.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on the first bad record instead of quarantining it.")] = False,
    part_rows: Annotated[int, typer.Option("--part-rows", min=1, help="Documents per output part.")] = 50_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the built-in sample corpus.")] = 0,
    workers: WorkersOpt = 1,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    force: ForceOpt = False,
) -> None:
    """Read SOURCES into Parquet documents (id, text, source, meta); bad records are quarantined."""
    from nonllama.pipeline.download import DownloadConfig, run_download

    _, out = stage_dirs(workdir, None, "raw", None, output_dir)
    config = DownloadConfig(
        sources=list(sources),
        names=list(name or []),
        text_field=text_field,
        split_on=split_on,
        split=split,
        max_docs=max_docs,
        strict=strict,
        part_rows=part_rows,
        seed=seed,
    )
    with executor_for(executor, workers, ray_address) as runner:
        run = run_download(config, out, executor=runner, force=force, console=console)
    print_summary(run, "download")
