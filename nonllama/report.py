"""`nonllama report`: the whole funnel of a work directory on one page.

    manifests of every stage + filter values + dedup removals + runs/*/metrics.jsonl
        -> sections of blocks (text, tables, figures) -> report.html (self-contained)
                                                       or report.md + report_files/*.png

Nothing here recomputes a stage: every figure comes from what the stages wrote. The funnel
checks the contract on the way: each stage read what the one before it kept, kept + removed =
read, and every record download read ends up removed by a named stage or packed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from nonllama import __version__
from nonllama.pipeline import stages
from nonllama.pipeline.io import atomic_path, atomic_write_text, list_parts, read_manifest
from nonllama.train.metrics import (
    SAMPLES_NAME,
    last_metrics,
    loss_figure,
    pyplot,
    read_metrics,
    speed_metrics,
)

# (directory under the workdir, stage name): the document stages, in funnel order
DOCUMENT_STAGES = [(s.directory, s.name) for s in stages.FUNNEL if s.documents]
TOKENIZER_DIR, PACKED_DIR = stages.stage("train-tokenizer").directory, stages.stage("pack").directory
RUNS_DIR = stages.RUNS_DIR
EXCERPT_CHARS = 240


# ------------------------------------------------------------------------------ blocks


@dataclass
class Table:
    header: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    png: bytes
    name: str  # file name in the Markdown form
    caption: str = ""


@dataclass
class Text:
    text: str
    pre: bool = False  # shown as is (generated text, excerpts)


@dataclass
class Section:
    title: str
    blocks: list[Table | Figure | Text] = field(default_factory=list)

    def add(self, block: Table | Figure | Text) -> None:
        self.blocks.append(block)


@dataclass
class Check:
    """One line of the funnel's accounting: what should hold and whether it does."""
    what: str
    ok: bool


# ------------------------------------------------------------------------------ helpers


def _n(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else ""


def _excerpt(text: str | None, limit: int = EXCERPT_CHARS) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[:limit].rstrip() + " …"


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=80)
    pyplot().close(fig)
    return buffer.getvalue()


# ------------------------------------------------------------------------------ the funnel


