"""The stage contract: atomic parts, manifests, accounting, up-to-date checks, crashes."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from nonllama.pipeline.driver import run_shard_stage
from nonllama.pipeline.io import (
    DOCUMENT_SCHEMA,
    MANIFEST_NAME,
    Counts,
    PartWriter,
    StageError,
    atomic_write_json,
    describe_part,
    list_parts,
    part_name,
    read_parts,
    require_finished,
    run_tasks,
    write_manifest,
)


def drop_short(batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Test transform: upper-case the text, drop documents under 5 characters."""
    short = batch["text"].str.len_chars() < 5
    kept = batch.filter(~short).with_columns(pl.col("text").str.to_uppercase())
    removed = batch.filter(short).with_columns(pl.lit("too_short").alias("drop_reason"))
    return kept, removed


def explode_on_boom(batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    if batch["text"].str.contains("BOOM").any():
        raise RuntimeError("simulated crash")
    return drop_short(batch)


def make_input_stage(directory: Path, docs_per_part: list[list[str]]) -> Path:
    """A finished 'download' directory with the given texts, one list per part."""
    parts = []
    for i, texts in enumerate(docs_per_part):
        table = pa.Table.from_pylist(
            [
                {"id": f"t/{i}#{j}", "text": t, "source": "en" if j % 2 else "zh", "meta": None}
                for j, t in enumerate(texts)
            ],
            schema=DOCUMENT_SCHEMA,
        )
        with PartWriter(directory / part_name(i), DOCUMENT_SCHEMA) as w:
            w.write(table)
        parts.append(describe_part(directory / part_name(i), w.rows, w.chars))
    n = sum(len(t) for t in docs_per_part)
    counts = Counts(rows_in=n, rows_out=n)
    write_manifest(directory, stage="download", config={}, input_info={"digest": "x"}, counts=counts,
                   parts=parts, side_dir=None, started=0.0)
    return directory


TEXTS = [["hello world", "hi", "another document", "ok"], ["short", "x", "the third part"], []]


def run(tmp_path: Path, **kw):
    defaults = dict(stage="normalize", input_dir=tmp_path / "in",
                    output_dir=tmp_path / "out", side_dir_name="removed", config={"min": 5},
                    transform=drop_short, batch_rows=2)
    defaults.update(kw)
    return run_shard_stage(**defaults)


def test_kept_plus_removed_equals_input_and_manifest_says_so(tmp_path):
    make_input_stage(tmp_path / "in", TEXTS)
    result = run(tmp_path)
    m = result.manifest
    assert not result.up_to_date
    assert (m["rows_in"], m["rows_out"], m["rows_removed"]) == (7, 4, 3)
    assert m["drop_reasons"] == {"too_short": 3}
    assert m["chars_in"] == sum(len(t) for part in TEXTS for t in part)
    kept = read_parts(tmp_path / "out")
    removed = read_parts(tmp_path / "out" / "removed")
    assert kept.height + removed.height == 7
    assert set(kept["id"]) | set(removed["id"]) == {f"t/{i}#{j}" for i, p in enumerate(TEXTS) for j in range(len(p))}
    assert "HELLO WORLD" in kept["text"].to_list()
    assert set(removed["drop_reason"]) == {"too_short"}
    # one output part per input part, even the empty one, with the document schema
    assert [p.name for p in list_parts(tmp_path / "out")] == [part_name(i) for i in range(3)]
    assert m["per_source"]["zh"]["rows_in"] + m["per_source"]["en"]["rows_in"] == 7
    for key in ("stage", "version", "config", "input", "wall_time_s", "output_digest"):
        assert key in m


def test_rerun_is_up_to_date_and_config_change_reruns(tmp_path):
    make_input_stage(tmp_path / "in", TEXTS)
    first = run(tmp_path)
    assert run(tmp_path).up_to_date
    assert not run(tmp_path, force=True).up_to_date
    changed = run(tmp_path, config={"min": 6})
    assert not changed.up_to_date
    # identical output -> identical digest, so the next stage stays up to date
    assert changed.manifest["output_digest"] == first.manifest["output_digest"]


def test_two_workers_give_the_same_bytes_as_one(tmp_path):
    make_input_stage(tmp_path / "in", TEXTS)
    one = run(tmp_path, output_dir=tmp_path / "one", workers=1)
    two = run(tmp_path, output_dir=tmp_path / "two", workers=2)
    assert one.manifest["parts"] == two.manifest["parts"]  # sha256 of every part equal


def test_crash_leaves_nothing_a_later_stage_would_read_and_rerun_completes(tmp_path):
    # part 1's first batch (batch_rows=2) is written before its second one crashes
    make_input_stage(tmp_path / "in", [["fine text here"], ["kept text", "more text", "BOOM goes the part"], ["last one"]])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path, transform=explode_on_boom)
    out = tmp_path / "out"
    assert not (out / MANIFEST_NAME).exists()
    # a part is written under a temporary sibling name (".part-00001.parquet.tmp-PID") and renamed
    # when whole: the crashed part must leave neither that file nor its final name behind
    leftovers = [p.name for p in out.rglob("*") if ".tmp-" in p.name]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    assert not (out / part_name(1)).exists(), "the part that crashed was published"
    with pytest.raises(StageError, match="has not finished"):
        require_finished(out, "normalize")
    result = run(tmp_path)
    assert result.manifest["rows_in"] == 5 and (out / MANIFEST_NAME).exists()


