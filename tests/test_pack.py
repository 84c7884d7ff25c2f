"""`nonllama pack`: token shards, index, splits, mixing, determinism on every executor, resume,
the layout before shards refused, digest checks, inspect."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from tiny_runs import TINY, one_line
from typer.testing import CliRunner

from nonllama.pipeline.io import MANIFEST_NAME, read_manifest, read_parts
from nonllama.pipeline.pack import PackConfig, repeat_factors, run_pack, token_dtype
from nonllama.pipeline.tokenizer import BOS_ID, EOS_ID, load_processor
from nonllama.train.data import PackedData

MIX = ["--mix", "sample-en=1,sample-zh=1", "--mix", "sample-ru=0.25",
       "--mix", "sample-de=0,sample-es=0,sample-fr=0,sample-ja=0"]
MIX_CONFIG = {"sample-en": 1, "sample-zh": 1, "sample-ru": 0.25, "sample-de": 0, "sample-es": 0, "sample-fr": 0,
              "sample-ja": 0}


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


def split_tokens(packed: Path, split: str) -> np.ndarray:
    """A split's stream: its shards, in the manifest's order, one after the other."""
    m = read_manifest(packed)
    return np.concatenate([np.fromfile(packed / s["name"], dtype=m["dtype"]) for s in m["shards"][split]])


def read_index(packed: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(packed / i["name"]) for i in read_manifest(packed)["index"]])


def tree(directory: Path) -> dict[str, str]:
    """sha256 of every file in `directory` but the manifest."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST_NAME}


def comparable(packed: Path) -> dict:
    m = read_manifest(packed)
    m.pop("wall_time_s")
    return m


def assert_same_output(a: Path, b: Path) -> None:
    assert tree(a) == tree(b), f"{a} and {b} differ"
    assert comparable(a) == comparable(b)


