"""`nonllama download`: every record is accounted for, ids are stable, errors are one line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from nonllama.pipeline.io import MANIFEST_NAME, read_manifest, read_parts


def write_jsonl_with_bad_records(path: Path) -> None:
    lines = [
        json.dumps({"id": "a", "text": "first good document", "title": "A"}).encode(),
        b'{"text": "malformed, no closing brace"',
        json.dumps({"text": "second good document"}).encode(),
        json.dumps({"body": "no text field"}).encode(),
        json.dumps({"text": 42}).encode(),
        b'{"text": "bad bytes \xff\xfe here"}',
        json.dumps({"text": "third good document"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_every_record_is_accounted_for_with_quarantine(tmp_path, cli):
    src = tmp_path / "docs.jsonl"
    write_jsonl_with_bad_records(src)
    out = tmp_path / "raw"
    result = cli("download", src, "-o", out)
    m = read_manifest(out)
    assert (m["rows_in"], m["rows_out"], m["rows_removed"]) == (7, 3, 4)
    assert sum(m["drop_reasons"].values()) == 4
    assert any("malformed JSON" in r for r in m["drop_reasons"])
    docs = read_parts(out)
    assert docs["text"].to_list() == [
        "first good document",
        "second good document",
        "third good document",
    ]
    assert docs["source"].unique().to_list() == ["docs"]
    assert json.loads(docs["meta"][0]) == {"source_id": "a", "title": "A"}
    quarantined = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [q["line"] for q in quarantined] == [2, 4, 5, 6]
    assert all(q["file"].endswith("docs.jsonl") for q in quarantined)
    assert "quarantine" in result.output and "4" in result.output


def test_strict_names_file_and_line(tmp_path, cli):
    src = tmp_path / "docs.jsonl"
    write_jsonl_with_bad_records(src)
    result = cli("download", src, "-o", tmp_path / "raw", "--strict", expect=2)
    assert "docs.jsonl:2" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "raw" / MANIFEST_NAME).exists()


def test_ids_are_stable_and_rerun_is_up_to_date(tmp_path, cli):
    src = tmp_path / "stories"
    src.mkdir()
    (src / "a.txt").write_text("one story\n\nanother story\n\n\nthird story\n")
    (src / "b.txt.gz").write_bytes(gzip.compress(b"gz story one\n\ngz story two\n"))
    out = tmp_path / "raw"
    cli("download", src, "-o", out, "--split-on", "blank-line")
    first = read_parts(out)
    assert first["id"].to_list() == [
        "stories/a.txt#0",
        "stories/a.txt#1",
        "stories/a.txt#2",
        "stories/b.txt.gz#0",
        "stories/b.txt.gz#1",
    ]
    again = cli("download", src, "-o", out, "--split-on", "blank-line")
    assert "up to date" in again.output
    cli("download", src, "-o", out, "--split-on", "blank-line", "--force")
    assert read_parts(out).equals(first)
    # a changed option reruns
    changed = cli("download", src, "-o", out)
    assert "up to date" not in changed.output
    assert read_parts(out).height == 2


def test_workers_give_identical_parts(tmp_path, cli):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}.jsonl").write_text(
            "".join(json.dumps({"text": f"doc {i}-{j}"}) + "\n" for j in range(30))
        )
    cli("download", src, "-o", tmp_path / "one", "--part-rows", "40")
    cli("download", src, "-o", tmp_path / "two", "--part-rows", "40", "--workers", "2")
    one, two = read_manifest(tmp_path / "one"), read_manifest(tmp_path / "two")
    assert one["parts"] == two["parts"] and len(one["parts"]) == 5
    assert one["rows_out"] == 150


def test_name_and_max_docs(tmp_path, cli):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.csv"
    a.write_text("".join(json.dumps({"text": f"a{i}"}) + "\n" for i in range(10)))
    b.write_text("text,lang\nhello,en\nworld,en\n")
    cli(
        "download",
        a,
        b,
        "-o",
        tmp_path / "raw",
        "--name",
        "alpha",
        "--name",
        "beta",
        "--max-docs",
        "4",
    )
    docs = read_parts(tmp_path / "raw")
    assert docs.group_by("source").len().sort("source").rows() == [("alpha", 4), ("beta", 2)]
    bad = cli(
        "download",
        a,
        b,
        "-o",
        tmp_path / "raw2",
        "--name",
        "x",
        "--name",
        "y",
        "--name",
        "z",
        expect=2,
    )
    assert "--name" in bad.output


@pytest.mark.parametrize(
    "source, message",
    [("does/not/exist.jsonl", "does/not/exist.jsonl"), ("ftp://host/file.txt", "unknown scheme")],
)
def test_bad_sources_are_one_line_errors(tmp_path, cli, source, message):
    result = cli("download", source, "-o", tmp_path / "raw", expect=2)
    assert message in result.output and "Traceback" not in result.output


def test_sample_has_english_and_chinese(tmp_path, cli):
    cli("download", "sample", "-o", tmp_path / "raw")
    docs = read_parts(tmp_path / "raw")
    assert docs.height >= 300
    assert {"sample-en", "sample-zh"} <= set(docs["source"].unique())
    assert docs["id"].n_unique() == docs.height


def test_shared_corpora_every_record_accounted(tmp_path, cli, corpora):
    """The issue's acceptance command, on the real slices."""
    out = tmp_path / "raw"
    dump = next((corpora / "enwiki_dump").glob("*.bz2"))
    cli(
        "download",
        corpora / "zhwiki_cmrc2018" / "cmrc2018_contexts.jsonl",
        corpora / "tinystories_en",
        dump,
        "-o",
        out,
        "--workers",
        "2",
    )
    m = read_manifest(out)
    assert m["rows_out"] + m["rows_removed"] == m["rows_in"]
    per_source = m["per_source"]
    assert per_source["cmrc2018_contexts"]["rows_in"] == sum(
        1
        for line in (corpora / "zhwiki_cmrc2018" / "cmrc2018_contexts.jsonl").open()
        if line.strip()
    )
    assert per_source["tinystories_en"]["rows_out"] == 4  # one document per file without --split-on
    assert per_source["enwiki-latest-pages-articles1"]["rows_out"] == 106  # redirects skipped
    docs = read_parts(out)
    assert docs["id"].n_unique() == docs.height
    wiki = docs.filter(pl.col("source") == "enwiki-latest-pages-articles1")
    assert wiki["text"].str.contains(r"\[\[|\{\{").sum() == 0


