"""filter throughput: nonllama's rules against datatrove's filters on the same documents.

datatrove (bench-only dependency) runs C4QualityFilter -> GopherRepetitionFilter ->
GopherQualityFilter -> FineWebQualityFilter, called directly on `Document` objects (no readers,
writers or pipeline executor), each document stopping at its first failing filter, as datatrove's
pipeline does. English needs spaCy in datatrove, which is not installed: its filters get a regex
word tokenizer (`\\w+|[^\\w\\s]+`, cheaper than spaCy) and datatrove's own regex sentence splitter.

nonllama runs `filter_batch` over batches of 2,000 documents with the equivalent rules switched on
(C4 with datatrove's defaults: terminal punctuation, 3 words a line, 5 sentences, curly bracket;
Gopher repetition; Gopher quality with 50..100,000 words; FineWeb quality) and the others off
(language id, flagged words, special characters, BigScience repetition, short lines). It computes
and records every value of every document (no early exit). Building the polars batches from the
texts is included; reading and writing Parquet is not, on either side.

What is timed. datatrove: building a `Document` per text and calling the four filters' `filter`
methods (the work its pipeline does per document, minus I/O). nonllama: building the polars batch
from the texts, `filter_batch` (line cleaning, every value of the switched-on rules for every
document, the decisions, the `filter_values` struct, the kept/rejected split). Rules switched off
are not computed by nonllama (their values are null); the values of the switched-on rules are
computed for every document, kept or not, while datatrove stops at a document's first failing
filter -- on this corpus C4's 5-sentence rule stops most documents after one filter.

One process each, one after the other: datatrove is single-threaded Python; nonllama uses polars'
own thread pool (POLARS_MAX_THREADS = --threads, default every core of the machine) and numpy.
Both are warmed up first (regex compilation, word lists), and each is timed --repeat times; the
best run counts. Documents: the normalized shared corpora (or the sample corpus), an even spread.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


def load_documents(work: Path, max_docs: int) -> list[str]:
    import polars as pl

    from nonllama.pipeline.download import DownloadConfig, run_download
    from nonllama.pipeline.normalize import NormalizeConfig, run_normalize

    # People's Daily is one paragraph a line (no blank lines); the other text files are split
    # on blank lines, as `bench/normalize.py` does
    groups = (
        [([str(SHARED / "peoples_daily_1998")], r"\n"),
         ([str(SHARED / n) for n in ("zhwiki_cmrc2018", "tinystories_en", "wikitext2_en", "enwiki_dump", "webcrawl")], "blank-line")]
        if SHARED.is_dir()
        else [(["sample"], None)]
    )  # fmt: skip
    frames = []
    for i, (sources, split_on) in enumerate(groups):
        run_download(DownloadConfig(sources, split_on=split_on), work / f"raw{i}")
        run_normalize(work / f"raw{i}", work / f"normalized{i}", NormalizeConfig())
        frames.append(pl.read_parquet(work / f"normalized{i}" / "part-*.parquet", columns=["text"]))
    texts = pl.concat(frames)["text"]
    # an even spread over every corpus, the same on every run
    step = max(len(texts) // max_docs, 1)
    return texts.gather(list(range(0, len(texts), step))[:max_docs]).to_list()


def datatrove_filters():
    import regex
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.utils.word_tokenizers import WhitespaceTokenizer

    class RegexTokenizer(WhitespaceTokenizer):
        _words = regex.compile(r"\w+|[^\w\s]+")

        def word_tokenize(self, text: str) -> list[str]:
            return self._words.findall(text)

    tok = RegexTokenizer()
    return [
        C4QualityFilter(language=tok),
        GopherRepetitionFilter(language=tok),
        GopherQualityFilter(language=tok, min_stop_words=None),
        FineWebQualityFilter(language=tok),
    ]


def run_datatrove(texts: list[str]) -> tuple[float, list[bool]]:
    from datatrove.data import Document

    filters = datatrove_filters()
    kept = []
    start = time.perf_counter()
    for i, text in enumerate(texts):
        doc = Document(text=text, id=str(i))
        ok = True
        for f in filters:
            result = f.filter(doc)
            if result is not True and not (isinstance(result, bool) and result):
                ok = False
                break
        kept.append(ok)
    return time.perf_counter() - start, kept


def equivalent_config():
    from nonllama.pipeline.filter import FilterConfig

    return FilterConfig(
        c4_line_cleaning=True, c4_boilerplate=False, c4_terminal_punct=True, c4_min_words_per_line=3,
        c4_curly_bracket=True, c4_min_sentences=5, word_count=True, word_count_min=50,
        language=False, flagged_words=False, special_chars=False, char_repetition=False,
        word_repetition=False, short_lines=False, stop_words=False,
    )  # fmt: skip


def run_nonllama(texts: list[str], batch_rows: int = 2000) -> tuple[float, list[bool]]:
    import polars as pl

    from nonllama.pipeline.filter import filter_batch

    config = equivalent_config()
    kept: list[bool] = []
    start = time.perf_counter()
    for lo in range(0, len(texts), batch_rows):
        chunk = texts[lo : lo + batch_rows]
        batch = pl.DataFrame({"id": [str(i) for i in range(lo, lo + len(chunk))], "text": chunk})
        k, _ = filter_batch(batch, config)
        ids = set(k["id"].to_list())
        kept.extend(str(i) in ids for i in range(lo, lo + len(chunk)))
    return time.perf_counter() - start, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-docs", type=int, default=10_000, help="documents to run through both")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="polars threads for nonllama")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each; the best counts")
    args = parser.parse_args(argv)
    os.environ["POLARS_MAX_THREADS"] = str(args.threads)  # read when polars is first imported
    os.environ.setdefault("NONLLAMA_NO_PROGRESS", "1")
    try:
        import datatrove  # noqa: F401
    except ModuleNotFoundError:
        print("datatrove is not installed: pip install -e '.[bench]'")
        return 1
    with tempfile.TemporaryDirectory(prefix="nonllama-bench-filter-") as tmp:
        texts = load_documents(Path(tmp), args.max_docs)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"documents: {len(texts):,} ({mb:.1f} MB); nonllama: polars threads {args.threads}; datatrove: 1 thread")
    run_datatrove(texts[:500])  # warm-up: regex compilation, word lists
    run_nonllama(texts[:500])
    t_dt, kept_dt = min(run_datatrove(texts) for _ in range(args.repeat))
    t_nl, kept_nl = min(run_nonllama(texts) for _ in range(args.repeat))
    pairs = list(zip(kept_dt, kept_nl, strict=True))
    agree = sum(a == b for a, b in pairs) / len(texts)
    print(f"{'filter':<12}{'seconds':>10}{'docs/s':>12}{'MB/s':>8}{'kept':>8}")
    for name, t, kept in (("datatrove", t_dt, kept_dt), ("nonllama", t_nl, kept_nl)):
        print(f"{name:<12}{t:>10.2f}{len(texts) / t:>12,.0f}{mb / t:>8.2f}{sum(kept):>8,}")
    print(
        f"ratio nonllama / datatrove docs/s: {t_dt / t_nl:.2f}; keep/drop agreement {agree:.1%} "
        f"(kept by datatrove only: {sum(a and not b for a, b in pairs):,}, "
        f"by nonllama only: {sum(b and not a for a, b in pairs):,})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
