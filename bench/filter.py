"""filter throughput at equal cores: nonllama's rules against datatrove's filters on the same documents.

Every row runs in processes of its own, spawned and pinned (sched_setaffinity) to as many CPUs
as the row says, so "1 core" and "2 cores" hold whatever threads a library starts. Each process
warms up (imports, regex compilation, word lists) on a few hundred documents; then the rows take
turns, --repeat rounds, each round in another order, so that load from elsewhere hits them
alike. In a round a row's processes start together; its wall time is its slowest process's, its
CPU time the sum over every process involved (pool workers and helpers included, from /proc);
the best round counts. On a shared machine the CPU seconds are the steadier figure.

The rules. datatrove (bench-only dependency): C4QualityFilter -> GopherRepetitionFilter ->
GopherQualityFilter -> FineWebQualityFilter, each document stopping at its first failing filter,
as datatrove's pipeline does. English needs spaCy in datatrove, which is not installed: its
filters get a regex word tokenizer (`\\w+|[^\\w\\s]+`, cheaper than spaCy) and datatrove's own
regex sentence splitter. nonllama: `filter_batch` with the equivalent rules switched on (C4 with
datatrove's defaults: terminal punctuation, 3 words a line, 5 sentences, curly bracket; Gopher
repetition; Gopher quality with 50..100,000 words; FineWeb quality) and the others off (language
id, flagged words, special characters, BigScience repetition, short lines). nonllama computes
and records every value of the switched-on rules for every document (no early exit), while
datatrove stops at a document's first failing filter (on this corpus C4's 5-sentence rule stops
most documents after one filter).

The rows.
- in memory (the filters alone, no Parquet): datatrove builds a `Document` per text and calls
  the four filters' `filter` methods; nonllama builds a polars batch of 2,000 texts and calls
  `filter_batch` (line cleaning, every value, the decisions, the `filter_values` struct, the
  kept/rejected split). 1 core: one process each (nonllama with POLARS_MAX_THREADS=1).
  2 cores: two processes each, each on every other batch of 2,000 documents (the batches of the
  one-process run; nonllama's with one polars thread, as the stage's workers run), and, for
  reference, nonllama as one process with two polars threads (what this bench measured before,
  against datatrove on 1 core: 1.71x, on a 10,000-document pick that missed the last corpora:
  the Wikipedia dump, the web pages and most of WikiText, the long documents).
- stage (read Parquet, filter, write Parquet): the same documents --stage-copies times (so that
  starting a pool, ~1 s, is small beside the work), as a normalize output of --parts parts,
  each an even spread of the corpora. nonllama: `run_filter(workers=N)`, as `nonllama filter
  --workers N` runs it (input checksums, kept parts, `rejected/` parts, both zstd, manifest;
  with 2 workers this process and a helper it spawns for the run take parts as they finish;
  polars sizes its thread pool from the pinned CPUs). datatrove:
  `LocalPipelineExecutor(tasks=N, workers=N)`: ParquetReader -> the four filters, each with a
  ParquetWriter for the documents it drops (exclusion_writer) -> ParquetWriter for the kept,
  snappy, its logs and stats (with 2 workers a process pool started per run, each task reading
  every other part). Both include clearing their output directory.

Documents: the normalized shared corpora (or the sample corpus), an even spread of --max-docs,
shuffled with a fixed seed.
`--profile` instead shows where nonllama's filter time goes (1 core): cProfile of `filter_batch`
by function, and, when py-spy is installed, its samples by source line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
BATCH_ROWS = 2000
WARM_DOCS = 300


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
    # an even spread over every corpus, the same on every run (the corpora come one after the
    # other: a prefix of a strided pick would leave out the last ones, the long documents)
    n = min(max_docs, len(texts))
    picked = texts.gather([i * len(texts) // n for i in range(n)]).to_list()
    # in a fixed random order: every batch of 2,000 a mix of the corpora, so that two processes
    # given every other batch get even shares (the long web pages come last otherwise)
    random.Random(0).shuffle(picked)
    return picked


def stage_input(work: Path, texts: list[str], parts: int) -> Path:
    """`texts` as a normalize output of `parts` parts (what `nonllama filter` reads), part k
    holding every `parts`-th document from the k-th: each part an even spread of the corpora,
    so that 2 workers (or datatrove's 2 tasks, each reading every other part) share evenly."""
    from nonllama.pipeline.download import DownloadConfig, run_download
    from nonllama.pipeline.normalize import NormalizeConfig, run_normalize

    source = work / "stage-src" / "docs.jsonl"
    source.parent.mkdir(parents=True)
    rows = math.ceil(len(texts) / parts)
    spread = [t for k in range(parts) for t in texts[k::parts]]
    source.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in spread), encoding="utf-8")
    run_download(DownloadConfig([str(source)], names=["bench"], part_rows=rows), work / "stage-raw", workers=2)
    run_normalize(work / "stage-raw", work / "stage-normalized", NormalizeConfig(), workers=2)
    return work / "stage-normalized"


