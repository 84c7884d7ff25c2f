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
    config_opt,
    console,
    executor_for,
    print_summary,
    resolve_config,
    show_config,
    stage_dirs,
)
from nonllama.pipeline.dedup import DedupConfig

D = DedupConfig()  # the defaults, for the help text (an option left out is None: "not given")


@app.command()
def dedup(
    input_dir: Annotated[Path | None, typer.Option("-i", "--input", help="Input directory \\[default: <workdir>/filtered].")] = None,
    output_dir: Annotated[Path | None, typer.Option("-o", "--output", help="Output directory \\[default: <workdir>/deduped].")] = None,
    workdir: WorkdirOpt = Path("work"),
    config_file: Annotated[Path | None, typer.Option("--config", help="TOML file; its \\[dedup] table sets any option below.")] = None,
    show: Annotated[bool, typer.Option("--show-config", help="Print the effective config as TOML and exit.")] = False,
    threshold: Annotated[float | None, config_opt("--threshold", help="Jaccard similarity from which two documents are near duplicates.", default=D.threshold)] = None,
    num_perm: Annotated[int | None, config_opt("--num-perm", help="MinHash permutations (signature length), 2 to 1024.", default=D.num_perm)] = None,
    ngram: Annotated[int | None, config_opt("--ngram", help="Shingle size, 1 to 32: words for spaced text, characters for Chinese.", default=D.ngram)] = None,
    bands: Annotated[int | None, config_opt("--bands", help="LSH bands.", default="optimal for --threshold")] = None,
    rows: Annotated[int | None, config_opt("--rows", help="LSH rows per band.", default="optimal for --threshold")] = None,
    fp_weight: Annotated[float | None, config_opt("--fp-weight", help="Weight of false positives against false negatives when choosing bands/rows.", default=D.fp_weight)] = None,
    seed: Annotated[int | None, config_opt("--seed", help="Seed of the hash functions.", default=D.seed)] = None,
    exact: Annotated[bool | None, config_opt("--exact/--no-exact", help="Remove exact duplicates (case, whitespace, punctuation ignored).", default=D.exact)] = None,
    near: Annotated[bool | None, config_opt("--near/--no-near", help="Remove near duplicates (MinHash-LSH).", default=D.near)] = None,
    verify: Annotated[bool | None, config_opt("--verify/--no-verify", help="Confirm candidate pairs with the true Jaccard of their shingle sets; --no-verify trusts the MinHash estimate (slightly faster, precision and recall ~0.9 near the threshold).", default=D.verify)] = None,
    paragraphs: Annotated[bool | None, config_opt("--paragraphs/--no-paragraphs", help="Cut lines that recur in many kept documents (menus, banners, footers).", default=D.paragraphs)] = None,
    paragraph_max_docs: Annotated[int | None, config_opt("--paragraph-max-docs", help="With --paragraphs: a line in more documents than this is cut.", default=D.paragraph_max_docs)] = None,
    semantic: Annotated[bool | None, config_opt("--semantic/--no-semantic", help="After exact and near dedup, remove documents whose embedding is too close to a kept one's (SemDeDup: paraphrases); needs pip install -e '.\\[semantic]'.", default=D.semantic)] = None,
    embedder: Annotated[str | None, config_opt("--embedder", help="With --semantic: a sentence-transformers model directory or Hugging Face Hub id (all-MiniLM-L6-v2 reads English only; e.g. paraphrase-multilingual-MiniLM-L12-v2, BAAI/bge-m3 for other languages).", default=D.embedder)] = None,
    semantic_threshold: Annotated[float | None, config_opt("--semantic-threshold", help="With --semantic: the cosine similarity above which a document duplicates an earlier kept one.", default=D.semantic_threshold)] = None,
    semantic_clusters: Annotated[int | None, config_opt("--semantic-clusters", help="With --semantic: k-means clusters (0: one per ~1,000 documents, at most --semantic-sample / 39).", default=D.semantic_clusters)] = None,
    semantic_sample: Annotated[int | None, config_opt("--semantic-sample", help="With --semantic: embeddings k-means learns its centroids from.", default=D.semantic_sample)] = None,
    embed_batch: Annotated[int | None, config_opt("--embed-batch", help="With --semantic: texts the embedder takes at once.", default=D.embed_batch)] = None,
    show_clusters: Annotated[int, typer.Option("--show-clusters", min=0, help="Print the N largest clusters side by side (and, with --semantic, the N closest semantic pairs).")] = 0,
    workers: WorkersOpt = 1,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    force: ForceOpt = False,
    verify_input: VerifyInputOpt = False,
) -> None:
    """Remove exact and near-duplicate documents (MinHash-LSH), optionally repeated lines and semantic duplicates."""
    from nonllama.pipeline.dedup import largest_clusters, run_dedup
    from nonllama.pipeline.semantic import semantic_pairs

    given = dict(threshold=threshold, num_perm=num_perm, ngram=ngram, bands=bands, rows=rows, fp_weight=fp_weight,
                 seed=seed, exact=exact, near=near, verify=verify, paragraphs=paragraphs,
                 paragraph_max_docs=paragraph_max_docs, semantic=semantic, embedder=embedder,
                 semantic_threshold=semantic_threshold, semantic_clusters=semantic_clusters,
                 semantic_sample=semantic_sample, embed_batch=embed_batch)
    config = resolve_config(DedupConfig, "dedup", config_file, given)
    if show:
        show_config("dedup", config)
        return
    inp, out = stage_dirs(workdir, "dedup", input_dir, output_dir)
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
        *((("semantic duplicates", stats.get("semantic_duplicates", 0)),
           ("semantic clusters (k-means)", stats.get("semantic_clusters", 0)),
           ("largest semantic cluster", stats.get("semantic_cluster_sizes", {}).get("max", 0)))
          if "semantic_duplicates" in stats else ()),
        ("kept", run.manifest["rows_out"]),
    ):
        table.add_row(label, f"{value:,}")
    console.print(table)
    for cluster in largest_clusters(out, show_clusters):
        shown = Table(title=f"cluster of {cluster.removed.height + 1}: kept {cluster.kept_id}", show_lines=True)
        shown.add_column(f"kept {cluster.kept_id}", ratio=1, overflow="fold")
        texts = [_clip(cluster.kept_text)]
        for row in cluster.removed.head(3).iter_rows(named=True):
            similarity = (f"J~{row['jaccard']:.2f}" if row.get("jaccard") is not None
                          else f"cos {row['cosine']:.3f}" if row.get("cosine") is not None else "")
            shown.add_column(f"{row['id']}\n{row['drop_reason']}, {similarity}", ratio=1, overflow="fold")
            texts.append(_clip(row["text"]))
        shown.add_row(*texts)
        console.print(shown)
    for pair in semantic_pairs(out, show_clusters if "semantic_duplicates" in stats else 0):
        shown = Table(title=f"semantic duplicate, cosine {pair.cosine:.3f}", show_lines=True)
        shown.add_column(f"kept {pair.kept_id}", ratio=1, overflow="fold")
        shown.add_column(f"removed {pair.removed_id}", ratio=1, overflow="fold")
        shown.add_row(_clip(pair.kept_text), _clip(pair.removed_text))
        console.print(shown)


def _clip(text: str, chars: int = 400) -> str:
    return text if len(text) <= chars else text[:chars] + " …"
