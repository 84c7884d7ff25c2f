"""scaling: normalize, filter, dedup and pack on local 1 worker, local 2 workers and Ray (2 CPUs).

Throughput ratios to local 1 worker, all measured in this run, on one corpus: the shared corpora
(../shared/corpora; else the built-in sample) `--copies` times under distinct source names (as
bench/normalize.py and bench/pack.py build theirs), a line a document (the Makefile's setting
for real text; People's Daily has no blank lines), in parts of 4,000 documents, so that there
are many parts for 2 workers to share and that starting a worker (a spawned interpreter
importing the stage: ~0.7 s, a Ray worker about the same) is small beside the work.

Each stage reads the same input for every executor, made once by local 1 worker: normalize
reads download's output, filter normalize's, dedup filter's (the copies are exact duplicates:
dedup keeps one document of each group of copies, a heavy-duplication workload), pack filter's
(with a tokenizer trained on it once, untimed; dedup's output would be one copy). Default
configs (filter: language id included). Every run uses `force=True` (its output emptied and
rewritten, as a changed config would): `LocalExecutor(1)` runs its tasks in this process,
`LocalExecutor(2)` in this process and one spawned helper, `RayExecutor(workers=2)` as Ray tasks of 1 CPU on a Ray
instance this bench starts once, with 2 CPUs, before the first measurement (its start-up is
printed apart and is in none of the stage times). One executor of each kind serves the whole
bench, so the local helper (started at local-2's first pass and kept, ~0.7 s) and Ray's worker
processes start in the first round only, which the best of --repeat leaves out; `nonllama
<stage> --workers 2` starts its helper once per stage. Every worker gets one polars thread (`--polars-threads`, default 1:
Ray's tasks and local helpers are given one; this process, the local worker, is given the same
here, whereas `nonllama <stage>` leaves polars its default of a thread per core in it), so
"1 worker" is one core's worth and 2 workers can at best double it. The executors take turns
--repeat times, each round in another order; the best wall time and the best CPU time of each
count (CPU, from /proc: this process and its helper for local; for Ray also Ray's daemons and
workers: on a shared machine the steadier figure of what a run costs). The outputs of the
three executors are compared file by file (every file but the manifest, whose timings differ,
and the manifests without timings and input paths).

Ray's overhead: the built-in sample through the whole funnel (download sample, normalize,
filter, dedup, train-tokenizer, pack; the Makefile's settings), on the already-started Ray
instance against local 1 worker: seconds per stage, total, and the ratio, best of --repeat.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.filter import tree_cpu

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
EXECUTORS = ("local-1", "local-2", "ray-2")


def corpus_sources() -> list[str]:
    if not SHARED.is_dir():
        return ["sample"]
    return [str(SHARED / name) for name in
            ("peoples_daily_1998", "zhwiki_cmrc2018", "tinystories_en", "wikitext2_en", "webcrawl")]


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def tree(directory: Path) -> dict[str, str]:
    """sha256 of every file below `directory` but the manifest, by relative path."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != "_manifest.json"}


def comparable_manifest(directory: Path) -> dict:
    """The manifest without what differs between two runs of the same work: timings, paths."""
    m = json.loads((directory / "_manifest.json").read_text())
    m.pop("wall_time_s", None)
    for key in ("input", "tokenizer"):
        if isinstance(m.get(key), dict):
            m[key].pop("dir", None)
    return m


def identical(directories: list[Path]) -> bool:
    first, *others = directories
    return all(tree(o) == tree(first) and comparable_manifest(o) == comparable_manifest(first) for o in others)


def is_ray(cmdline: str) -> bool:
    return "/ray/" in cmdline or cmdline.startswith("ray::")


def cpu_seconds(kind: str) -> float:
    """CPU seconds so far of what runs the tasks (from /proc): this process and its descendants,
    for `local` without Ray's processes (the Ray instance idles meanwhile), for `ray` with them
    (its daemons and workers: Ray's own work is part of its cost)."""
    return tree_cpu() if kind == "ray" else tree_cpu(skip=is_ray)


