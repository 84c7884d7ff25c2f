"""`nonllama normalize`: options only; the work is in nonllama.pipeline.normalize."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    print_summary,
    resolve_config,
    show_config,
    stage_dirs,
)
from nonllama.pipeline.normalize import NormalizeConfig


@app.command()
def normalize(
    input_dir: Annotated[Path | None, typer.Option("-i", "--input", help="Input directory \\[default: <workdir>/raw].")] = None,
    output_dir: Annotated[Path | None, typer.Option("-o", "--output", help="Output directory \\[default: <workdir>/normalized].")] = None,
    workdir: WorkdirOpt = Path("work"),
    config_file: Annotated[Path | None, typer.Option("--config", help="TOML file; its \\[normalize] table sets the rules (`--show-config` lists them).")] = None,
    show: Annotated[bool, typer.Option("--show-config", help="Print the effective config as TOML and exit.")] = False,
    workers: WorkersOpt = 1,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    force: ForceOpt = False,
    verify_input: VerifyInputOpt = False,
) -> None:
    """Repair mojibake, NFKC, strip invisible characters, unify whitespace and punctuation.

    Code blocks are left as they are, Markdown keeps its structure, overlong lines are split.
    """
    from nonllama.pipeline.normalize import run_normalize

    config = resolve_config(NormalizeConfig, "normalize", config_file, {})
    if show:
        show_config("normalize", config)
        return
    inp, out = stage_dirs(workdir, "normalize", input_dir, output_dir)
    assert inp is not None
    with executor_for(executor, workers, ray_address) as runner:
        run = run_normalize(inp, out, config, executor=runner, force=force, verify_input=verify_input, console=console)
    print_summary(run, "normalize")
