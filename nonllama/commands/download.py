"""`nonllama download`: options only; the work is in nonllama.pipeline.download."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nonllama.cli import (
    ExecutorOpt,
    RayAddressOpt,
    WorkdirOpt,
    WorkersOpt,
    app,
    config_opt,
    console,
    executor_for,
    print_summary,
    resolve_config,
    show_config,
    stage_dirs,
)
from nonllama.pipeline.download import DownloadConfig

D = DownloadConfig(sources=[])  # the defaults, for the help text (an option left out is None: "not given")


@app.command()
def download(
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            help="Files, directories, globs, hf:OWNER/NAME\\[:CONFIG]\\[@REVISION], http(s):// URLs, or 'sample' "
            "\\[default: `sources` of the \\[download] table of --config].",
            show_default=False,
        ),
    ] = None,
    output_dir: Annotated[Path | None, typer.Option("-o", "--output", help="Output directory \\[default: <workdir>/raw].")] = None,
    workdir: WorkdirOpt = Path("work"),
    config_file: Annotated[Path | None, typer.Option("--config", help="TOML file; its \\[download] table sets any option below, and `sources`.")] = None,
    show: Annotated[bool, typer.Option("--show-config", help="Print the effective config as TOML and exit.")] = False,
    name: Annotated[list[str] | None, config_opt("--name", help="Source label: once for all sources, or once per source.", default="from each SOURCE")] = None,
    text_field: Annotated[str | None, config_opt("--text-field", help="Column/key holding the text.", default=D.text_field)] = None,
    split_on: Annotated[str | None, config_opt("--split-on", help="Split .txt files into documents: 'blank-line' or a REGEX.", default="one document per file")] = None,
    split: Annotated[str | None, config_opt("--split", help="Dataset split for hf: sources (e.g. train).", default="every split")] = None,
    max_docs: Annotated[int | None, config_opt("--max-docs", help="Stop each source after this many documents.", default="no limit", min=1)] = None,
    strict: Annotated[bool | None, config_opt("--strict/--no-strict", help="Fail on the first bad record instead of quarantining it.", default=D.strict)] = None,
    part_rows: Annotated[int | None, config_opt("--part-rows", help="Documents per output part.", default=D.part_rows, min=1)] = None,
    seed: Annotated[int | None, config_opt("--seed", help="Seed of the built-in sample corpus.", default=D.seed)] = None,
    workers: WorkersOpt = 1,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Redo the stage even if it is up to date, and fetch http(s) sources again (a URL whose server sends no ETag or Last-Modified can change unseen; hf: files are pinned to a commit and kept).")] = False,
) -> None:
    """Read SOURCES into Parquet documents (id, text, source, meta); bad records are quarantined."""
    from nonllama.pipeline.download import run_download

    given = dict(sources=list(sources) if sources else None, names=list(name) if name else None,
                 text_field=text_field, split_on=split_on, split=split, max_docs=max_docs, strict=strict,
                 part_rows=part_rows, seed=seed)
    config = resolve_config(DownloadConfig, "download", config_file, given, required={"sources": []})
    if show:
        show_config("download", config)
        return
    if not config.sources:
        raise ValueError("download: no SOURCES: give them as arguments, or as `sources = [...]` in the "
                         "[download] table of --config")
    _, out = stage_dirs(workdir, "download", None, output_dir)
    with executor_for(executor, workers, ray_address) as runner:
        run = run_download(config, out, executor=runner, force=force, console=console)
    print_summary(run, "download")