def test_missing_input_names_the_stage_to_run(tmp_path):
    with pytest.raises(StageError, match=r"nonllama download"):
        run(tmp_path)


def test_transform_that_loses_rows_is_refused(tmp_path):
    make_input_stage(tmp_path / "in", TEXTS)

    with pytest.raises(StageError, match="removed rows"):
        run(tmp_path, transform=lose_rows)


def lose_rows(batch: pl.DataFrame):
    return batch.head(0), batch.head(0).with_columns(pl.lit("x").alias("drop_reason"))


def test_atomic_json_replaces_whole_file(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"b": 2})
    assert json.loads(target.read_text()) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_part_writer_abort_leaves_no_file(tmp_path):
    w = PartWriter(tmp_path / part_name(0), DOCUMENT_SCHEMA)
    w.write(pa.Table.from_pylist([{"id": "a", "text": "b", "source": "c", "meta": None}], schema=DOCUMENT_SCHEMA))
    w.abort()
    assert list(tmp_path.iterdir()) == []


# Pool tasks: module-level, so that the spawned helper processes can import them. Each is slow
# in the driver, so that the helper (a second or so to start) gets tasks too.


def _in_helper() -> bool:
    return multiprocessing.parent_process() is not None


def _square(task: int, report) -> int:
    if not _in_helper():
        time.sleep(0.3)
    report(1, 0)
    return task * task


def _fails_in_helper(task: int, report) -> int:
    if _in_helper():
        raise StageError(f"part {task}: unreadable")
    time.sleep(0.3)
    return task


def _dies_in_helper(task: int, report) -> int:
    if _in_helper():
        os._exit(3)
    time.sleep(0.3)
    return task


def _pool(fn, n: int, seen: list) -> list:
    return run_tasks(fn, list(range(n)), workers=2, description="test", total_docs=n,
                     on_result=lambda i, r: seen.append((i, r)))


def test_pool_gives_results_in_task_order_and_each_once_to_on_result():
    seen: list = []
    assert _pool(_square, 12, seen) == [i * i for i in range(12)]
    assert sorted(seen) == [(i, i * i) for i in range(12)]


def test_pool_raises_a_helpers_error_and_stops_taking_tasks():
    seen: list = []
    with pytest.raises(StageError, match="unreadable"):
        _pool(_fails_in_helper, 40, seen)
    assert len(seen) < 40  # the driver stopped too; it did not run the remaining tasks


def test_pool_names_the_task_a_dead_helper_was_running():
    with pytest.raises(StageError, match=r"worker process died while running task \d+ of 40 \(exit code 3"):
        _pool(_dies_in_helper, 40, [])