def datatrove_filters(exclusion_dirs: list[Path] | None = None):
    import regex
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.word_tokenizers import WhitespaceTokenizer

    class RegexTokenizer(WhitespaceTokenizer):
        _words = regex.compile(r"\w+|[^\w\s]+")

        def word_tokenize(self, text: str) -> list[str]:
            return self._words.findall(text)

    tok = RegexTokenizer()
    writers = [ParquetWriter(str(d)) for d in exclusion_dirs] if exclusion_dirs else [None] * 4
    return [
        C4QualityFilter(language=tok, exclusion_writer=writers[0]),
        GopherRepetitionFilter(language=tok, exclusion_writer=writers[1]),
        GopherQualityFilter(language=tok, min_stop_words=None, exclusion_writer=writers[2]),
        FineWebQualityFilter(language=tok, exclusion_writer=writers[3]),
    ]


def equivalent_config():
    from nonllama.pipeline.filter import FilterConfig

    return FilterConfig(
        c4_line_cleaning=True, c4_boilerplate=False, c4_terminal_punct=True, c4_min_words_per_line=3,
        c4_curly_bracket=True, c4_min_sentences=5, word_count=True, word_count_min=50,
        language=False, flagged_words=False, special_chars=False, char_repetition=False,
        word_repetition=False, short_lines=False, stop_words=False,
    )  # fmt: skip


# ------------------------------------------------------------------ the work of a measured process
# Module-level functions: the measured processes are spawned and import this module.


_DT_FILTERS: list | None = None


def datatrove_memory(texts: list[str]) -> list[bool]:
    """datatrove's four filters on each text, stopping at the first that drops it."""
    global _DT_FILTERS
    from datatrove.data import Document

    if _DT_FILTERS is None:
        _DT_FILTERS = datatrove_filters()
    kept = []
    for i, text in enumerate(texts):
        doc = Document(text=text, id=str(i))
        ok = True
        for f in _DT_FILTERS:
            result = f.filter(doc)
            if result is not True and not (isinstance(result, bool) and result):
                ok = False
                break
        kept.append(ok)
    return kept


def nonllama_memory(texts: list[str]) -> list[bool]:
    """`filter_batch` over batches of BATCH_ROWS texts (the polars batch built from the texts)."""
    import polars as pl

    from nonllama.pipeline.filter import filter_batch

    config = equivalent_config()
    kept: list[bool] = []
    for lo in range(0, len(texts), BATCH_ROWS):
        chunk = texts[lo : lo + BATCH_ROWS]
        batch = pl.DataFrame({"id": [str(i) for i in range(lo, lo + len(chunk))], "text": chunk})
        k, _ = filter_batch(batch, config)
        ids = set(k["id"].to_list())
        kept.extend(str(i) in ids for i in range(lo, lo + len(chunk)))
    return kept


def nonllama_stage(job: dict) -> None:
    from nonllama.pipeline.filter import run_filter

    run_filter(Path(job["input"]), Path(job["output"]), equivalent_config(), workers=job["workers"], force=True)


def datatrove_stage(job: dict) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter

    out = Path(job["output"])
    shutil.rmtree(out, ignore_errors=True)
    pipeline = [
        ParquetReader(job["input"], glob_pattern="part-*.parquet", recursive=False),
        *datatrove_filters([out / f"removed-{i}" for i in range(4)]),
        ParquetWriter(str(out / "kept")),
    ]
    n = job["workers"]
    LocalPipelineExecutor(pipeline=pipeline, tasks=n, workers=n, logging_dir=str(out / "logs"),
                          skip_completed=False).run()


JOBS = {"datatrove_memory": datatrove_memory, "nonllama_memory": nonllama_memory,
        "nonllama_stage": nonllama_stage, "datatrove_stage": datatrove_stage}


