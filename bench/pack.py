"""pack throughput in tokens/s with 1 and 2 workers, against SentencePiece's own encode.

The baseline is `SentencePieceProcessor.encode(texts, num_threads=1)` on the same documents,
already in memory: the rate one core can tokenize at, before any reading, hashing, writing or
process start-up. Target: pack with N workers >= 0.8 x N x that rate.

Runs on ../shared/corpora when it is present (else on the built-in sample), `--copies` times
under distinct source names so that the run is long enough to measure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NONLLAMA_NO_PROGRESS", "1")

from nonllama.pipeline.download import DownloadConfig, run_download  # noqa: E402
from nonllama.pipeline.io import read_parts  # noqa: E402
from nonllama.pipeline.pack import PackConfig, run_pack  # noqa: E402
from nonllama.pipeline.tokenizer import (  # noqa: E402
    MODEL_NAME,
    TokenizerConfig,
    load_processor,
    run_train_tokenizer,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


def corpus_sources() -> list[str]:
    if not SHARED.is_dir():
        return ["sample"]
    return [str(SHARED / name) for name in
            ("peoples_daily_1998", "zhwiki_cmrc2018", "tinystories_en", "wikitext2_en", "webcrawl")]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_pack(work: Path, repeat: int, copies: int, vocab_size: int) -> tuple[float, float, float]:
    raw = work / "raw"
    base = corpus_sources()
    sources = [s for _ in range(copies) for s in base]
    names = [f"{Path(s).name}-{i // len(base)}" for i, s in enumerate(sources)]
    run_download(DownloadConfig(sources, names=names, split_on="blank-line", part_rows=4000), raw, workers=2)
    tok = work / "tokenizer"
    run_train_tokenizer(raw, tok, TokenizerConfig(vocab_size=vocab_size, threads=2, sample_bytes=20_000_000))
    texts = read_parts(raw, columns=["text"])["text"].fill_null("").to_list()
    m = json.loads((raw / "_manifest.json").read_text())
    nbytes = sum(len(t.encode()) for t in texts)
    print(f"corpus: {len(texts):,} documents, {nbytes / 1e6:.1f} MB in {len(m['parts'])} parts; "
          f"tokenizer: {vocab_size:,} pieces")

    processor = load_processor(tok / MODEL_NAME)
    processor.encode(texts[:1000], num_threads=1)  # warm-up
    t_base = min(timed(lambda: processor.encode(texts, num_threads=1)) for _ in range(repeat))
    tokens = sum(map(len, processor.encode(texts, num_threads=1))) + len(texts)  # + one EOS each

    def best(workers: int) -> float:
        return min(timed(lambda: run_pack(raw, tok, work / f"packed{workers}", PackConfig(),
                                          workers=workers, force=True)) for _ in range(repeat))

    t1, t2 = best(1), best(2)
    same = all((work / "packed1" / f).read_bytes() == (work / "packed2" / f).read_bytes()
               for f in ("train.bin", "val.bin", "index.parquet"))
    rate = lambda t: tokens / t  # noqa: E731
    print(f"{'step':<44}{'seconds':>10}{'Mtokens/s':>12}")
    for label, t in (("sentencepiece encode, 1 thread (baseline)", t_base), ("pack, 1 worker", t1),
                     ("pack, 2 workers", t2)):
        print(f"{label:<44}{t:>10.2f}{rate(t) / 1e6:>12.3f}")
    print(f"ratio pack-1w / baseline: {t_base / t1:.2f}  (target >= 0.80)")
    print(f"ratio pack-2w / baseline: {t_base / t2:.2f}  (target >= 1.60 = 0.8 x 2)")
    print(f"1 and 2 workers give identical files: {same}")
    return t_base / t1, t_base / t2, float(same)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is reported")
    parser.add_argument("--copies", type=int, default=3, help="copies of the corpora to run over")
    parser.add_argument("--vocab-size", type=int, default=16_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nonllama-bench-") as tmp:
        bench_pack(Path(tmp), args.repeat, args.copies, args.vocab_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