def funnel_section(workdir: Path) -> tuple[Section, list[Check]]:
    """Documents and characters in and out of every stage, per stage and per source, and the checks."""
    section = Section("Funnel")
    manifests = {stage: read_manifest(workdir / d) for d, stage in DOCUMENT_STAGES}
    packed = read_manifest(workdir / PACKED_DIR)
    checks: list[Check] = []
    rows = []
    previous: dict | None = None
    for directory, stage in DOCUMENT_STAGES:
        m = manifests[stage]
        if m is None:
            rows.append([stage, f"{directory}/", "not run", "", "", "", "", ""])
            previous = None
            continue
        removed = m.get("rows_removed", m["rows_in"] - m["rows_out"])
        rows.append([stage, f"{directory}/", _n(m["rows_in"]), _n(m["rows_out"]), _n(removed),
                     _share(removed, m["rows_in"]), _n(m.get("chars_in")), _n(m.get("chars_out"))])
        checks.append(Check(f"{stage}: kept {m['rows_out']:,} + removed {removed:,} = read {m['rows_in']:,}",
                            m["rows_out"] + removed == m["rows_in"]))
        if previous is not None:
            checks.append(Check(f"{stage} read the {previous['rows_out']:,} documents {previous['stage']} kept "
                                f"(it read {m['rows_in']:,})", previous["rows_out"] == m["rows_in"]))
            stale = m.get("input", {}).get("digest") != previous.get("output_digest")
            checks.append(Check(f"{stage} ran on the current output of {previous['stage']}", not stale))
        previous = m
    if packed is not None:
        tokens = packed.get("tokens", {})
        docs = packed.get("docs", {})
        rows.append(["pack", f"{PACKED_DIR}/", _n(packed["rows_in"]),
                     f"{_n(docs.get('train'))} train + {_n(docs.get('val'))} val", "", "",
                     "", f"{_n(tokens.get('train'))} + {_n(tokens.get('val'))} tokens"])
        dedup = manifests["dedup"]
        if dedup is not None:
            checks.append(Check(f"pack read the {dedup['rows_out']:,} documents dedup kept (it read {packed['rows_in']:,})",
                                dedup["rows_out"] == packed["rows_in"]))
    section.add(Table(["stage", "output", "docs in", "docs out", "removed", "removed share", "chars in", "chars out"],
                      rows))

    # every record download read: removed by one stage or packed
    download = manifests["download"]
    if download is not None and all(manifests.values()) and packed is not None:
        removed = {stage: m.get("rows_removed", 0) for stage, m in manifests.items()}
        total = sum(removed.values()) + packed["rows_in"]
        parts = " + ".join(f"{n:,} {'quarantined' if s == 'download' else 'removed by ' + s}" for s, n in removed.items())
        checks.append(Check(f"download read {download['rows_in']:,} records = {parts} + {packed['rows_in']:,} packed",
                            total == download["rows_in"]))
    section.add(Table(["check", "holds"], [[c.what, "yes" if c.ok else "NO"] for c in checks],
                      caption="accounting: every document read is kept or removed with a reason"))

    # per source: documents kept after each stage
    sources: list[str] = []
    for m in manifests.values():
        for s in (m or {}).get("per_source", {}):
            if s not in sources:
                sources.append(s)
    if sources:
        header = ["source", "read"] + [stage for _, stage in DOCUMENT_STAGES if manifests[stage]]
        if packed is not None:
            header.append("packed docs (train + val)")
        table = []
        for s in sources:
            first = next((m for m in manifests.values() if m), {})
            row = [s, _n(first.get("per_source", {}).get(s, {}).get("rows_in", 0))]
            row += [_n(m.get("per_source", {}).get(s, {}).get("rows_out", 0)) for m in manifests.values() if m]
            if packed is not None:
                p = packed.get("per_source", {}).get(s, {})
                row.append(_n(p.get("train_docs", 0) + p.get("val_docs", 0)))
            table.append(row)
        section.add(Table(header, table, caption="documents per source after each stage"))
    return section, checks


def drops_section(workdir: Path) -> Section:
    """Why documents were removed: per stage and reason, with shares and the sources they hit."""
    section = Section("Drop reasons")
    download = read_manifest(stages.directory(workdir, "download"))
    read_total = download["rows_in"] if download else 0
    rows = []
    for directory, stage in DOCUMENT_STAGES:
        m = read_manifest(workdir / directory)
        if m is None:
            continue
        by_source = m.get("drop_reasons_per_source", {})
        for reason, n in sorted(m.get("drop_reasons", {}).items(), key=lambda kv: -kv[1]):
            hit = sorted(((src, r.get(reason, 0)) for src, r in by_source.items() if r.get(reason)), key=lambda x: -x[1])
            rows.append([stage, reason, _n(n), _share(n, m["rows_in"]), _share(n, read_total),
                         ", ".join(f"{src} {k:,}" for src, k in hit[:4])])
        for key, value in m.get("stage_counts", {}).items():
            if value:
                section.add(Text(f"{stage}: {key.replace('_', ' ')}: {value:,}"))
    if rows:
        section.blocks.insert(0, Table(["stage", "reason", "docs", "share of stage input", "share of all read",
                                        "sources"], rows))
    else:
        section.add(Text("No document was removed."))
    return section


def _manifest_or_say(section: Section, directory: Path, stage: str) -> dict | None:
    """The stage's manifest, or None with a line in the section saying the stage has not run."""
    m = read_manifest(directory)
    if m is None:
        section.add(Text(f"{stage} has not run."))
    return m