def tree_cpu(skip: Callable[[str], bool] | None = None) -> float:
    """CPU seconds of this process and its live descendants, with the children each has reaped
    (Linux /proc): a pool's workers count once their parent (or the forkserver) has reaped them.
    `skip(command line)`: leave such a descendant and its own descendants out."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the name: state ppid ... utime(14) stime(15) cutime(16) cstime(17), 1-based
        procs[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / tick)
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in procs.items():
            if ppid == parent and pid not in tree:
                if skip is not None:
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            if skip(f.read().replace(b"\0", b" ").decode(errors="replace")):
                                continue
                    except OSError:
                        continue
                tree.add(pid)
                frontier.append(pid)
    return sum(procs[pid][1] for pid in tree if pid in procs)


def _measured(name: str, payload: Any, warm: list[str], cpus: list[int], env: dict[str, str | None],
              conn: Any, log: str | None) -> None:
    """One measured process: pin, set the environment, warm up, then a timed run per "go"."""
    os.sched_setaffinity(0, cpus)  # before any library starts a thread: they inherit it
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if log:  # datatrove's log sinks and progress bars, its pool's included: to a file
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 2)
    try:
        (nonllama_memory if name.startswith("nonllama") else datatrove_memory)(warm)
        conn.send(("ready",))
        first = True
        while conn.recv() == "go":
            cpu, start = tree_cpu(), time.perf_counter()
            out = JOBS[name](payload)
            wall = time.perf_counter() - start
            conn.send(("done", wall, tree_cpu() - cpu, out if first else None))
            first = False
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        raise


class Measured:
    """A row's processes (one per payload), warmed up, waiting for rounds."""

    def __init__(self, name: str, payloads: list[Any], warm: list[str], cpus: list[int],
                 env: dict[str, str | None], log: Path | None = None):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.name, self.log = name, log
        self.conns, self.procs = [], []
        for payload in payloads:
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_measured, args=(name, payload, warm, cpus, env, theirs, str(log) if log else None))
            p.start()
            self.conns.append(mine)
            self.procs.append(p)
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.first: list[Any] = []

    def _recv(self, conn: Any) -> tuple:
        message = conn.recv()
        if message[0] == "error":
            self.close()
            raise RuntimeError(f"{self.name}: {message[1]}" + (f" (log: {self.log})" if self.log else ""))
        return message

    def ready(self) -> None:
        for conn in self.conns:
            self._recv(conn)

    def round(self) -> None:
        """One timed run of every process of the row, started together; the row's wall time is
        its slowest process's, its CPU time all of theirs."""
        for conn in self.conns:
            conn.send("go")
        done = [self._recv(conn) for conn in self.conns]
        self.walls.append(max(d[1] for d in done))
        self.cpus.append(sum(d[2] for d in done))
        if not self.first:
            self.first = [d[3] for d in done]

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send("stop")
            except OSError:
                pass
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


def split_batches(items: list, ways: int) -> list[list]:
    """Every `ways`-th batch of BATCH_ROWS items to each process (as a stage hands out parts):
    the processes together run exactly the batches of the one-process run (nonllama's cost per
    document depends on what shares its batch)."""
    batches = [items[lo : lo + BATCH_ROWS] for lo in range(0, len(items), BATCH_ROWS)]
    return [[x for b in batches[k::ways] for x in b] for k in range(ways)]


def join_batches(shares: list[list], ways: int) -> list:
    """The inverse of split_batches."""
    parts = [[share[lo : lo + BATCH_ROWS] for lo in range(0, len(share), BATCH_ROWS)] for share in shares]
    out: list = []
    for i in range(max(map(len, parts))):
        for k in range(ways):
            if i < len(parts[k]):
                out.extend(parts[k][i])
    return out


def parquet_rows(directory: Path, pattern: str) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in directory.glob(pattern))


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------ the bench


