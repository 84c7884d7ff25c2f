"""`nonllama pack`: token files, index, splits, mixing, determinism, digest checks, inspect."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from nonllama.pipeline.io import read_manifest, read_parts
from nonllama.pipeline.pack import repeat_factors, token_dtype
from nonllama.pipeline.tokenizer import BOS_ID, EOS_ID, load_processor


def _run(*args):
    from nonllama.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The sample in 5 parts, normalized, with a small tokenizer (shared: the slow part)."""
    work = tmp_path_factory.mktemp("pack") / "work"
    _run("download", "sample", "--workdir", work, "--part-rows", "150")
    _run("normalize", "--workdir", work)
    _run("train-tokenizer", "-i", work / "normalized", "--workdir", work, "--vocab-size", "2000", "--threads", "2")
    return work


def _pack(cli, work, out, *args, expect=0):
    return cli("pack", "-i", work / "normalized", "--workdir", work, "-o", out, *args, expect=expect)


def _assert_every_document_once_and_decodes_back(packed, work) -> tuple[dict, pl.DataFrame]:
    m = read_manifest(packed)
    index = pl.read_parquet(packed / "index.parquet")
    docs = read_parts(work / "normalized").select("id", "text", "source")
    assert sorted(index["id"]) == sorted(docs["id"])  # every document once, in one split
    sp = load_processor(work / "tokenizer" / "tokenizer.model")
    texts = dict(docs.select("id", "text").iter_rows())
    for split in ("train", "val"):
        data = np.fromfile(packed / f"{split}.bin", dtype=np.uint16)
        rows = index.filter(pl.col("split") == split)
        assert data.size == m["tokens"][split] == int((rows["length"] + 2).sum())
        # BOS and EOS only around documents: BOS before each, EOS after it
        assert np.count_nonzero(data == EOS_ID) == np.count_nonzero(data == BOS_ID) == rows.height
        for doc_id, offset, length in rows.select("id", "offset", "length").iter_rows():
            assert data[offset - 1] == BOS_ID and data[offset + length] == EOS_ID
            assert sp.decode(data[offset : offset + length].tolist()) == texts[doc_id]
    per_source = m["per_source"]
    assert sum(v["train_tokens"] + v["val_tokens"] for v in per_source.values()) == sum(m["tokens"].values())
    return m, index


def test_every_document_packed_once_and_decodes_back(tmp_path, work, cli):
    _pack(cli, work, tmp_path / "p")
    m, _ = _assert_every_document_once_and_decodes_back(tmp_path / "p", work)
    assert m["dtype"] == "uint16" and m["vocab_size"] == 2000 and m["eos_id"] == EOS_ID == 2
    assert 1 <= m["docs"]["val"] < 10  # 0.5 % of ~625, at least one