def filter_section(workdir: Path) -> Section:
    """One histogram per filter rule value, its thresholds marked (the filter stage's own drawing)."""
    import tempfile

    from nonllama.pipeline.filter import config_from_dict, draw_report

    section = Section("Filter rule values")
    filtered = stages.directory(workdir, "filter")
    if (m := _manifest_or_say(section, filtered, "filter")) is None:
        return section
    note = "Every rule's value over kept and rejected documents; dashed lines: thresholds."
    if m.get("config", {}).get("perplexity_run") or m.get("config", {}).get("perplexity_model"):
        note += (" Perplexity under the reference model: one histogram per source on a log axis, its threshold "
                 "or its head / middle / tail cut points marked (documents other rules dropped are not scored).")
    section.add(Text(note))
    with tempfile.TemporaryDirectory(prefix="nonllama-report-") as tmp:
        for path in draw_report(filtered, Path(tmp), config_from_dict(m["config"])):
            section.add(Figure(path.read_bytes(), f"filter-{path.name}"))
    return section


def line_cleaning_section(workdir: Path, examples: int = 3) -> Section:
    """What the filter's line cleaning cut from the documents it kept: per reason, the lines and
    documents, and the lines it cut most often (from the `lines_cut` column of `filtered/`)."""
    from nonllama.pipeline.filter import LINES_CUT_COLUMN

    section = Section("Lines cut by line cleaning")
    filtered = stages.directory(workdir, "filter")
    if (m := _manifest_or_say(section, filtered, "filter")) is None:
        return section
    if not m.get("config", {}).get("c4_line_cleaning", True):
        section.add(Text("Line cleaning was off (`c4_line_cleaning = false`)."))
        return section
    # an empty input part gives an output part with the input's columns: those have no cuts
    parts = [p for p in list_parts(filtered) if LINES_CUT_COLUMN in pl.read_parquet_schema(p)]
    if not parts and m["rows_out"]:
        section.add(Text(f"{filtered} has no `{LINES_CUT_COLUMN}` column (written by an older nonllama): "
                         "rerun `nonllama filter --force` to see the lines it cuts."))
        return section
    if not parts:
        section.add(Text("filter kept no document."))
        return section
    # one row per cut line: the document (a row number over the parts), the line, its reason
    cut = (
        pl.concat([pl.scan_parquet(p).select(LINES_CUT_COLUMN) for p in parts])
        .with_row_index("doc")
        .explode(LINES_CUT_COLUMN)
        .drop_nulls(LINES_CUT_COLUMN)
        .unnest(LINES_CUT_COLUMN)
    )
    per_reason, per_line = pl.collect_all([
        cut.group_by("reason").agg(pl.len().alias("lines"), pl.col("doc").n_unique().alias("docs")),
        cut.group_by("reason", "line").agg(pl.len().alias("count")),
    ])
    if per_reason.height == 0:
        section.add(Text(f"Line cleaning cut no line from the {m['rows_out']:,} documents kept."))
        return section
    rows = []
    for reason, lines, docs in per_reason.sort(["lines", "reason"], descending=[True, False]).iter_rows():
        common = (per_line.filter(pl.col("reason") == reason)
                  .sort(["count", "line"], descending=[True, False]).head(examples))
        for k, (line, n) in enumerate(common.select("line", "count").iter_rows()):
            head = [reason, _n(lines), _n(docs)] if k == 0 else ["", "", ""]
            rows.append([*head, _excerpt(line, 120), _n(n)])
    section.add(Table(["reason", "lines cut", "documents", "line (most often cut first)", "times cut"], rows,
                      caption=f"lines cut from the {m['rows_out']:,} documents kept; every cut line is in the "
                              f"`{LINES_CUT_COLUMN}` column of {filtered}"))
    return section