def best_of_turns(runs: dict[str, tuple[str, Callable[[], Any]]], repeat: int) -> dict[str, tuple[float, float]]:
    """Best wall and best CPU seconds of each run (kind, fn); the runs take turns, each round in
    another order, so that load from elsewhere hits them alike."""
    names = list(runs)
    best = {name: (float("inf"), float("inf")) for name in names}
    for r in range(repeat):
        for name in names[r % len(names):] + names[: r % len(names)]:
            kind, fn = runs[name]
            cpu, start = cpu_seconds(kind), time.perf_counter()
            fn()
            wall, cpu = time.perf_counter() - start, cpu_seconds(kind) - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


# ----------------------------------------------------------------------------- the stages


def stage_runs() -> list[tuple[str, Callable[[Any, Path, Path], Any], str]]:
    """(stage, run(executor, out_dir, in_dir), the stage it reads) for the measured stages."""
    from nonllama.pipeline.dedup import DedupConfig, run_dedup
    from nonllama.pipeline.filter import FilterConfig, run_filter
    from nonllama.pipeline.normalize import NormalizeConfig, run_normalize
    from nonllama.pipeline.pack import PackConfig, run_pack

    def pack(ex, out: Path, inp: Path):
        return run_pack(inp, inp.parent / "tokenizer", out, PackConfig(val_fraction=0.005), executor=ex, force=True)

    # pack reads filter's output, not dedup's: the copies are exact duplicates, of which dedup
    # keeps one (pack reads any document stage; bench/pack.py packs download's output)

    return [
        ("normalize", lambda ex, out, inp: run_normalize(inp, out, NormalizeConfig(), executor=ex, force=True), "raw"),
        ("filter", lambda ex, out, inp: run_filter(inp, out, FilterConfig(), executor=ex, force=True), "normalized"),
        ("dedup", lambda ex, out, inp: run_dedup(inp, out, DedupConfig(threshold=0.8), executor=ex, force=True), "filtered"),
        ("pack", pack, "filtered"),
    ]


OUT_DIR = {"normalize": "normalized", "filter": "filtered", "dedup": "deduped", "pack": "packed"}


