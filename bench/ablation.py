"""`make ablation`: does the funnel make a better model for the same compute?

Two runs of the same model, seed and number of training tokens, one trained on the raw text
(`download` straight to `train-tokenizer` and `pack`, the tokenizer trained on that raw text),
one on the output of the whole funnel (`normalize`, `filter`, `dedup` in between); with
--variants also dedup only and filter only. Each is scored with `nonllama eval` in bits per
byte (comparable across tokenizers) on text neither run saw:

- held out before the funnel: one line in ten (by a hash of the line) of TinyStories and of
  People's Daily is set aside before `download`, so neither run trains on it;
- other clean corpora: WikiText-2 (English) and CMRC 2018's Chinese Wikipedia paragraphs;
- and, to see what the funnel costs on junk, the raw training text itself (a sample).

The training mix is ../shared/corpora: TinyStories, People's Daily, the English Wikipedia dump
and the web-crawl slice (menus, cookie banners, boilerplate: junk for filter to remove;
TinyStories' four slices overlap: duplicates for dedup). Every step is the real command, as a
user would type it; the table and a plot of both runs' loss curves land in WORK.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import xxhash

CORPORA = Path(__file__).resolve().parent.parent.parent / "shared" / "corpora"
HELD_OUT_EVERY = 10  # one line in ten held out
# the mix trained on: (label, path under CORPORA, held-out lines taken from it)
TRAIN_SOURCES = [
    ("tinystories_en", "tinystories_en", True),
    ("peoples_daily_zh", "peoples_daily_1998/199801.txt.gz", True),
    ("enwiki_en", "enwiki_dump", False),
    ("webcrawl_en", "webcrawl", False),
]
# clean text of other corpora, never trained on: (label, path, language)
OTHER_CLEAN = [
    ("wikitext2_en", "wikitext2_en/valid.txt", "en"),
    ("zhwiki_zh", "zhwiki_cmrc2018/cmrc2018_contexts.jsonl", "zh"),
]
# what each variant runs between download and train-tokenizer
VARIANTS = {
    "raw": [],
    "funnel": ["normalize", "filter", "dedup"],
    "dedup-only": ["dedup"],
    "filter-only": ["normalize", "filter"],
}
STAGE_DIRS = {"normalize": "normalized", "filter": "filtered", "dedup": "deduped"}


def is_held_out(line: str) -> bool:
    return xxhash.xxh64_intdigest(line.strip().encode()) % HELD_OUT_EVERY == 0


def split_lines(source: Path, train_out: Path, held_out: Path) -> tuple[int, int]:
    """Copy the lines of a text file (plain or gzip) to `train_out`, except one in ten
    non-blank lines (by a hash of the line, so repeated lines land on the same side), which
    go to `held_out`. Returns the counts (train, held out)."""
    opener = gzip.open if source.suffix == ".gz" else open
    counts = [0, 0]
    with opener(source, "rt", encoding="utf-8") as f, open(train_out, "w", encoding="utf-8") as train, \
            open(held_out, "a", encoding="utf-8") as held:
        for line in f:
            if line.strip() and is_held_out(line):
                held.write(line if line.endswith("\n") else line + "\n")
                counts[1] += 1
            else:
                train.write(line)
                counts[0] += bool(line.strip())
    return counts[0], counts[1]


def prepare_inputs(work: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, Path, str]]]:
    """The training sources (label, path) and the held-out sets (label, path, language)."""
    inputs, held = work / "inputs", work / "held_out"
    inputs.mkdir(parents=True, exist_ok=True)
    held.mkdir(parents=True, exist_ok=True)
    train_sources, held_out = [], []
    for label, rel, hold in TRAIN_SOURCES:
        path = CORPORA / rel
        if not hold:
            train_sources.append((label, path))
            continue
        target = inputs / label
        target.mkdir(exist_ok=True)
        held_file = held / f"{label}.txt"
        held_file.unlink(missing_ok=True)
        kept = out = 0
        for file in sorted(path.iterdir()) if path.is_dir() else [path]:
            a, b = split_lines(file, target / (file.name.removesuffix(".gz")), held_file)
            kept, out = kept + a, out + b
        print(f"  {label}: {kept:,} lines to train on, {out:,} held out", flush=True)
        train_sources.append((label, target))
        held_out.append((f"held-out {label}", held_file, label.rsplit("_", 1)[1]))
    for label, rel, lang in OTHER_CLEAN:
        held_out.append((label, CORPORA / rel, lang))
    return train_sources, held_out


class Runner:
    """Runs nonllama commands as a user types them, echoing each and timing it."""

    def __init__(self, nonllama: list[str], log: Path):
        self.nonllama, self.log = nonllama, log
        self.times: dict[str, float] = {}

    def __call__(self, label: str, *args: str | Path) -> None:
        command = [*self.nonllama, *map(str, args)]
        print(f"$ {shlex.join(command)}", flush=True)
        started = time.perf_counter()
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "NONLLAMA_NO_PROGRESS": "1"})
        self.times[label] = self.times.get(label, 0.0) + time.perf_counter() - started
        if done.returncode:
            sys.exit(f"ablation: `{shlex.join(command)}` failed (exit {done.returncode}); see {self.log}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("work-ablation"))
    parser.add_argument("--variants", default="raw,funnel", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--preset", default="2m")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--eval-max-bytes", default="200K", help="bytes scored per held-out set")
    args = parser.parse_args(argv)
    if not CORPORA.is_dir():
        sys.exit(f"ablation: needs ../shared/corpora ({CORPORA} not found)")
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            sys.exit(f"ablation: --variants {v!r}: choose from {', '.join(VARIANTS)}")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    run = Runner([sys.executable, "-m", "nonllama"], work / "commands.log")
    print(f"ablation in {work} (commands and their output: {run.log})", flush=True)
    sources, held_out = prepare_inputs(work)
    common = ["--workers", str(args.workers)]
    raw = work / "raw"
    labels = [label for label, _ in sources]
    names = [arg for label in labels for arg in ("--name", label)]
    run("download", "download", *[p for _, p in sources], "-o", raw, "--split-on", r"\n", *names, *common)
    # the held-out text as it is, and as the funnel's normalize and filter leave it (its clean part)
    held_names = [arg for label, _, _ in held_out for arg in ("--name", label)]
    run("held-out", "download", *[p for _, p, _ in held_out], "-o", work / "held_out_docs", "--split-on", r"\n",
        *held_names, *common)
    run("held-out", "normalize", "-i", work / "held_out_docs", "-o", work / "held_out_normalized", *common)
    run("held-out", "filter", "-i", work / "held_out_normalized", "-o", work / "held_out_filtered", *common)
    for variant in variants:
        stages, data = VARIANTS[variant], raw
        base = work / "variants" / variant
        for stage in stages:
            out = base / STAGE_DIRS[stage]
            run(f"{variant}: {stage}", stage, "-i", data, "-o", out, *common)
            data = out
        run(f"{variant}: train-tokenizer", "train-tokenizer", "-i", data, "-o", base / "tokenizer",
            "--vocab-size", args.vocab_size, *common)
        run(f"{variant}: pack", "pack", "-i", data, "-o", base / "packed", "--tokenizer", base / "tokenizer", *common)
        run(f"{variant}: train", "train", "--data", base / "packed", "--out", base / "run", "--preset", args.preset,
            "--max-steps", args.steps, "--batch-size", args.batch_size, "--seq-len", args.seq_len,
            "--lr", "3e-3", "--min-lr", "3e-4", "--warmup", "20", "--seed", "0",
            "--auto-resume")
    results = {variant: score(run, work, variant, held_out, raw, args) for variant in variants}
    table = results_table(results, held_out)
    print(table, flush=True)
    (work / "ablation.md").write_text(table + "\n", encoding="utf-8")
    plot(work, variants, results, held_out)
    print(f"time per step: {json.dumps({k: round(v, 1) for k, v in run.times.items()})}")
    print(f"table: {work / 'ablation.md'}, plot: {work / 'ablation.png'}")
    return 0


def score(run: Runner, work: Path, variant: str, held_out: list[tuple[str, Path, str]], raw: Path,
          args: argparse.Namespace) -> dict[str, dict]:
    """{what was scored: eval's metrics} for one variant's run: each held-out set as it is and
    as normalize and filter leave it, and a sample of the raw training text."""
    run_dir = work / "variants" / variant / "run"
    out = work / "eval" / variant
    scored: dict[str, dict] = {}
    for data, suffix in (("held_out_docs", ""), ("held_out_filtered", ", filtered")):
        run(f"{variant}: eval", "eval", "--run", run_dir, work / data, "--max-bytes", args.eval_max_bytes,
            "-o", out / f"{data}.json")
        sources = json.loads((out / f"{data}.json").read_text(encoding="utf-8"))["sources"]
        scored.update({f"{label}{suffix}": sources[label] for label, _, _ in held_out})
    run(f"{variant}: eval", "eval", "--run", run_dir, raw, "--max-bytes", args.eval_max_bytes, "-o", out / "raw.json")
    scored["raw training text (sample)"] = json.loads((out / "raw.json").read_text(encoding="utf-8"))["total"]
    return scored


def results_table(results: dict[str, dict], held_out: list[tuple[str, Path, str]]) -> str:
    """Markdown: bits per byte of each variant's run on each held-out set (lower is better)."""
    variants = list(results)
    rows = [f"| scored on | language | bytes | {' | '.join(variants)} |",
            "|---|---|---:|" + "---:|" * len(variants)]
    languages = {label + suffix: lang for label, _, lang in held_out for suffix in ("", ", filtered")}
    for label in next(iter(results.values())):
        cells = [f"{results[v][label]['bits_per_byte']:.4f}" for v in variants]
        if "raw" in results and len(variants) > 1:
            base = results["raw"][label]["bits_per_byte"]
            cells = [c if v == "raw" else f"{c} ({results[v][label]['bits_per_byte'] / base - 1:+.1%})"
                     for c, v in zip(cells, variants, strict=True)]
        nbytes = next(iter(results.values()))[label]["bytes"]
        rows.append(f"| {label} | {languages.get(label, 'en+zh')} | {nbytes:,} | {' | '.join(cells)} |")
    return "bits per byte (lower is better; in brackets: against raw)\n\n" + "\n".join(rows)


def plot(work: Path, variants: list[str], results: dict[str, dict], held_out: list[tuple[str, Path, str]]) -> None:
    """ablation.png: the runs' training loss against tokens (left; per token of each run's own
    tokenizer, so the levels are not comparable, the shapes are) and bits per byte on each
    held-out set (right; comparable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(13, 4.5))
    for variant in variants:
        lines = (work / "variants" / variant / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        train = [r for r in records if r["split"] == "train"]
        val = [r for r in records if r["split"] == "val"]
        line, = curves.plot([r["tokens"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.8, label=f"{variant} train")
        curves.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o--", color=line.get_color(),
                    label=f"{variant} val (its own split)")
    curves.set_xlabel("training tokens")
    curves.set_ylabel("loss, nats per token (each run's tokenizer)")
    curves.legend()
    labels = list(next(iter(results.values())))
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        bars.bar([x + i * width for x in range(len(labels))], [results[variant][k]["bits_per_byte"] for k in labels],
                 width, label=variant)
    bars.set_xticks([x + width * (len(variants) - 1) / 2 for x in range(len(labels))])
    bars.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    bars.set_ylabel("bits per byte (lower is better)")
    bars.legend()
    fig.tight_layout()
    fig.savefig(work / "ablation.png", dpi=110)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