def clusters_section(workdir: Path, top: int = 5, shown: int = 3) -> Section:
    """The largest groups of duplicates: the document kept and a few it replaced."""
    section = Section("Largest duplicate clusters")
    deduped = stages.directory(workdir, "dedup")
    if (m := _manifest_or_say(section, deduped, "dedup")) is None:
        return section
    stats = m.get("dedup", {})
    section.add(Table(["exact duplicates", "near duplicates", "clusters", "largest cluster", "paragraphs cut"],
                      [[_n(stats.get(k)) for k in ("exact_duplicates", "near_duplicates", "clusters",
                                                   "largest_cluster", "paragraphs_cut")]]))
    removed_parts = list_parts(deduped / "removed")
    if not removed_parts:
        return section
    if m.get("config", {}).get("semantic"):
        _semantic_pairs(section, deduped, stats, m["config"], shown)
    similarity = (pl.coalesce("jaccard", "cosine") if "cosine" in pl.read_parquet_schema(removed_parts[0])
                  else pl.col("jaccard")).alias("jaccard")
    removed = (pl.scan_parquet(removed_parts).filter(pl.col("duplicate_of").is_not_null())
               .select("id", "duplicate_of", similarity, "drop_reason", "text").collect())
    if removed.height == 0:
        return section
    biggest = (removed.group_by("duplicate_of").len().sort(["len", "duplicate_of"], descending=[True, False]).head(top))
    kept_ids = biggest["duplicate_of"].to_list()
    kept = (pl.scan_parquet(list_parts(deduped)).filter(pl.col("id").is_in(kept_ids)).select("id", "text").collect()
            if list_parts(deduped) else pl.DataFrame({"id": [], "text": []}))
    kept_text = dict(zip(kept["id"].to_list(), kept["text"].to_list(), strict=True))
    for kept_id, size in biggest.iter_rows():
        members = removed.filter(pl.col("duplicate_of") == kept_id).sort("jaccard", descending=True)
        rows = [["kept", kept_id, "", _excerpt(kept_text.get(kept_id))]]
        for r in members.head(shown).iter_rows(named=True):
            rows.append([r["drop_reason"], r["id"], f"{r['jaccard']:.3f}" if r["jaccard"] is not None else "",
                         _excerpt(r["text"])])
        more = size - min(size, shown)
        section.add(Table(["", "id", "Jaccard (cosine)" if m.get("config", {}).get("semantic") else "Jaccard", "text"], rows,
                          caption=f"{size + 1} documents, {size} removed" + (f" ({more} more not shown)" if more else "")))
    return section


def _semantic_pairs(section: Section, deduped: Path, stats: dict, config: dict, shown: int) -> None:
    """Semantic dedup: its clusters, and the removed documents beside the kept ones they repeat,
    the closest pairs and those nearest the threshold (where to look when choosing it)."""
    from nonllama.pipeline.semantic import semantic_pairs

    sizes = stats.get("semantic_cluster_sizes", {})
    section.add(Table(["semantic duplicates", "clusters (k-means)", "cluster size min / median / max", "threshold"],
                      [[_n(stats.get("semantic_duplicates")), _n(stats.get("semantic_clusters")),
                        f"{_n(sizes.get('min'))} / {_n(sizes.get('median'))} / {_n(sizes.get('max'))}",
                        f"cosine > {config.get('semantic_threshold')}"]]))
    for title, borderline in (("closest", False), ("nearest the threshold", True)):
        pairs = semantic_pairs(deduped, shown, borderline=borderline)
        if pairs:
            section.add(Table(["cosine", "kept", "removed as semantic_duplicate"],
                              [[f"{p.cosine:.3f}", f"{p.kept_id}: {_excerpt(p.kept_text)}",
                                f"{p.removed_id}: {_excerpt(p.removed_text)}"] for p in pairs],
                              caption=f"semantic duplicates, {title}"))


