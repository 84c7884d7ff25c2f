"""`nonllama report`: options only; the work is in nonllama.report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nonllama.cli import WorkdirOpt, app, console


@app.command()
def report(
    workdir: WorkdirOpt = Path("work"),
    output: Annotated[Path, typer.Option("-o", "--output", help="report.html (one self-contained file) or report.md (figures in report_files/).")] = Path("report.html"),
    run: Annotated[list[str] | None, typer.Option("--run", help="Runs under <workdir>/runs to show (repeat) [default: all].")] = None,
) -> None:
    """One page on the whole funnel: documents, drops, rule values, duplicates, tokens, training, samples."""
    from nonllama.report import build_report

    summary = build_report(workdir, output, runs=run)
    for check in summary.checks:
        if not check.ok:
            console.print(f"[bold red]does not add up:[/] {check.what}", highlight=False, soft_wrap=True)
    status = "[green]the funnel adds up[/]" if summary.adds_up else "[red]the funnel does not add up[/]"
    console.print(f"[green]report[/]: {summary.path} ({summary.sections} sections, {summary.figures} figures, "
                  f"runs: {', '.join(summary.runs) or 'none'}); {status}", highlight=False, soft_wrap=True)