def _assert_every_document_once_and_decodes_back(packed, work) -> tuple[dict, pl.DataFrame]:
    m = read_manifest(packed)
    index = read_index(packed)
    docs = read_parts(work / "normalized").select("id", "text", "source")
    assert sorted(index["id"]) == sorted(docs["id"])  # every document once, in one split
    sp = load_processor(work / "tokenizer" / "tokenizer.model")
    texts = dict(docs.select("id", "text").iter_rows())
    n_parts = len(read_manifest(work / "normalized")["parts"])
    for split in ("train", "val"):
        # one shard per input part, each listed with its size and checksum
        assert [s["name"] for s in m["shards"][split]] == [f"{split}-{i:05d}.bin" for i in range(n_parts)]
        for shard in m["shards"][split]:
            assert hashlib.sha256((packed / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
        data = split_tokens(packed, split)
        rows = index.filter(pl.col("split") == split)
        assert data.size == m["tokens"][split] == int((rows["length"] + 2).sum())
        # BOS and EOS only around documents: BOS before each, EOS after it
        assert np.count_nonzero(data == EOS_ID) == np.count_nonzero(data == BOS_ID) == rows.height
        for doc_id, shard, offset, length in rows.select("id", "shard", "offset", "length").iter_rows():
            tokens = np.fromfile(packed / f"{split}-{shard:05d}.bin", dtype=np.uint16)
            assert tokens[offset - 1] == BOS_ID and tokens[offset + length] == EOS_ID
            assert sp.decode(tokens[offset : offset + length].tolist()) == texts[doc_id]
    for i in m["index"]:
        assert hashlib.sha256((packed / i["name"]).read_bytes()).hexdigest() == i["sha256"]
    per_source = m["per_source"]
    assert sum(v["train_tokens"] + v["val_tokens"] for v in per_source.values()) == sum(m["tokens"].values())
    return m, index


def test_every_document_packed_once_and_decodes_back(tmp_path, work, cli):
    _pack(cli, work, tmp_path / "p")
    m, _ = _assert_every_document_once_and_decodes_back(tmp_path / "p", work)
    assert m["dtype"] == "uint16" and m["vocab_size"] == 2000 and m["eos_id"] == EOS_ID == 2
    assert 1 <= m["docs"]["val"] < 10  # 0.5 % of ~625, at least one
    # the tokenizer is recorded relative to the packed directory: training finds it there
    assert m["tokenizer"]["dir"] == os.path.relpath(work / "tokenizer", tmp_path / "p")
    assert PackedData(tmp_path / "p").tokenizer_model() == (Path(os.path.normpath(tmp_path / "p" / m["tokenizer"]["dir"]))
                                                           / "tokenizer.model", "")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted(
        [MANIFEST_NAME] + [s["name"] for split in ("train", "val") for s in m["shards"][split]]
        + [i["name"] for i in m["index"]])  # nothing else: no scratch, no temporaries


def test_a_val_fraction_no_hash_reaches_still_gives_one_val_document(tmp_path, work, cli):
    """The document with the smallest hash moves to val: its part is encoded again with it in
    val (a second pass of one task), whatever the number of workers, with --mix too."""
    for workers in ("1", "2"):
        for mix in ([], MIX):
            out = tmp_path / f"{workers}{'-mix' * bool(mix)}"
            _pack(cli, work, out, "--val-fraction", "1e-9", "--workers", workers, *mix)
            check = _assert_every_document_once_and_decodes_back_mixed if mix else _assert_every_document_once_and_decodes_back
            m, index = check(out, work)
            moved = index.filter(pl.col("split") == "val")
            assert m["docs"]["val"] == 1 and m["per_source"][moved["source"][0]]["val_docs"] == 1
            assert sum(s["tokens"] > 0 for s in m["shards"]["val"]) == 1
    assert_same_output(tmp_path / "1", tmp_path / "2")
    assert_same_output(tmp_path / "1-mix", tmp_path / "2-mix")


def test_one_and_two_workers_give_identical_files_and_rerun_is_a_no_op(tmp_path, work, cli):
    _pack(cli, work, tmp_path / "one", "--workers", "1")
    _pack(cli, work, tmp_path / "two", "--workers", "2")
    assert_same_output(tmp_path / "one", tmp_path / "two")
    assert "up to date" in _pack(cli, work, tmp_path / "one").output
    assert not any(p.name.startswith(".") for p in (tmp_path / "two").iterdir())  # no temporary files left


def test_val_split_is_stable_and_never_leaks_into_train(tmp_path, work, cli):
    val_ids = {}
    for fraction in ("0.05", "0.2"):
        _pack(cli, work, tmp_path / fraction, "--val-fraction", fraction)
        index = read_index(tmp_path / fraction)
        val = set(index.filter(pl.col("split") == "val")["id"])
        assert not val & set(index.filter(pl.col("split") == "train")["id"])
        val_ids[fraction] = val
    assert val_ids["0.05"] < val_ids["0.2"]  # a hash threshold: a larger fraction only adds documents
    assert 0.1 < len(val_ids["0.2"]) / 625 < 0.3


def test_mix_sets_shares_deterministically(tmp_path, work, cli):
    _pack(cli, work, tmp_path / "a", *MIX)
    _pack(cli, work, tmp_path / "b", *MIX, "--workers", "2")
    assert_same_output(tmp_path / "a", tmp_path / "b")
    m, index = _assert_every_document_once_and_decodes_back_mixed(tmp_path / "a", work)
    shares = {s: v["train_share"] for s, v in m["per_source"].items()}
    assert shares["sample-en"] == pytest.approx(1 / 2.25, abs=0.03)
    assert shares["sample-zh"] == pytest.approx(1 / 2.25, abs=0.03)
    assert shares["sample-ru"] == pytest.approx(0.25 / 2.25, abs=0.03)  # 4 documents, repeated
    assert shares["sample-de"] == 0 and m["per_source"]["sample-ru"]["repeat_factor"] > 1
    assert m["per_source"]["sample-ru"]["mix_share_asked"] == pytest.approx(0.25 / 2.25, abs=1e-6)
    assert index.filter(pl.col("source") == "sample-ru")["copy"].max() >= 1
    # without --mix the shares follow the data
    _pack(cli, work, tmp_path / "plain")
    plain = read_manifest(tmp_path / "plain")["per_source"]
    assert all(v["repeat_factor"] == 1 for v in plain.values())
    assert repeat_factors({"a": 100, "b": 300}, {"a": 1, "b": 1}) == {"a": 2.0, "b": 400 * 0.5 / 300}


def _assert_every_document_once_and_decodes_back_mixed(packed, work) -> tuple[dict, pl.DataFrame]:
    """Every occurrence decodes to its document; the manifest's counts are the index's."""
    m = read_manifest(packed)
    index = read_index(packed)
    sp = load_processor(work / "tokenizer" / "tokenizer.model")
    texts = dict(read_parts(work / "normalized").select("id", "text").iter_rows())
    for split in ("train", "val"):
        rows = index.filter(pl.col("split") == split)
        assert rows.height == m["docs"][split] == sum(s["docs"] for s in m["shards"][split])
        for doc_id, shard, offset, length in rows.select("id", "shard", "offset", "length").iter_rows():
            tokens = np.fromfile(packed / f"{split}-{shard:05d}.bin", dtype=np.uint16)
            assert tokens[offset - 1] == BOS_ID and tokens[offset + length] == EOS_ID
            assert sp.decode(tokens[offset : offset + length].tolist()) == texts[doc_id]
    train = index.filter(pl.col("split") == "train")
    for source, v in m["per_source"].items():
        mine = train.filter(pl.col("source") == source)
        assert v["mixed_train_docs"] == mine.height and v["mixed_train_tokens"] == int((mine["length"] + 2).sum())
    return m, index


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
    assert "sample-zh" in out and "train tokens" in out and "val tokens" in out and "5 shards" in out
    assert "train-0000" in out and "val-0000" in out  # the shard each window lies in
    assert "⟨/s⟩" in out  # 400-token windows cross document boundaries
    assert "not of `nonllama pack`" in " ".join(cli("pack", "--inspect", work / "normalized", expect=2).output.split())


def test_training_reads_the_shards_as_one_stream(tmp_path, work, cli):
    """Windows that cross a shard boundary read the end of one shard and the start of the next."""
    _pack(cli, work, tmp_path / "p")
    data = PackedData(tmp_path / "p")
    whole = split_tokens(tmp_path / "p", "train")
    assert len(data.train) == len(whole) and len(data.train.paths) == 5
    for boundary in data.train.offsets[1:-1]:
        for start in (int(boundary) - 40, int(boundary) - 1, int(boundary)):
            assert np.array_equal(data.train[start : start + 65], whole[start : start + 65])
    data.verify()


def test_a_directory_packed_before_shards_is_refused_and_packed_again(tmp_path, work, cli):
    """The layout before shards (one train.bin, val.bin and index.parquet): pack --inspect and
    train refuse it saying to rerun pack, and `pack` (no --force) writes it again as shards."""
    old = tmp_path / "packed"
    _pack(cli, work, old)
    m = read_manifest(old)
    for split in ("train", "val"):
        split_tokens(old, split).tofile(old / f"{split}.bin")
    read_index(old).drop("shard").write_parquet(old / "index.parquet")
    shards, index = m.pop("shards"), m.pop("index")
    for name in [s["name"] for split in ("train", "val") for s in shards[split]] + [i["name"] for i in index]:
        (old / name).unlink()
    m["files"] = {name: hashlib.sha256((old / name).read_bytes()).hexdigest()
                  for name in ("train.bin", "val.bin", "index.parquet")}
    (old / MANIFEST_NAME).write_text(json.dumps(m))
    message = "holds tokens in the layout before shards (one train.bin and val.bin): rerun `nonllama pack`"
    assert message in one_line(cli("pack", "--inspect", old, expect=2).output)
    assert message in one_line(cli("train", "--data", old, "--out", tmp_path / "run", *TINY, expect=2).output)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.pt"))
    assert "up to date" not in _pack(cli, work, old).output
    assert sorted(p.name for p in old.iterdir() if p.suffix == ".bin")[:2] == ["train-00000.bin", "train-00001.bin"]
    assert not (old / "train.bin").exists() and "up to date" in _pack(cli, work, old).output


def test_verify_catches_a_changed_shard(tmp_path, work, cli):
    _pack(cli, work, tmp_path / "p")
    shard = tmp_path / "p" / "train-00002.bin"
    tokens = np.fromfile(shard, dtype=np.uint16)
    tokens[len(tokens) // 2] += 1  # same size, other tokens
    tokens.tofile(shard)
    data = PackedData(tmp_path / "p")  # sizes agree: opening does not read the tokens
    with pytest.raises(Exception, match=r"train-00002.bin: its sha256 differs"):
        data.verify()
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(Exception, match=r"train-00002.bin holds \d+ tokens, its manifest says \d+"):
        PackedData(tmp_path / "p")


# --------------------------------------------------------------------------- executors and resume



def test_every_executor_writes_the_same_bytes_and_trains_the_same(tmp_path, work, cli, ray_executor):
    """local 1 worker, local 2 workers and Ray: the same shards, indexes and manifests, plain,
    with --mix and with a forced val document; and the same losses trained on either."""
    from nonllama.pipeline.executors import LocalExecutor

    configs = {"plain": PackConfig(val_fraction=0.02), "mix": PackConfig(val_fraction=0.02, mix=MIX_CONFIG),
               "forced": PackConfig(val_fraction=1e-9)}
    executors = {"local-1": LocalExecutor(1), "local-2": LocalExecutor(2), "ray": ray_executor}
    for name, config in configs.items():
        outs = [tmp_path / f"{name}-{kind}" for kind in executors]
        for out, executor in zip(outs, executors.values(), strict=True):
            run_pack(work / "normalized", work / "tokenizer", out, config, executor=executor)
        for out in outs[1:]:
            assert_same_output(outs[0], out)
    assert read_manifest(tmp_path / "forced-ray")["docs"]["val"] == 1

    losses = {}
    for kind in ("local-1", "ray"):
        run = tmp_path / f"run-{kind}"
        cli("train", "--data", tmp_path / f"plain-{kind}", "--out", run, *TINY, "--max-steps", "3",
            "--eval-every", "3")
        losses[kind] = [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "mfu")}
                        for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert (run / "tokenizer.model").read_bytes() == (work / "tokenizer" / "tokenizer.model").read_bytes()
    assert losses["local-1"] == losses["ray"] and len(losses["ray"]) == 4  # 3 steps and an evaluation


def _markers(directory: Path) -> list[Path]:
    return sorted((directory / ".work" / "tasks").rglob("*.done"))


def test_an_interrupted_pack_resumes_with_the_same_bytes(tmp_path, work, cli):
    """Killed once some tasks have finished, then rerun: the same bytes as an uninterrupted run,
    and the shards of the finished tasks are not written again."""
    words = ("harbour ship sea island bread salt letter morning quiet northern boat wind rope sail "
             "village market lamp river stone garden winter summer child teacher story").split()
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(12):
        lines = [json.dumps({"text": " ".join(rng.choice(words, 150)) + f" {i}-{j}."}) for j in range(1200)]
        (data / f"f{i:02d}.jsonl").write_text("\n".join(lines) + "\n")
    cli("download", data, "-o", tmp_path / "raw", "--part-rows", "1200")
    args = ["pack", "-i", tmp_path / "raw", "--tokenizer", work / "tokenizer"]
    cli(*args, "-o", tmp_path / "whole")
    out = tmp_path / "packed"
    env = {**os.environ, "NONLLAMA_NO_PROGRESS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "nonllama", *map(str, args), "-o", str(out)],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(_markers(out)) < 3 and run.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(run.pid, signal.SIGKILL)
    run.wait(timeout=30)
    done = _markers(out)
    assert 3 <= len(done) < 12 and not (out / MANIFEST_NAME).exists(), len(done)
    finished = {name: (out / name).stat().st_mtime_ns for m in done
                for name in (f"train-{int(m.stem):05d}.bin", f"val-{int(m.stem):05d}.bin", f"index-{int(m.stem):05d}.parquet")}
    result = cli(*args, "-o", out)
    assert f"resumed an interrupted run: {len(done)} of 12 tasks were already done" in one_line(result.output)
    assert_same_output(out, tmp_path / "whole")
    for name, mtime in finished.items():  # a finished task's files were not written again
        assert (out / name).stat().st_mtime_ns == mtime, name
    assert not (out / ".work").exists()


# --------------------------------------------------------------------------- encoding


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