def tokens_section(workdir: Path) -> Section:
    """Tokenizer compression per source and language; tokens per split and source after pack."""
    section = Section("Tokenizer and tokens")
    tok = read_manifest(workdir / TOKENIZER_DIR)
    if tok is not None:
        section.add(Text(f"{tok.get('config', {}).get('model_type', '')} tokenizer, {tok.get('vocab_size', 0):,} pieces, "
                         f"trained on {tok.get('sample', {}).get('docs', 0):,} documents "
                         f"({tok.get('sample', {}).get('bytes', 0) / 1e6:.1f} MB)"))
        compression = tok.get("compression", {})
        for key, title in (("by_source", "source"), ("by_lang", "language")):
            rows = [[name, _n(v["docs"]), _n(v["chars"]), _n(v["tokens"]), f"{v['chars_per_token']:.2f}",
                     f"{v['bytes_per_token']:.2f}"] for name, v in compression.get(key, {}).items()]
            if rows:
                section.add(Table([title, "held-out docs", "chars", "tokens", "chars/token", "bytes/token"], rows,
                                  caption=f"compression on held-out documents, per {title}"))
    packed = read_manifest(workdir / PACKED_DIR)
    if packed is not None:
        rows = [[s, _n(v.get("train_docs")), _n(v.get("mixed_train_tokens", v.get("train_tokens"))),
                 _n(v.get("val_docs")), _n(v.get("val_tokens")), f"{v.get('repeat_factor', 1):.2f}",
                 f"{v.get('train_share', 0):.1%}"] for s, v in packed.get("per_source", {}).items()]
        shards = packed.get("shards")
        layout = (f"{len(shards.get('train', [])):,} shards per split" if isinstance(shards, dict)
                  else "the layout before shards: rerun `nonllama pack`")
        section.add(Table(["source", "train docs", "train tokens", "val docs", "val tokens", "repeat", "train share"],
                          rows, caption=f"packed/ ({packed.get('dtype')}, vocab {packed.get('vocab_size', 0):,}, {layout})"))
    if tok is None and packed is None:
        section.add(Text("train-tokenizer and pack have not run."))
    return section


# ------------------------------------------------------------------------------ training


def run_section(run: Path) -> Section:
    """One training run: its config, last metrics, curves and the samples saved beside it."""
    section = Section(f"Training run {run.name}")
    records = read_metrics(run)
    config_path = run / "config.toml"
    if config_path.exists():
        import tomllib

        cfg = tomllib.loads(config_path.read_text(encoding="utf-8")).get("train", {})
        keys = ("preset", "dim", "n_layers", "n_heads", "n_kv_heads", "seq_len", "batch_size", "grad_accum",
                "lr", "schedule", "max_steps", "max_tokens", "seed")
        section.add(Table(["option", "value"], [[k, _n(cfg[k])] for k in keys if k in cfg], caption="config.toml"))
    train = [r for r in records if r["split"] == "train"]
    if not train:
        section.add(Text("No metrics yet."))
        return section
    section.add(Table(["metric", "last value"], [list(row) for row in last_metrics(records, speed=False)]
                      + [list(row) for row in speed_metrics(records)]))

    fig = loss_figure(records)
    section.add(Figure(_png(fig), f"{run.name}-loss.png", "train and validation loss against tokens"
                       + (", model FLOPs utilization per step below" if any("mfu" in r for r in train) else "")))
    fig, (lr_ax, norm_ax) = pyplot().subplots(1, 2, figsize=(9, 3))
    steps = [r["step"] for r in train]
    lr_ax.plot(steps, [r["lr"] for r in train])
    lr_ax.set_title("learning rate")
    lr_ax.set_xlabel("step")
    norm_ax.plot(steps, [r["grad_norm"] if r["grad_norm"] is not None and math.isfinite(r["grad_norm"]) else float("nan")
                         for r in train], linewidth=1)
    norm_ax.set_title("gradient norm (before clipping)")
    norm_ax.set_xlabel("step")
    for a in (lr_ax, norm_ax):
        a.grid(alpha=0.3)
    section.add(Figure(_png(fig), f"{run.name}-lr-gradnorm.png", "learning rate and gradient norm per step"))

    samples_path = run / SAMPLES_NAME
    if samples_path.exists():
        saved = json.loads(samples_path.read_text(encoding="utf-8"))
        settings = saved.get("settings", {})
        section.add(Text("Sample generations (" + ", ".join(f"{k} {v}" for k, v in settings.items()) + f"), "
                         f"from {saved.get('checkpoint', 'the latest checkpoint')}:"))
        for sample in saved.get("samples", []):
            section.add(Text(f"[{sample['prompt']}]{sample['completion']}", pre=True))
    else:
        section.add(Text(f"No saved generations: `nonllama generate --run {run} --save` writes them "
                         f"(`make all` does)."))
    return section