def bench(work: Path, texts: list[str], repeat: int, parts: int, stage_copies: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print(f"needs 2 CPUs, this process may use {len(cpus)}")
        return
    one, two = cpus[:1], cpus[:2]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    warm = texts[:WARM_DOCS]
    single = {"POLARS_MAX_THREADS": "1", "NONLLAMA_NO_PROGRESS": "1"}
    halves = split_batches(texts, 2)
    inp = stage_input(work, texts * stage_copies, parts)
    stage_docs = json.loads((inp / "_manifest.json").read_text())["rows_out"]
    print(f"documents: {len(texts):,} ({mb:.1f} MB); stage input: {stage_copies} copies of them, {stage_docs:,} "
          f"documents in {parts} parts; "
          f"CPUs {one} for 1 core, {two} for 2 cores; before: {load()}")

    # the stage as the CLI runs it: polars sizes its pool from the CPUs the process may use
    cli = {"POLARS_MAX_THREADS": None, "NONLLAMA_NO_PROGRESS": "1"}
    outs = {k: work / f"out-{k}" for k in ("nl-1", "nl-2", "dt-1", "dt-2")}
    log = work / "datatrove.log"

    def stage(k: str, workers: int) -> dict:
        return {"input": str(inp), "output": str(outs[k]), "workers": workers}

    rows = {
        "dt-mem-1": Measured("datatrove_memory", [texts], warm, one, single),
        "nl-mem-1": Measured("nonllama_memory", [texts], warm, one, single),
        "dt-mem-2": Measured("datatrove_memory", halves, warm, two, single),
        "nl-mem-2": Measured("nonllama_memory", halves, warm, two, single),
        "nl-mem-2t": Measured("nonllama_memory", [texts], warm, two, {**single, "POLARS_MAX_THREADS": "2"}),
        "dt-stage-1": Measured("datatrove_stage", [stage("dt-1", 1)], warm, one, cli, log),
        "nl-stage-1": Measured("nonllama_stage", [stage("nl-1", 1)], warm, one, cli),
        "dt-stage-2": Measured("datatrove_stage", [stage("dt-2", 2)], warm, two, cli, log),
        "nl-stage-2": Measured("nonllama_stage", [stage("nl-2", 2)], warm, two, cli),
    }
    try:
        for row in rows.values():
            row.ready()
        # the rows take turns, each round in another order: load from elsewhere hits them alike
        names = list(rows)
        for r in range(repeat):
            for name in names[r % len(names):] + names[: r % len(names)]:
                rows[name].round()
    finally:
        for row in rows.values():
            row.close()
    print(f"after: {load()}")
    t = {k: min(row.walls) for k, row in rows.items()}
    c = {k: min(row.cpus) for k, row in rows.items()}

    kept_dt, kept_nl = rows["dt-mem-1"].first[0], rows["nl-mem-1"].first[0]
    same_2 = join_batches(rows["dt-mem-2"].first, 2) == kept_dt and join_batches(rows["nl-mem-2"].first, 2) == kept_nl
    pairs = list(zip(kept_dt, kept_nl, strict=True))
    nl_kept = {k: json.loads((outs[k] / "_manifest.json").read_text())["rows_out"] for k in ("nl-1", "nl-2")}
    dt_kept = {k: parquet_rows(outs[k] / "kept", "*.parquet") for k in ("dt-1", "dt-2")}

    table = [
        ("1", "in memory, 1 process", "dt-mem-1", "nl-mem-1"),
        ("1", "stage: Parquet in, filter, Parquet out; 1 worker / task", "dt-stage-1", "nl-stage-1"),
        ("2", "in memory, 2 processes (nonllama: 1 polars thread each)", "dt-mem-2", "nl-mem-2"),
        ("2", "  nonllama as 1 process with 2 polars threads (reference)", "dt-mem-2", "nl-mem-2t"),
        ("2", "stage: 2 workers / 2 tasks", "dt-stage-2", "nl-stage-2"),
    ]
    print(f"{'cores':<6}{'what':<58}{'wall s: dt':>11}{'nl':>7}{'nl/dt':>7}{'CPU s: dt':>11}{'nl':>7}{'nl/dt':>7}")
    for cores, what, dt, nl in table:
        print(f"{cores:<6}{what:<58}{t[dt]:>11.2f}{t[nl]:>7.2f}{t[dt] / t[nl]:>7.2f}"
              f"{c[dt]:>11.2f}{c[nl]:>7.2f}{c[dt] / c[nl]:>7.2f}")
    print("nl/dt: nonllama's throughput (docs/s) over datatrove's, from wall time; CPU: from CPU seconds of every "
          "process involved (the efficiency, whatever the load)")
    print(f"ratio nonllama / datatrove docs/s, 1 core: in memory {t['dt-mem-1'] / t['nl-mem-1']:.2f}, "
          f"stage {t['dt-stage-1'] / t['nl-stage-1']:.2f}; 2 cores: in memory {t['dt-mem-2'] / t['nl-mem-2']:.2f}, "
          f"stage {t['dt-stage-2'] / t['nl-stage-2']:.2f}  (goal: 2.00 in both)")
    print(f"scaling 2 cores / 1 core (wall): datatrove in memory {t['dt-mem-1'] / t['dt-mem-2']:.2f}, stage "
          f"{t['dt-stage-1'] / t['dt-stage-2']:.2f}; nonllama in memory {t['nl-mem-1'] / t['nl-mem-2']:.2f} "
          f"(1 process, 2 polars threads: {t['nl-mem-1'] / t['nl-mem-2t']:.2f}), stage "
          f"{t['nl-stage-1'] / t['nl-stage-2']:.2f}  (ideal 2.00)")
    agree = sum(a == b for a, b in pairs) / len(pairs)
    print(f"decisions in memory: agreement {agree:.1%} (kept: datatrove {sum(kept_dt):,}, nonllama {sum(kept_nl):,}; "
          f"by datatrove only {sum(a and not b for a, b in pairs):,}, by nonllama only "
          f"{sum(b and not a for a, b in pairs):,}); 2 processes decide as 1: {same_2}; stage: kept by nonllama "
          f"{nl_kept['nl-1']:,} (2 workers {nl_kept['nl-2']:,}), by datatrove {dt_kept['dt-1']:,} (2 tasks "
          f"{dt_kept['dt-2']:,})")


# ------------------------------------------------------------------ --profile


def _profiled(texts: list[str]) -> list[bool]:
    """The profiled loop (a name of its own, for picking its samples out of py-spy's)."""
    return nonllama_memory(texts)


def _profile_child(texts_file: str, out: str | None) -> None:
    """filter_batch over the texts after a warm-up pass, under cProfile when `out` is given (else timed)."""
    import cProfile

    import polars as pl

    texts = pl.read_parquet(texts_file)["text"].to_list()
    # warm-up: a whole pass, so that one-off costs (imports, regex compilation, the word-hash
    # powers cache growing to the largest batch) stay out of the steady state profiled next
    start = time.perf_counter()
    nonllama_memory(texts)
    cold = time.perf_counter() - start
    if out is None:
        start = time.perf_counter()
        _profiled(texts)
        print(f"  (py-spy run: the first pass {cold:.2f}s, the profiled one {time.perf_counter() - start:.2f}s)")
        return
    print(f"  first pass, one-off costs included: {cold:.2f}s")
    profiler = cProfile.Profile()
    profiler.enable()
    _profiled(texts)
    profiler.disable()
    profiler.dump_stats(out)


# where filter_batch's time goes, by what the code computes (cumulative times of these functions)
AREAS = [
    ("C4 line cleaning + C4 document rules", "clean_lines"),
    ("words: the token table (_words_by_class)", "_words_by_class"),
    ("Gopher repetition: word n-grams (_ngram_chain)", "_ngram_chain"),
    ("lines/paragraphs: Gopher dup lines+paras, bullets, ellipsis lines; FineWeb (_line_values)", "_line_values"),
]


def profile(work: Path, texts: list[str]) -> None:
    import pstats

    import polars as pl

    texts_file = work / "texts.parquet"
    pl.DataFrame({"text": texts}).write_parquet(texts_file)
    cpu = sorted(os.sched_getaffinity(0))[0]
    env = {**os.environ, "POLARS_MAX_THREADS": "1", "NONLLAMA_NO_PROGRESS": "1"}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")

    def child(out: str | None) -> list[str]:
        return [sys.executable, "-c", f"from bench.filter import _profile_child; _profile_child({str(texts_file)!r}, {out!r})"]

    stats_file = work / "filter.prof"
    subprocess.run(["taskset", "-c", str(cpu), *child(str(stats_file))], env=env, check=True)
    entries = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]

    def cum(func: str) -> float:
        return sum(v[3] for k, v in entries.items() if k[2] == func and "bench" not in k[0] or
                   k[2] == func and func == "_profiled")

    total = cum("_profiled")
    print(f"cProfile: filter_batch over {len(texts):,} documents in batches of {BATCH_ROWS:,}, 1 core, 1 polars thread "
          f"(CPU {cpu}): {total:.2f}s with cProfile's overhead")
    print(f"  {'where the time goes (cumulative time of the function)':<92}{'s':>6}{'share':>8}")
    rows = [(what, cum(func)) for what, func in AREAS]
    rows.append(("rule_values' own expressions: standalone symbols, '#', ellipses, newlines, the values frame",
                 cum("rule_values") - sum(cum(f) for _, f in AREAS[1:])))
    rows.append(("decisions (first_failing_rule)", cum("first_failing_rule")))
    rows.append(("filter_batch's own: the filter_values struct, the kept/rejected split",
                 cum("filter_batch") - cum("clean_lines") - cum("rule_values") - cum("first_failing_rule")))
    rows.append(("the bench loop around it: polars batch from the texts, kept ids", total - cum("filter_batch")))
    for what, seconds in rows:
        print(f"  {what:<92}{seconds:>6.2f}{seconds / total:>8.1%}")
    print(f"  {'native calls by own time (the work polars, numpy and str do)':<92}{'s':>6}{'share':>8}")
    native = sorted(((v[2], k) for k, v in entries.items() if k[0] == "~"), reverse=True)
    for own, (_, _, func) in native[:8]:
        print(f"  {func[:90]:<92}{own:>6.2f}{own / total:>8.1%}")

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy not installed (pip install py-spy): no profile by source line")
        return
    raw = work / "filter.pyspy.txt"
    run = subprocess.run(["taskset", "-c", str(cpu), spy, "record", "--idle", "-r", "200", "-f", "raw", "-o", str(raw),
                          "--", *child(None)], env=env, check=True, capture_output=True, text=True)
    print("\n".join(line for line in run.stdout.splitlines() if line.strip() and not line.startswith("py-spy>")))
    # each sample of the profiled loop by its innermost frame in nonllama's filter code: the line
    # whose polars / numpy call is running (polars runs on its own thread: --idle keeps the
    # samples of the Python thread waiting for it)
    lines: dict[str, int] = {}
    samples = 0
    for row in raw.read_text().splitlines():
        stack, _, count = row.rpartition(" ")
        frames = stack.split(";")
        if not any(f.startswith("_profiled ") for f in frames):
            continue
        samples += int(count)
        ours = [f for f in frames if "pipeline/filter.py" in f or "pipeline/filter_rules.py" in f]
        key = ours[-1] if ours else "(the bench loop: batch building, kept ids)"
        lines[key] = lines.get(key, 0) + int(count)
    print(f"py-spy: {samples:,} samples of the same loop (200/s), by the innermost line of filter.py / filter_rules.py:")
    sources: dict[str, list[str]] = {}
    for key, count in sorted(lines.items(), key=lambda kv: -kv[1])[:20]:
        code = ""
        if key.endswith(")") and ":" in key:
            file, _, line = key.rsplit("(", 1)[1].rstrip(")").rpartition(":")
            path = Path(root) / "nonllama" / "pipeline" / Path(file).name
            if path.exists() and line.isdigit():
                src = sources.setdefault(str(path), path.read_text().splitlines())
                code = src[int(line) - 1].strip()[:64]
        where = key.split(" (")[0] + ":" + key.rsplit(":", 1)[-1].rstrip(")") if key.endswith(")") else key
        print(f"  {count / samples:>6.1%}  {where[:40]:<40}  {code}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-docs", type=int, default=40_000,
                        help="documents to run through both (an even spread; the shared corpora hold about 32,000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds of each; the best counts")
    parser.add_argument("--parts", type=int, default=16, help="Parquet parts of the stage rows' input")
    parser.add_argument("--stage-copies", type=int, default=3,
                        help="copies of the documents in the stage rows' input (so that starting a pool is amortized)")
    parser.add_argument("--profile", action="store_true", help="instead: where nonllama's filter time goes")
    args = parser.parse_args(argv)
    os.environ.setdefault("NONLLAMA_NO_PROGRESS", "1")
    try:
        import datatrove  # noqa: F401
    except ModuleNotFoundError:
        print("datatrove is not installed: pip install -e '.[bench]'")
        return 1
    with tempfile.TemporaryDirectory(prefix="nonllama-bench-filter-") as tmp:
        texts = load_documents(Path(tmp) / "load", args.max_docs)
        if args.profile:
            profile(Path(tmp), texts)
        else:
            bench(Path(tmp), texts, args.repeat, args.parts, args.stage_copies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
