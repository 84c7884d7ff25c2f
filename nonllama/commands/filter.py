"""`nonllama filter`: options only; the work is in nonllama.pipeline.filter."""

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
    config_opt,
    console,
    executor_for,
    print_summary,
    resolve_config,
    show_config,
    stage_dirs,
)
from nonllama.pipeline.filter import FilterConfig

D = FilterConfig()  # the defaults, for the help text (an option left out is None: "not given")


@app.command("filter")
def filter_command(
    input_dir: Annotated[Path | None, typer.Option("-i", "--input", help="Input directory \\[default: <workdir>/normalized].")] = None,
    output_dir: Annotated[Path | None, typer.Option("-o", "--output", help="Output directory \\[default: <workdir>/filtered].")] = None,
    workdir: WorkdirOpt = Path("work"),
    config_file: Annotated[Path | None, typer.Option("--config", help="TOML file; its \\[filter] table sets the rules (`--show-config` lists them).")] = None,
    show: Annotated[bool, typer.Option("--show-config", help="Print the effective config as TOML and exit.")] = False,
    languages: Annotated[str | None, config_opt("--languages", help="Comma-separated fastText codes to keep.", default=D.languages)] = None,
    stats_only: Annotated[bool | None, config_opt("--stats-only/--no-stats-only", help="Compute and record every rule's value; drop nothing.", default=D.stats_only)] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Also draw one histogram per rule (PNG) into this directory.")] = None,
    workers: WorkersOpt = 1,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    force: ForceOpt = False,
    verify_input: VerifyInputOpt = False,
) -> None:
    """Quality rules (Gopher, C4, FineWeb, BigScience, fastText language id); every drop says why."""
    from nonllama.pipeline.filter import check_language_codes, draw_report, run_filter

    codes = None
    if languages is not None:
        codes = [code.strip() for code in languages.split(",") if code.strip()]
        if not codes:
            raise ValueError(f"--languages {languages!r}: no language code given")
        check_language_codes(codes, f"--languages {languages}")
    config = resolve_config(FilterConfig, "filter", config_file, {"languages": codes, "stats_only": stats_only})
    if show:
        show_config("filter", config)
        return
    inp, out = stage_dirs(workdir, "filter", input_dir, output_dir)
    assert inp is not None
    with executor_for(executor, workers, ray_address) as runner:
        run = run_filter(inp, out, config, executor=runner, force=force, verify_input=verify_input, console=console)
    print_summary(run, "filter")  # with drops per reason and source, and line-cleaning counts
    if report is not None:
        written = draw_report(out, report, config)
        console.print(f"[green]filter[/]: {len(written)} histograms in {report}")