# ------------------------------------------------------------------------------ evaluation


def evaluation_section(runs: list[Path]) -> Section:
    """What `nonllama eval` saved under the runs (<run>/eval/*.json): per data, bits per byte per
    source for each run side by side, and each evaluation's totals and settings."""
    from nonllama.eval import checkpoint_state, find_results

    section = Section("Evaluation")
    found = [(run, path, result) for run in runs for path, result in find_results(run)]
    if not found:
        section.add(Text("No evaluation saved: `nonllama eval --run RUN [DATA ...]` writes <run>/eval/<data>.json."))
        return section
    section.add(Text("Bits per byte: the summed negative log-likelihood in bits of every scored token (the text's, "
                     "and each document's EOS unless evaluated with --no-eos) over the UTF-8 bytes of the text: "
                     "comparable across tokenizers; lower is better."))
    by_data: dict[str, list[tuple[Path, dict]]] = {}
    for run, path, result in found:
        by_data.setdefault(path.stem, []).append((run, result))
    for name, entries in by_data.items():
        sources: list[str] = []
        for _, result in entries:
            sources += [s for s in result["sources"] if s not in sources]
        header = ["source"] + [f"{run.name} (step {result.get('step')}"
                               f"{', stale' if checkpoint_state(result) == 'stale' else ''})" for run, result in entries]
        rows = [[s, *(_bpb(result["sources"].get(s)) for _, result in entries)] for s in sources]
        rows.append(["total", *(_bpb(result.get("total")) for _, result in entries)])
        specs = "; ".join(d.get("spec") or f"the run's own {d.get('name')}" for d in entries[0][1].get("data", []))
        section.add(Table(header, rows, caption=f"bits per byte on {name} ({specs})"))
    rows = []
    for run, path, result in found:
        t, s = result.get("total", {}), result.get("settings", {})
        rows.append([run.name, path.name, _n(result.get("step")), _n(t.get("docs")), _n(t.get("tokens")),
                     _n(t.get("bytes")), _n(t.get("loss")), _n(t.get("perplexity")), _bpb(t), _pct(t.get("top1")),
                     _pct(t.get("top5")), f"{s.get('context')}/{s.get('stride')}", s.get("quantize") or "",
                     checkpoint_state(result)])
    section.add(Table(["run", "file", "step", "docs", "tokens", "bytes", "loss", "perplexity", "bits/byte", "top-1",
                       "top-5", "context/stride", "quantized", "checkpoint"], rows,
                      caption="every evaluation, in total; checkpoint: the run's latest, an older one, or stale "
                              "(gone or changed since: the run was trained again)"))
    return section


def _bpb(metrics: dict | None) -> str:
    value = (metrics or {}).get("bits_per_byte")
    return "" if value is None else f"{value:.4f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


# ------------------------------------------------------------------------------ rendering


_NUMBER = re.compile(r"[-+]?[\d,]*\.?\d+(?:e[-+]?\d+)?%?")


def _html_cell(value: Any) -> str:
    text = _n(value)
    if text == "NO":
        return "<td class='bad'>NO</td>"
    return f"<td class='num'>{text}</td>" if _NUMBER.fullmatch(text) else f"<td>{html.escape(text)}</td>"


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(map(_html_cell, row)) + "</tr>" for row in t.rows)
    caption = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; max-width: 640px; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 4px 0; }