def hub_parquet(texts: list[str]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table({"text": texts, "url": [f"u{i}" for i in range(len(texts))]}), sink)
    return sink.getvalue()


def test_hub_dataset_streams_parquet_and_rerun_fetches_nothing(tmp_path, cli, fake_hub):
    fake_hub.add_dataset(
        "org/stories",
        {
            "data/train-00000-of-00002.parquet": hub_parquet([f"train a{i}" for i in range(5)]),
            "data/train-00001-of-00002.parquet": hub_parquet([f"train b{i}" for i in range(5)]),
            "data/validation-00000-of-00001.parquet": hub_parquet(["val"]),
        },
    )
    out = tmp_path / "raw"
    cli("download", "hf:org/stories", "--split", "train", "-o", out, "--workers", "2")
    docs = read_parts(out)
    assert docs.height == 10 and docs["source"].unique().to_list() == ["stories"]
    assert docs["id"][0] == "stories/data/train-00000-of-00002.parquet#0"
    assert json.loads(docs["meta"][0]) == {"url": "u0"}
    def file_downloads() -> int:
        return sum(1 for r in fake_hub.log if r["server"] == "cdn" and r["method"] == "GET")

    assert file_downloads() == 2
    assert "up to date" in cli("download", "hf:org/stories", "--split", "train", "-o", out).output
    # a forced rerun reads the cached files: nothing is fetched again
    cli("download", "hf:org/stories", "--split", "train", "-o", out, "--force")
    assert file_downloads() == 2
    assert read_parts(out).equals(docs)
    limited = cli("download", "hf:org/stories", "--split", "train", "-o", tmp_path / "few", "--max-docs", "3")
    assert read_parts(tmp_path / "few").height == 3, limited.output


