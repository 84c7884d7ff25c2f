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
    console,
    executor_for,
    load_stage_config,
    print_config,
    print_summary,
    stage_dirs,
)


@app.command("filter")
def filter_command(
    input_dir: Annotated[Path | None, typer.Option("-i", "--input", help="Input directory [default: <workdir>/normalized].")] = None,
    output_dir: Annotated[Path | None, typer.Option("-o", "--output", help="Output directory [default: <workdir>/filtered].")] = None,
    workdir: WorkdirOpt = Path("work"),
    config_file: Annotated[Path | None, typer.Option("--config", help="TOML file; its [filter] table sets the rules.")] = None,
    show_config: Annotated[bool, typer.Option("--show-config", help="Print the effective config as TOML and exit.")] = False,
    languages: Annotated[str | None, typer.Option("--languages", help="Comma-separated fastText codes to keep [default: en,zh].")] = None,
    stats_only: Annotated[bool, typer.Option("--stats-only", help="Compute and record every rule's value; drop nothing.")] = False,
    report: Annotated[Path | None, typer.Option("--report", help="Also draw one histogram per rule (PNG) into this directory.")] = None,
    workers: WorkersOpt = 1,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    force: ForceOpt = False,
    verify_input: VerifyInputOpt = False,
) -> None:
    """Quality rules (Gopher, C4, FineWeb, BigScience, fastText language id); every drop says why."""
    from nonllama.pipeline.filter import (
        check_language_codes,
        config_from_dict,
        config_to_dict,
        draw_report,
        run_filter,
    )

    values = load_stage_config(config_file, "filter")
    if languages is not None:
        values["languages"] = [code.strip() for code in languages.split(",") if code.strip()]
        if not values["languages"]:
            raise ValueError(f"--languages {languages!r}: no language code given")
        check_language_codes(values["languages"], f"--languages {languages}")
    if stats_only:
        values["stats_only"] = True
    config = config_from_dict(values)
    if show_config:
        print_config("filter", config_to_dict(config))
        return
    inp, out = stage_dirs(workdir, "normalized", "filtered", input_dir, output_dir)
    assert inp is not None
    with executor_for(executor, workers, ray_address) as runner:
        run = run_filter(inp, out, config, executor=runner, force=force, verify_input=verify_input, console=console)
    print_summary(run, "filter")  # with drops per reason and source, and line-cleaning counts
    if report is not None:
        written = draw_report(out, report, config)
        console.print(f"[green]filter[/]: {len(written)} histograms in {report}")