def bench_corpus(work: Path, executors: dict[str, Any], copies: int, repeat: int, vocab_size: int) -> None:
    from nonllama.pipeline.download import DownloadConfig, run_download
    from nonllama.pipeline.executors import LocalExecutor
    from nonllama.pipeline.tokenizer import TokenizerConfig, run_train_tokenizer

    base = corpus_sources()
    sources = [s for _ in range(copies) for s in base]
    names = [f"{Path(s).name}-{i // len(base)}" for i, s in enumerate(sources)]
    t0 = time.perf_counter()
    prep = work / "prep"  # each stage's input, made once by local 1 worker
    # a line a document (the Makefile's setting for real text): People's Daily has no blank lines,
    # split on blank lines each copy of it would be one 5.5 MB document, one task that cannot share
    run_download(DownloadConfig(sources, names=names, split_on=r"\n", part_rows=4000), prep / "raw",
                 executor=LocalExecutor(2))
    raw = json.loads((prep / "raw" / "_manifest.json").read_text())
    sizes = sorted(p.get("rows", 0) for p in raw["parts"])
    print(f"corpus: {raw['rows_out']:,} documents, {raw['chars_out'] / 1e6:.1f}M characters in {len(raw['parts'])} "
          f"parts ({sizes[0]:,}..{sizes[-1]:,} documents each); {copies} copies of {len(base)} sources")
    rows: list[tuple[str, int, dict[str, tuple[float, float]], bool]] = []
    for stage, run, reads in stage_runs():
        inp = prep / reads
        if stage == "pack":  # the tokenizer pack encodes with, trained once (untimed)
            run_train_tokenizer(inp, prep / "tokenizer",
                                TokenizerConfig(vocab_size=vocab_size, threads=2, sample_bytes=20_000_000),
                                executor=LocalExecutor(2))
        docs = json.loads((inp / "_manifest.json").read_text())["rows_out"]
        outs = {name: work / name / OUT_DIR[stage] for name in EXECUTORS}
        for out in outs.values():
            out.parent.mkdir(parents=True, exist_ok=True)
        times = best_of_turns({name: (executors[name].kind, partial(run, executors[name], outs[name], inp))
                               for name in EXECUTORS}, repeat)
        same = identical([outs[n] for n in EXECUTORS])
        rows.append((stage, docs, times, same))
        print(f"  {stage}: {', '.join(f'{n} {w:.2f}s ({c:.2f} CPU s)' for n, (w, c) in times.items())}; "
              f"identical: {same}; {load()}", flush=True)
        # the next stage reads local 1 worker's output
        target = prep / OUT_DIR[stage]
        if not target.exists():
            outs["local-1"].rename(target)
    print(f"prepared and measured in {time.perf_counter() - t0:.0f}s; after: {load()}")
    print(f"{'':<21}{'wall seconds':^27}{'throughput / local-1':^22}{'CPU seconds':^27}")
    print(f"{'stage':<11}{'docs in':>10}{'local-1':>9}{'local-2':>9}{'ray-2':>9}{'local-2':>11}{'ray-2':>11}"
          f"{'local-1':>9}{'local-2':>9}{'ray-2':>9}  identical bytes")
    for stage, docs, t, same in rows:
        (w1, c1), (w2, c2), (wr, cr) = t["local-1"], t["local-2"], t["ray-2"]
        print(f"{stage:<11}{docs:>10,}{w1:>9.2f}{w2:>9.2f}{wr:>9.2f}{w1 / w2:>11.2f}{w1 / wr:>11.2f}"
              f"{c1:>9.2f}{c2:>9.2f}{cr:>9.2f}  {same}")
    print("throughput / local-1: local 1 worker's wall time over the executor's (ideal 2.00 on 2 idle cores); "
          "CPU seconds: every process that ran the stage (local: this one and its helper; ray: this one, Ray's "
          "daemons and workers), whatever the load")


