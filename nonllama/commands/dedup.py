"""`nonllama dedup`: options only; the work is in nonllama.pipeline.dedup."""

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
    print_summary,
    stage_dirs,
)


@app.command()
def dedup(
    input_dir: Annotated[Path | None, typer.Option("-i", "--input", help="Input directory [default: <workdir>/filtered].")] = None,
    output_dir: Annotated[Path | None, typer.Option("-o", "--output", help="Output directory [default: <workdir>/deduped].")] = None,
    workdir: WorkdirOpt = Path("work"),
    threshold: Annotated[float, typer.Option("--threshold", help="Jaccard similarity from which two documents are near duplicates.")] = 0.8,
    num_perm: Annotated[int, typer.Option("--num-perm", help="MinHash permutations (signature length), 2 to 1024.")] = 128,
    ngram: Annotated[int, typer.Option("--ngram", help="Shingle size, 1 to 32: words for spaced text, characters for Chinese.")] = 3,
    bands: Annotated[int | None, typer.Option("--bands", help="LSH bands [default: optimal for --threshold].")] = None,
    rows: Annotated[int | None, typer.Option("--rows", help="LSH rows per band [default: optimal for --threshold].")] = None,
    fp_weight: Annotated[float, typer.Option("--fp-weight", help="Weight of false positives against false negatives when choosing bands/rows.")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the hash functions.")] = 1,
    exact: Annotated[bool, typer.Option("--exact/--no-exact", help="Remove exact duplicates (case, whitespace, punctuation ignored).")] = True,
    near: Annotated[bool, typer.Option("--near/--no-near", help="Remove near duplicates (MinHash-LSH).")] = True,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Confirm candidate pairs with the true Jaccard of their shingle sets; --no-verify trusts the MinHash estimate (slightly faster, precision and recall ~0.9 near the threshold).")] = True,
    paragraphs: Annotated[bool, typer.Option("--paragraphs", help="Cut lines that recur in many kept documents (menus, banners, footers).")] = False,
    paragraph_max_docs: Annotated[int, typer.Option("--paragraph-max-docs", help="With --paragraphs: a line in more documents than this is cut.")] = 5,
    show_clusters: Annotated[int, typer.Option("--show-clusters", min=0, help="Print the N largest clusters side by side.")] = 0,
    workers: WorkersOpt = 1,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    force: ForceOpt = False,
    verify_input: VerifyInputOpt = False,
) -> None:
    """Remove exact and near-duplicate documents (MinHash-LSH) and, optionally, repeated lines."""
    from nonllama.pipeline.dedup import DedupConfig, largest_clusters, run_dedup

    config = DedupConfig(
        threshold=threshold, num_perm=num_perm, ngram=ngram, bands=bands, rows=rows, fp_weight=fp_weight,
        seed=seed, exact=exact, near=near, verify=verify, paragraphs=paragraphs,
        paragraph_max_docs=paragraph_max_docs,
    )
    inp, out = stage_dirs(workdir, "filtered", "deduped", input_dir, output_dir)
    assert inp is not None
    with executor_for(executor, workers, ray_address) as runner:
        run = run_dedup(inp, out, config, executor=runner, force=force, verify_input=verify_input, console=console)
    print_summary(run, "dedup")
    stats = run.manifest.get("dedup", {})
    table = Table(title="dedup", title_justify="left")
    table.add_column("documents")
    table.add_column("count", justify="right")
    for label, value in (
        ("documents in", run.manifest["rows_in"]),
        ("exact duplicates", stats.get("exact_duplicates", 0)),
        ("near duplicates", stats.get("near_duplicates", 0)),
        ("clusters", stats.get("clusters", 0)),
        ("largest cluster", stats.get("largest_cluster", 0)),
        ("paragraphs cut", stats.get("paragraphs_cut", 0)),
        ("emptied by cuts", stats.get("empty_after_paragraph_dedup", 0)),
        ("kept", run.manifest["rows_out"]),
    ):
        table.add_row(label, f"{value:,}")
    console.print(table)
    for cluster in largest_clusters(out, show_clusters):
        shown = Table(title=f"cluster of {cluster.removed.height + 1}: kept {cluster.kept_id}", show_lines=True)
        shown.add_column(f"kept {cluster.kept_id}", ratio=1, overflow="fold")
        texts = [_clip(cluster.kept_text)]
        for row in cluster.removed.head(3).iter_rows(named=True):
            shown.add_column(f"{row['id']}\n{row['drop_reason']}, J~{row['jaccard']:.2f}", ratio=1, overflow="fold")
            texts.append(_clip(row["text"]))
        shown.add_row(*texts)
        console.print(shown)


def _clip(text: str, chars: int = 400) -> str:
    return text if len(text) <= chars else text[:chars] + " …"
