"""normalize throughput, as ratios against a baseline measured in the same run.

normalize: MB/s of input text with 1 and 2 workers, against the `identity` baseline, the same
stage driver with a transform that returns its batch unchanged (Parquet read + write, the cost
every stage pays). Ratios: normalize-1w / identity (what the rules cost) and
normalize-2w / normalize-1w (how well workers scale; 2 cores here).

Runs on ../shared/corpora when it is present (else on the built-in sample, repeated).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

os.environ.setdefault("NONLLAMA_NO_PROGRESS", "1")

from nonllama.pipeline.download import DownloadConfig, run_download  # noqa: E402
from nonllama.pipeline.driver import run_shard_stage  # noqa: E402
from nonllama.pipeline.normalize import NormalizeConfig, run_normalize  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


def identity(batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    return batch, batch.head(0).with_columns(pl.lit("").alias("drop_reason"))


def corpus_sources() -> list[str]:
    if not SHARED.is_dir():
        return ["sample"]
    return [
        str(SHARED / "peoples_daily_1998"),
        str(SHARED / "zhwiki_cmrc2018"),
        str(SHARED / "tinystories_en"),
        str(SHARED / "wikitext2_en"),
        str(SHARED / "webcrawl"),
    ]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_normalize(work: Path, repeat: int, copies: int) -> None:
    raw = work / "raw"
    # split text files into paragraphs and cut into several parts, so two workers have work to share
    # the corpora, `copies` times under distinct source names, so that worker start-up (a few
    # hundred ms per process) is small next to the work
    sources = [s for _ in range(copies) for s in corpus_sources()]
    names = [f"{Path(s).name}-{i // len(corpus_sources())}" for i, s in enumerate(sources)]
    run_download(DownloadConfig(sources, names=names, split_on="blank-line", part_rows=4000), raw, workers=2)
    m = json.loads((raw / "_manifest.json").read_text())
    text_bytes = pl.read_parquet(raw / "part-*.parquet", columns=["text"])["text"].str.len_bytes().sum()
    print(f"corpus: {m['rows_out']:,} documents, {m['chars_out']:,} characters, {text_bytes / 1e6:.1f} MB in {len(m['parts'])} parts")

    def best(fn) -> float:
        return min(timed(fn) for _ in range(repeat))

    cfg = NormalizeConfig()
    t_identity = best(lambda: run_shard_stage(
        stage="identity", input_dir=raw, output_dir=work / "identity",
        side_dir_name="removed", config={}, transform=identity, force=True))
    t_norm1 = best(lambda: run_normalize(raw, work / "norm1", cfg, workers=1, force=True))
    t_norm2 = best(lambda: run_normalize(raw, work / "norm2", cfg, workers=2, force=True))
    rate = lambda t: text_bytes / t / 1e6  # noqa: E731
    print(f"{'step':<28}{'seconds':>10}{'MB/s':>10}")
    for label, t in (("identity (baseline), 1 worker", t_identity), ("normalize, 1 worker", t_norm1),
                     ("normalize, 2 workers", t_norm2)):
        print(f"{label:<28}{t:>10.2f}{rate(t):>10.2f}")
    print(f"ratio normalize-1w / identity-1w throughput: {t_identity / t_norm1:.2f}")
    print(f"ratio normalize-2w / normalize-1w throughput: {t_norm1 / t_norm2:.2f}  (ideal 2.00 on 2 cores)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is reported")
    parser.add_argument("--copies", type=int, default=6, help="copies of the corpora to run over")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nonllama-bench-") as tmp:
        bench_normalize(Path(tmp), args.repeat, args.copies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