.figures { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; } figcaption { font-size: 0.8em; color: #555; }
pre { background: #f7f7f7; padding: 8px; white-space: pre-wrap; border-left: 3px solid #8ab; }
.bad { color: #b00; font-weight: 700; }
"""


def render_html(title: str, subtitle: str, sections: list[Section]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        figures: list[str] = []
        for b in s.blocks + [Text("")]:  # the sentinel flushes trailing figures
            if isinstance(b, Figure):
                data = base64.b64encode(b.png).decode()
                figures.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(b.caption)}'>"
                               f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
                continue
            if figures:
                parts.append("<div class='figures'>" + "".join(figures) + "</div>")
                figures = []
            if isinstance(b, Table):
                parts.append(_html_table(b))
            elif b.text:
                parts.append(f"<pre>{html.escape(b.text)}</pre>" if b.pre else f"<p>{html.escape(b.text)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_cell(value: Any) -> str:
    return _n(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, subtitle: str, sections: list[Section], files_dir: Path, files_link: str) -> str:
    lines = [f"# {title}", "", subtitle, ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Table):
                if b.caption:
                    lines += [f"**{b.caption}**", ""]
                lines.append("| " + " | ".join(map(_md_cell, b.header)) + " |")
                lines.append("|" + "---|" * len(b.header))
                lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b.rows]
                lines.append("")
            elif isinstance(b, Figure):
                with atomic_path(files_dir / b.name) as tmp:
                    tmp.write_bytes(b.png)
                lines += [f"![{b.caption}]({files_link}/{b.name})", ""]
            elif b.pre:
                lines += ["```text", b.text, "```", ""]
            else:
                lines += [b.text, ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the report


@dataclass
class ReportSummary:
    path: Path
    sections: int
    figures: int
    checks: list[Check]
    runs: list[str]

    @property
    def adds_up(self) -> bool:
        return all(c.ok for c in self.checks)


def build_report(workdir: Path, output: Path, runs: list[str] | None = None) -> ReportSummary:
    """Write the report of `workdir` to `output` (.html: one self-contained file; .md: Markdown
    with its figures in `<name>_files/`)."""
    workdir, output = Path(workdir), Path(output)
    if not workdir.is_dir():
        raise FileNotFoundError(f"--workdir {workdir}: no such directory")
    if output.suffix.lower() not in (".html", ".htm", ".md"):
        raise ValueError(f"-o {output}: the report is .html or .md")
    if not any(read_manifest(workdir / d) for d, _ in DOCUMENT_STAGES):
        raise FileNotFoundError(f"--workdir {workdir}: no finished stage found (run `make all` or `nonllama download`)")
    funnel, checks = funnel_section(workdir)
    sections = [funnel, drops_section(workdir), line_cleaning_section(workdir), filter_section(workdir),
                clusters_section(workdir), tokens_section(workdir)]
    runs_dir = workdir / RUNS_DIR
    available = sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    for name in runs or []:
        if name not in available:
            raise FileNotFoundError(f"--run {name}: no run {runs_dir / name} (runs here: {', '.join(available) or 'none'})")
    chosen = runs or available
    sections += [run_section(runs_dir / name) for name in chosen]
    sections.append(evaluation_section([runs_dir / name for name in chosen]))

    title = f"nonllama report: {workdir}"
    subtitle = f"nonllama {__version__}; every figure from the stages' manifests and outputs."
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".md":
        files_dir = output.with_name(f"{output.stem}_files")
        text = render_markdown(title, subtitle, sections, files_dir, files_dir.name)
    else:
        text = render_html(title, subtitle, sections)
    atomic_write_text(output, text)
    figures = sum(isinstance(b, Figure) for s in sections for b in s.blocks)
    return ReportSummary(output, len(sections), figures, checks, chosen)