def test_a_val_fraction_no_hash_reaches_still_gives_one_val_document(tmp_path, work, cli):
    """The document with the smallest hash moves to val: train.bin, written as shards finished,
    is rewritten without it, whatever the number of workers."""
    for workers in ("1", "2"):
        _pack(cli, work, tmp_path / workers, "--val-fraction", "1e-9", "--workers", workers)
        m, index = _assert_every_document_once_and_decodes_back(tmp_path / workers, work)
        assert m["docs"]["val"] == 1 and m["per_source"][index.filter(pl.col("split") == "val")["source"][0]]["val_docs"] == 1
    for name in ("train.bin", "val.bin", "index.parquet"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes()


def test_one_and_two_workers_give_identical_files_and_rerun_is_a_no_op(tmp_path, work, cli):
    _pack(cli, work, tmp_path / "one", "--workers", "1")
    _pack(cli, work, tmp_path / "two", "--workers", "2")
    for name in ("train.bin", "val.bin", "index.parquet"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert read_manifest(tmp_path / "one")["output_digest"] == read_manifest(tmp_path / "two")["output_digest"]
    assert "up to date" in _pack(cli, work, tmp_path / "one").output
    assert not any(p.name.startswith(".") for p in (tmp_path / "two").iterdir())  # no temporary files left


def test_val_split_is_stable_and_never_leaks_into_train(tmp_path, work, cli):
    val_ids = {}
    for fraction in ("0.05", "0.2"):
        _pack(cli, work, tmp_path / fraction, "--val-fraction", fraction)
        index = pl.read_parquet(tmp_path / fraction / "index.parquet")
        val = set(index.filter(pl.col("split") == "val")["id"])
        assert not val & set(index.filter(pl.col("split") == "train")["id"])
        val_ids[fraction] = val
    assert val_ids["0.05"] < val_ids["0.2"]  # a hash threshold: a larger fraction only adds documents
    assert 0.1 < len(val_ids["0.2"]) / 625 < 0.3


def test_mix_sets_shares_deterministically(tmp_path, work, cli):
    mix = ["--mix", "sample-en=1,sample-zh=1", "--mix", "sample-ru=0.25",
           "--mix", "sample-de=0,sample-es=0,sample-fr=0,sample-ja=0"]
    _pack(cli, work, tmp_path / "a", *mix)
    _pack(cli, work, tmp_path / "b", *mix, "--workers", "2")
    assert (tmp_path / "a" / "train.bin").read_bytes() == (tmp_path / "b" / "train.bin").read_bytes()
    m = read_manifest(tmp_path / "a")
    shares = {s: v["train_share"] for s, v in m["per_source"].items()}
    assert shares["sample-en"] == pytest.approx(1 / 2.25, abs=0.03)
    assert shares["sample-zh"] == pytest.approx(1 / 2.25, abs=0.03)
    assert shares["sample-ru"] == pytest.approx(0.25 / 2.25, abs=0.03)  # 4 documents, repeated
    assert shares["sample-de"] == 0 and m["per_source"]["sample-ru"]["repeat_factor"] > 1
    index = pl.read_parquet(tmp_path / "a" / "index.parquet")
    assert index.filter(pl.col("source") == "sample-ru")["copy"].max() >= 1
    # without --mix the shares follow the data
    _pack(cli, work, tmp_path / "plain")
    plain = read_manifest(tmp_path / "plain")["per_source"]
    assert all(v["repeat_factor"] == 1 for v in plain.values())
    assert repeat_factors({"a": 100, "b": 300}, {"a": 1, "b": 1}) == {"a": 2.0, "b": 400 * 0.5 / 300}


def test_bad_mix_is_refused_with_the_option_named(tmp_path, work, cli):
    assert "sample-xx" in _pack(cli, work, tmp_path / "x", "--mix", "sample-xx=1", expect=2).output
    missing = _pack(cli, work, tmp_path / "x", "--mix", "sample-en=1", expect=2).output
    assert "no weight for" in missing and "sample-zh" in missing
    assert "SOURCE=WEIGHT" in _pack(cli, work, tmp_path / "x", "--mix", "sample-en", expect=2).output
    assert "--val-fraction" in _pack(cli, work, tmp_path / "x", "--val-fraction", "1.5", expect=2).output


def test_changed_tokenizer_is_refused_and_retraining_repacks(tmp_path, work, cli):
    tok = tmp_path / "tok"
    shutil.copytree(work / "tokenizer", tok)
    _pack(cli, work, tmp_path / "p", "--tokenizer", tok)
    with open(tok / "tokenizer.model", "ab") as f:
        f.write(b"\0")
    result = _pack(cli, work, tmp_path / "p", "--tokenizer", tok, expect=2)
    assert "does not match" in result.output and "train-tokenizer --force" in result.output
    cli("train-tokenizer", "-i", work / "normalized", "-o", tok, "--vocab-size", "1900", "--threads", "2", "--force")
    assert "up to date" not in _pack(cli, work, tmp_path / "p", "--tokenizer", tok).output
    assert read_manifest(tmp_path / "p")["vocab_size"] == 1900


def test_empty_train_split_says_which_option_to_change(tmp_path, cli):
    source = tmp_path / "one.jsonl"
    source.write_text(json.dumps({"text": "Only one document here.\n只有一篇文章。"}) + "\n", encoding="utf-8")
    work = tmp_path / "work"
    cli("download", source, "--workdir", work)
    cli("train-tokenizer", "-i", work / "raw", "--workdir", work, "--vocab-size", "290", "--threads", "1")
    result = _pack(cli, work, tmp_path / "p", "-i", work / "raw", expect=2)
    assert "train split is empty" in result.output and "--val-fraction" in result.output


def test_inspect_prints_counts_and_decoded_windows(tmp_path, work, cli):
    _pack(cli, work, tmp_path / "p")
    out = cli("pack", "--inspect", tmp_path / "p", "--seed", "3", "--windows", "2", "--window-tokens", "400").output
    assert "sample-zh" in out and "train.bin tokens" in out and "val.bin tokens" in out
    assert "⟨/s⟩" in out  # 400-token windows cross document boundaries
    assert "not of `nonllama pack`" in " ".join(cli("pack", "--inspect", work / "normalized", expect=2).output.split())


def test_token_dtype():
    assert token_dtype(2000) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_both_encoding_paths_frame_documents_alike(work):
    """BOS and EOS added by SentencePiece, or inserted afterwards: the same tokens."""
    from nonllama.pipeline.pack import encode_documents

    sp = load_processor(work / "tokenizer" / "tokenizer.model")
    texts = ["Once upon a time.", "", "很久很久以前", "a \u2581 block", "x"]

    class InsertsAfterwards:  # a processor whose ids differ from ours: pack inserts BOS and EOS itself
        def __getattr__(self, name):
            return getattr(sp, name)

        def bos_id(self):
            return -1

    one_pass, n1 = encode_documents(sp, texts, np.dtype(np.uint16))
    inserted, n2 = encode_documents(InsertsAfterwards(), texts, np.dtype(np.uint16))
    assert one_pass.tolist() == inserted.tolist() and n1.tolist() == n2.tolist()
    assert one_pass[0] == BOS_ID and one_pass[-1] == EOS_ID and int(n1.sum()) + 2 * len(texts) == len(one_pass)
    # pack hands SentencePiece UTF-8 bytes straight from Arrow: the same tokens as from str
    from_bytes, n3 = encode_documents(sp, [t.encode() for t in texts], np.dtype(np.uint16))
    assert from_bytes.tolist() == one_pass.tolist() and n3.tolist() == n1.tolist()
    starts = np.cumsum(n1 + 2) - (n1 + 2) + 1
    decoded = [sp.decode(one_pass[s : s + n].tolist()) for s, n in zip(starts, n1, strict=True)]
    assert decoded == texts  # the literal ▁ too