def test_unknown_hub_dataset_is_a_one_line_error(tmp_path, cli, fake_hub):
    result = cli("download", "hf:org/missing", "-o", tmp_path / "raw", expect=2)
    assert "org/missing" in result.output and "Traceback" not in result.output


def test_url_source(tmp_path, cli, fake_hub):
    fake_hub.add_file("docs.jsonl.gz", gzip.compress(b'{"text": "from the web"}\n{"text": "second"}\n'))
    cli("download", f"{fake_hub.url}/files/docs.jsonl.gz", "-o", tmp_path / "raw")
    docs = read_parts(tmp_path / "raw")
    assert docs["text"].to_list() == ["from the web", "second"]
    assert docs["source"][0] == "docs"


@pytest.mark.parametrize(
    "validators, new_content",
    [
        # a change of the same size: only the validators can show it
        (True, b'{"text": "final version"}\n'),
        # without validators a change of size is all that can be seen
        (False, b'{"text": "second version"}\n{"text": "and more"}\n'),
    ],
    ids=["etag-and-date", "no-validators"],
)
def test_url_source_is_fetched_again_only_when_it_changed(tmp_path, cli, fake_hub, validators, new_content):
    name = "docs.jsonl"
    url = fake_hub.add_file(name, b'{"text": "first version"}\n', etag=validators, last_modified=validators)
    out = tmp_path / "raw"

    def requests(method: str) -> int:
        return fake_hub.hits(f"/files/{name}", method)

    cli("download", url, "-o", out)
    assert requests("GET") == 1
    # unchanged: one HEAD says so; nothing is fetched, nothing redone
    assert "up to date" in cli("download", url, "-o", out).output
    assert (requests("GET"), requests("HEAD")) == (1, 2)
    # --force fetches it again
    cli("download", url, "-o", out, "--force")
    assert requests("GET") == 2
    assert read_parts(out)["text"].to_list() == ["first version"]

    fake_hub.change_file(name, new_content)
    changed = cli("download", url, "-o", out)
    assert "up to date" not in changed.output and requests("GET") == 3
    expected = [json.loads(line)["text"] for line in new_content.splitlines()]
    assert read_parts(out)["text"].to_list() == expected
    recorded = read_manifest(out)["input"]["urls"][url]
    assert recorded["size"] == len(new_content)
    assert (recorded["etag"] is not None) == validators
    # and the new version, once read, is up to date
    assert "up to date" in cli("download", url, "-o", out).output and requests("GET") == 3


def test_url_source_interrupted_then_rerun_resumes(tmp_path, cli, fake_hub):
    body = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(5000)).encode()
    url = fake_hub.add_file("big.jsonl", body, cut_at=len(body) // 2)
    out = tmp_path / "raw"
    failed = cli("download", url, "-o", out, expect=2)
    assert url in failed.output and "resume" in failed.output and "Traceback" not in failed.output

    fake_hub.files["big.jsonl"].cut_at = None  # the network is back
    cli("download", url, "-o", out)
    resumed = fake_hub.answered("/files/big.jsonl")[-1]
    assert resumed["headers"]["range"] == f"bytes={len(body) // 2}-" and resumed["status"] == 206
    assert read_parts(out)["text"].to_list() == [f"document {i}" for i in range(5000)]


def test_missing_url_source_is_a_one_line_error(tmp_path, cli, fake_hub):
    url = f"{fake_hub.url}/files/gone.jsonl"
    result = cli("download", url, "-o", tmp_path / "raw", expect=2)
    assert f"HTTP 404 Not Found for {url}" in result.output and "Traceback" not in result.output


def test_help_lists_the_stages(cli):
    output = cli("--help").output
    assert "download" in output and "normalize" in output
    assert "nonllama" in cli("--version").output


def test_unsupported_files_in_a_directory_are_reported(tmp_path, cli):
    src = tmp_path / "mixed"
    src.mkdir()
    (src / "a.jsonl").write_text('{"text": "kept"}\n')
    (src / "scan.pdf").write_bytes(b"%PDF-1.4 not read")
    result = cli("download", src, "-o", tmp_path / "raw")
    assert "scan.pdf" in result.output
    assert read_manifest(tmp_path / "raw")["skipped_files"] == [f"{src / 'scan.pdf'}: no reader for this file type"]
