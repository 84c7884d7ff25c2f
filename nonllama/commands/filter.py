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
    perplexity_run: Annotated[str | None, config_opt("--perplexity-run", help="Score documents with this run of `nonllama train` (a small model trained on clean text): perplexity and bits per byte.", default="none")] = None,
    perplexity_model: Annotated[str | None, config_opt("--perplexity-model", help="Or with this KenLM model (.arpa or .bin; pip install -e '.\\[kenlm]'), CCNet-style.", default="none")] = None,
    perplexity_tokenizer: Annotated[str | None, config_opt("--perplexity-tokenizer", help="The KenLM model's SentencePiece model.", default="<lang>.sp.model beside the model")] = None,
    max_perplexity: Annotated[float | None, config_opt("--max-perplexity", help="Drop documents above this perplexity; 0: 1400 for a KenLM model, none for a run.", default=D.max_perplexity)] = None,
    perplexity_buckets: Annotated[str | None, config_opt("--perplexity-buckets", help="Two quantiles, e.g. 0.33,0.66: a ppl_bucket column (head/middle/tail per source) instead of dropping.", default="none")] = None,
    perplexity_batch_tokens: Annotated[int | None, config_opt("--perplexity-batch-tokens", help="Padded tokens per forward pass of a run's model.", default=D.perplexity_batch_tokens)] = None,
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
    buckets = None
    if perplexity_buckets is not None:
        try:
            buckets = [float(q) for q in perplexity_buckets.split(",") if q.strip()]
        except ValueError:
            raise ValueError(f"--perplexity-buckets {perplexity_buckets!r}: expected quantiles like 0.33,0.66") from None
    config = resolve_config(FilterConfig, "filter", config_file, {
        "languages": codes, "stats_only": stats_only, "perplexity_run": perplexity_run,
        "perplexity_model": perplexity_model, "perplexity_tokenizer": perplexity_tokenizer,
        "max_perplexity": max_perplexity, "perplexity_buckets": buckets,
        "perplexity_batch_tokens": perplexity_batch_tokens})
    if show:
        show_config("filter", config)
        return
    inp, out = stage_dirs(workdir, "filter", input_dir, output_dir)
    assert inp is not None
    with executor_for(executor, workers, ray_address) as runner:
        run = run_filter(inp, out, config, executor=runner, force=force, verify_input=verify_input, console=console)
    print_summary(run, "filter")  # with drops per reason and source, and line-cleaning counts
    if config.perplexity and not run.up_to_date:
        print_perplexity_summary(run.manifest, config)
    if report is not None:
        written = draw_report(out, report, config)
        console.print(f"[green]filter[/]: {len(written)} histograms in {report}")



def print_perplexity_summary(manifest: dict, config: FilterConfig) -> None:
    """What the perplexity rule did: its threshold and drops, the bucket cut points, or that it
    only recorded values."""
    limit = config.effective_max_perplexity()
    if config.perplexity_buckets:
        for source, b in manifest.get("perplexity_buckets", {}).items():
            cuts = ", ".join(f"{c:,.1f}" for c in b["cut_points"])
            docs = ", ".join(f"{name} {n:,}" for name, n in b["documents"].items())
            console.print(f"[green]filter[/]: perplexity buckets of {source}: cut at {cuts} ({docs})", highlight=False,
                          soft_wrap=True)
    if limit is not None:
        dropped = manifest.get("drop_reasons", {}).get("perplexity", 0)
        console.print(f"[green]filter[/]: perplexity above {limit:g}: {dropped:,} documents "
                      f"{'would be ' if config.stats_only else ''}dropped", highlight=False)
    elif not config.perplexity_buckets:
        console.print("[yellow]filter[/]: perplexity and bits per byte recorded; nothing dropped by this rule "
                      "(a run's perplexity scale depends on its tokenizer: pick --max-perplexity from the "
                      "--report histogram, or use --perplexity-buckets)", highlight=False, soft_wrap=True)