def bench_sample(work: Path, executors: dict[str, Any], repeat: int) -> None:
    """Ray's overhead on the built-in sample: the funnel on Ray against local 1 worker."""
    from nonllama.pipeline.dedup import DedupConfig, run_dedup
    from nonllama.pipeline.download import DownloadConfig, run_download
    from nonllama.pipeline.filter import FilterConfig, run_filter
    from nonllama.pipeline.normalize import NormalizeConfig, run_normalize
    from nonllama.pipeline.pack import PackConfig, run_pack
    from nonllama.pipeline.tokenizer import TokenizerConfig, run_train_tokenizer

    # the Makefile's settings for the sample (`make all`)
    steps: list[tuple[str, Callable[[Any, Path], Any]]] = [
        ("download", lambda ex, w: run_download(DownloadConfig(["sample"]), w / "raw", executor=ex, force=True)),
        ("normalize", lambda ex, w: run_normalize(w / "raw", w / "normalized", NormalizeConfig(), executor=ex, force=True)),
        ("filter", lambda ex, w: run_filter(w / "normalized", w / "filtered", FilterConfig(), executor=ex, force=True)),
        ("dedup", lambda ex, w: run_dedup(w / "filtered", w / "deduped", DedupConfig(threshold=0.8), executor=ex, force=True)),
        ("train-tokenizer", lambda ex, w: run_train_tokenizer(
            w / "deduped", w / "tokenizer", TokenizerConfig(vocab_size=4096, model_type="bpe", sample_bytes=10**9),
            executor=ex, force=True)),
        ("pack", lambda ex, w: run_pack(w / "deduped", w / "tokenizer", w / "packed", PackConfig(val_fraction=0.005),
                                        executor=ex, force=True)),
    ]
    names = ("local-1", "ray-2")
    best = {n: {s: float("inf") for s, _ in steps} for n in names}
    for r in range(repeat):
        for name in names[r % 2:] + names[: r % 2]:
            for stage, step in steps:
                start = time.perf_counter()
                step(executors[name], work / f"sample-{name}")
                best[name][stage] = min(best[name][stage], time.perf_counter() - start)
    same = all(identical([work / f"sample-{n}" / d for n in names])
               for d in ("raw", "normalized", "filtered", "deduped", "tokenizer", "packed"))
    docs = json.loads((work / "sample-local-1" / "raw" / "_manifest.json").read_text())["rows_out"]
    print(f"Ray's overhead on the built-in sample ({docs:,} documents), the whole funnel, best of {repeat}:")
    print(f"{'stage':<17}{'local-1 s':>10}{'ray-2 s':>9}{'ray - local s':>15}{'ray/local':>11}")
    for stage, _ in steps:
        a, b = best["local-1"][stage], best["ray-2"][stage]
        print(f"{stage:<17}{a:>10.2f}{b:>9.2f}{b - a:>15.2f}{b / a:>11.2f}")
    a, b = sum(best["local-1"].values()), sum(best["ray-2"].values())
    print(f"{'total':<17}{a:>10.2f}{b:>9.2f}{b - a:>15.2f}{b / a:>11.2f}")
    print(f"ray/local: wall time ratio (above 1: Ray is slower); identical bytes, every stage: {same}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="copies of the corpora to run over")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is reported")
    parser.add_argument("--vocab-size", type=int, default=8000, help="tokenizer pack encodes with")
    parser.add_argument("--polars-threads", type=int, default=1,
                        help="polars threads of this process, the local worker (0: polars' default)")
    parser.add_argument("--skip-corpus", action="store_true", help="only Ray's overhead on the sample")
    parser.add_argument("--skip-sample", action="store_true", help="only the scaling table")
    args = parser.parse_args(argv)
    wanted = str(args.polars_threads) if args.polars_threads else None
    if os.environ.get("POLARS_MAX_THREADS") != wanted and "polars" in sys.modules:
        # polars sizes its thread pool once: run in a fresh interpreter with the setting (as
        # `make bench` does, after benches that imported polars)
        env = {k: v for k, v in os.environ.items() if k != "POLARS_MAX_THREADS"}
        env.update({"POLARS_MAX_THREADS": wanted} if wanted else {})
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        return subprocess.run([sys.executable, "-m", "bench.scaling", *(argv if argv is not None else sys.argv[1:])],
                              env=env, cwd=root).returncode
    if wanted:
        os.environ["POLARS_MAX_THREADS"] = wanted
    else:
        os.environ.pop("POLARS_MAX_THREADS", None)
    os.environ.setdefault("NONLLAMA_NO_PROGRESS", "1")
    try:
        import ray  # noqa: F401
    except ModuleNotFoundError:
        print("ray is not installed: pip install -e '.[ray]'")
        return 1
    import polars as pl

    from nonllama.pipeline.executors import LocalExecutor, RayExecutor

    print(f"before: {load()}; polars threads in this process: {pl.thread_pool_size()}")
    with tempfile.TemporaryDirectory(prefix="nonllama-bench-scaling-") as tmp:
        work = Path(tmp).resolve()  # Ray needs absolute paths
        ray_executor = RayExecutor(workers=2)
        start = time.perf_counter()
        ray_executor.connect()
        print(f"Ray start-up (ray.init, a local instance of {ray_executor.workers} CPUs): "
              f"{time.perf_counter() - start:.2f}s, in none of the times below")
        executors = {"local-1": LocalExecutor(1), "local-2": LocalExecutor(2), "ray-2": ray_executor}
        try:
            if not args.skip_corpus:
                bench_corpus(work, executors, args.copies, args.repeat, args.vocab_size)
            if not args.skip_sample:
                bench_sample(work, executors, args.repeat)
        finally:
            for executor in executors.values():
                executor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
