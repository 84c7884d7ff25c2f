"""`nonllama train-tokenizer`: lossless round trip, fixed ids, sampling, compression report, bad input."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from nonllama.pipeline.io import read_manifest, read_parts
from nonllama.pipeline.tokenizer import encode_texts, load_processor, parse_size


def _run(*args):
    from nonllama.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The sample, normalized, and a small BPE tokenizer trained on it (shared: training is the slow part)."""
    work = tmp_path_factory.mktemp("tok") / "work"
    _run("download", "sample", "--workdir", work)
    _run("normalize", "--workdir", work)
    _run("train-tokenizer", "-i", work / "normalized", "--workdir", work, "--vocab-size", "2000", "--threads", "2")
    return work


TRICKY = [
    "The quick brown fox jumps over the lazy dog. It's 3.14159, isn't it?",
    "北京是中国的首都，人口约2100万。你好！“引号”（括号）：结束；",
    "emoji 😀🎉 and a family 👨\u200d👩\u200d👧 and a flag 🇨🇳",
    "rare CJK 𠀀𪚥𰻞 and 中英mixed text: Python 3.11 发布了。",
    "  leading spaces, trailing spaces  ",
    "lines\nand\n\nparagraphs\n\n\n  indented\n",
    "literal special strings: <s> </s> <unk> <pad> <0x41> and SentencePiece's own space mark: ▁x ▁",
    "tab\there, ideographic space\u3000there, NBSP\u00a0there",
    "",
]


def test_every_document_and_tricky_text_round_trip(trained):
    sp = load_processor(trained / "tokenizer" / "tokenizer.model")
    docs = read_parts(trained / "normalized")["text"].to_list()
    assert len(docs) > 600
    for text, ids in zip(docs + TRICKY, encode_texts(sp, docs + TRICKY), strict=True):
        assert sp.decode(ids) == text
        assert 0 not in ids  # byte fallback: never <unk>
    # full-width Chinese punctuation is not folded to ASCII (identity normalization)
    assert "，" in "".join(sp.encode("中国，美国。", out_type=str))


def test_special_ids_are_fixed(trained):
    sp = load_processor(trained / "tokenizer" / "tokenizer.model")
    assert [sp.id_to_piece(i) for i in range(5)] == ["<unk>", "<s>", "</s>", "<pad>", "\n"]
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, 3)
    # the chat tokens: control pieces (never produced from text, see test_chat.py) at 5..8
    assert [sp.id_to_piece(i) for i in range(5, 9)] == ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    assert all(sp.is_control(i) for i in range(5, 9))
    assert sp.id_to_piece(9) == "<0x00>" and sp.id_to_piece(264) == "<0xFF>"
    m = read_manifest(trained / "tokenizer")
    assert m["special_ids"] == {"unk": 0, "bos": 1, "eos": 2, "pad": 3, "newline": 4}
    assert m["chat_ids"] == {"<|system|>": 5, "<|user|>": 6, "<|assistant|>": 7, "<|end|>": 8}
    assert m["vocab_size"] == 2000
    vocab = (trained / "tokenizer" / "tokenizer.vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 2000 and vocab[2].startswith("</s>\t") and vocab[4] == "\\n\t0"


def test_compression_is_reported_per_source_on_held_out_documents(trained):
    m = read_manifest(trained / "tokenizer")
    by_source = m["compression"]["by_source"]
    assert {"sample-en", "sample-zh"} <= set(by_source)
    en, zh = by_source["sample-en"], by_source["sample-zh"]
    # English packs several characters into a token; Chinese about one or two, at 3 bytes a character
    assert en["chars_per_token"] > 2.5 and en["bytes_per_token"] == pytest.approx(en["chars_per_token"], rel=0.05)
    assert 0.8 < zh["chars_per_token"] < en["chars_per_token"] and zh["bytes_per_token"] > 2.5
    assert m["held_out"]["docs"] == sum(v["docs"] for v in by_source.values())
    # held-out documents are not trained on
    assert m["sample"]["docs"] + m["held_out"]["docs"] <= m["rows_in"]


def test_rerun_is_a_no_op_and_force_is_deterministic(trained, cli):
    model = trained / "tokenizer" / "tokenizer.model"
    before = model.read_bytes()
    args = ("train-tokenizer", "-i", trained / "normalized", "--workdir", trained, "--vocab-size", "2000", "--threads", "2")
    assert "up to date" in cli(*args).output
    assert "up to date" not in cli(*args, "--force").output
    assert model.read_bytes() == before


def test_a_tokenizer_made_before_the_chat_tokens_is_not_up_to_date(trained, cli, tmp_path):
    """Its manifest has no `fixed_pieces`: the next run retrains it (so `make sft` after an
    upgrade does not meet an old tokenizer that the stage calls up to date)."""
    import json
    import shutil

    from nonllama.chat import has_chat_tokens
    from nonllama.pipeline.tokenizer import load_processor

    work = tmp_path / "work"
    shutil.copytree(trained / "tokenizer", work / "tokenizer")
    manifest_path = work / "tokenizer" / "_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["dependencies"]["fixed_pieces"].endswith("<|assistant|> <|end|>")
    manifest["dependencies"] = {}  # as written before the chat tokens
    manifest_path.write_text(json.dumps(manifest))
    args = ("train-tokenizer", "-i", trained / "normalized", "--workdir", work, "--vocab-size", "2000", "--threads", "2")
    assert "up to date" not in cli(*args).output
    assert has_chat_tokens(load_processor(work / "tokenizer" / "tokenizer.model"))
    assert "up to date" in cli(*args).output


def test_sample_bytes_bounds_the_sample(tmp_path, trained, cli):
    args = ("train-tokenizer", "-i", trained / "normalized", "--vocab-size", "1800", "--threads", "2",
            "--sample-bytes", "60K")
    cli(*args, "-o", tmp_path / "a")
    cli(*args, "-o", tmp_path / "b")
    sample = read_manifest(tmp_path / "a")["sample"]
    assert 30_000 < sample["bytes"] <= 60_000
    assert (tmp_path / "a" / "tokenizer.model").read_bytes() == (tmp_path / "b" / "tokenizer.model").read_bytes()
    assert parse_size("1G") == 10**9 and parse_size("500m") == 500 * 10**6 and parse_size("123") == 123


def test_user_symbols_and_unigram(tmp_path, trained, cli):
    out = tmp_path / "uni"
    cli("train-tokenizer", "-i", trained / "normalized", "-o", out, "--vocab-size", "1800", "--threads", "2",
        "--model-type", "unigram", "--user-symbols", "<|tool|>,<|bot|>", "--user-symbols", "<tool>")
    sp = load_processor(out / "tokenizer.model")
    # after the newline and the four chat tokens (5..8)
    assert [sp.id_to_piece(i) for i in (4, 8, 9, 10, 11, 12)] == ["\n", "<|end|>", "<|tool|>", "<|bot|>", "<tool>", "<0x00>"]
    assert sp.encode("<|tool|>你好<|bot|>hi", out_type=str)[0] == "<|tool|>"
    for text, ids in zip(TRICKY, encode_texts(sp, TRICKY), strict=True):
        assert sp.decode(ids) == text


def test_vocabulary_too_large_or_small_names_a_size_that_works(tmp_path, trained, cli):
    args = ("train-tokenizer", "-i", trained / "normalized", "-o", tmp_path / "t", "--threads", "2")
    result = cli(*args, "--vocab-size", "200000", expect=2)
    assert "Traceback" not in result.output
    words = result.output.replace("\n", " ").split()
    works = int(words[words.index("less,") - 2]) if "less," in words else None
    assert "--vocab-size 200000 is more than this text supports" in " ".join(words), result.output
    assert works is not None and 1000 < works < 200000
    cli(*args, "--vocab-size", str(works))
    assert read_manifest(tmp_path / "t")["vocab_size"] == works
    small = " ".join(cli(*args, "--vocab-size", "300", expect=2).output.split())
    assert "--vocab-size 300 is too small" in small and "or more" in small
    needed = int(small.split("use --vocab-size ")[1].split()[0])
    cli(*args, "--vocab-size", str(needed), "--force")


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_too_small_vocabulary_names_the_exact_minimum(tmp_path, trained, cli, model_type):
    # a sample of 3 KB: few characters, and for unigram few pieces to learn, so a figure that
    # counts the 265 fixed pieces twice (as SentencePiece's own figure already holds them) would
    # be "more than this text supports"
    args = ("train-tokenizer", "-i", trained / "normalized", "--threads", "1", "--sample-bytes", "3K",
            "--model-type", model_type)
    small = " ".join(cli(*args, "-o", tmp_path / "a", "--vocab-size", "300", expect=2).output.split())
    assert "--vocab-size 300 is too small for this text" in small and "the 265 fixed pieces" in small
    needed = int(small.split("use --vocab-size ")[1].split()[0])
    assert 265 < needed < 600
    below = " ".join(cli(*args, "-o", tmp_path / "b", "--vocab-size", str(needed - 1), expect=2).output.split())
    assert f"use --vocab-size {needed} or more" in below  # one figure, the same whatever was asked
    cli(*args, "-o", tmp_path / "c", "--vocab-size", str(needed))
    assert read_manifest(tmp_path / "c")["vocab_size"] == needed


def test_vocabulary_below_the_fixed_pieces_is_refused_before_reading(tmp_path, cli):
    for size, fixed in (("100", 265), ("265", 265)):
        out = " ".join(cli("train-tokenizer", "--workdir", tmp_path, "--vocab-size", size, expect=2).output.split())
        assert f"--vocab-size {size}: must be more than the {fixed} fixed pieces" in out
        assert "nonllama dedup" not in out  # judged before looking for the input
    out = " ".join(cli("train-tokenizer", "--workdir", tmp_path, "--vocab-size", "267", "--user-symbols", "<a>,<b>",
                       expect=2).output.split())
    assert "--vocab-size 267: must be more than the 267 fixed pieces" in out and "2 user symbols" in out


def test_bad_options_and_missing_input(tmp_path, trained, cli):
    assert "nonllama dedup" in cli("train-tokenizer", "--workdir", tmp_path, expect=2).output
    bad = cli("train-tokenizer", "-i", trained / "normalized", "-o", tmp_path / "x", "--model-type", "wordpiece", expect=2)
    assert "--model-type" in bad.output
    assert "--sample-bytes" in cli("train-tokenizer", "-i", trained / "normalized", "-o", tmp_path / "x",
                                   "--sample-bytes", "lots", expect=2).output


def test_tokenizer_on_the_shared_corpora(tmp_path, cli, corpora):
    work = tmp_path / "work"
    cli("download", corpora / "zhwiki_cmrc2018", corpora / "tinystories_en", "--workdir", work,
        "--split-on", "blank-line", "--max-docs", "600")
    cli("normalize", "--workdir", work)
    cli("train-tokenizer", "-i", work / "normalized", "--workdir", work, "--vocab-size", "6000", "--threads", "2")
    sp = load_processor(work / "tokenizer" / "tokenizer.model")
    docs = read_parts(work / "normalized")["text"].to_list()
    assert all(sp.decode(ids) == t for t, ids in zip(docs, encode_texts(sp, docs), strict=True))
    shutil.rmtree(work / "raw")


# --------------------------------------------------------------------------- the sample, per part


@pytest.fixture(scope="module")
def parted(tmp_path_factory):
    """The sample normalized twice: in one part, and cut in five parts (the same rows, in order)."""
    root = tmp_path_factory.mktemp("parted")
    for name, rows in (("one", "1000"), ("five", "150")):
        _run("download", "sample", "--workdir", root / name, "--part-rows", rows)
        _run("normalize", "--workdir", root / name)
    assert len(read_manifest(root / "one" / "normalized")["parts"]) == 1
    assert len(read_manifest(root / "five" / "normalized")["parts"]) == 5
    return root


TOK_ARGS = ("--vocab-size", "1500", "--threads", "2", "--sample-bytes", "200K")


def _comparable(directory):
    m = read_manifest(directory)
    m.pop("wall_time_s")
    m.pop("input")
    return m


def test_the_sample_does_not_depend_on_parts_workers_or_executor(tmp_path, parted, cli):
    pytest.importorskip("ray", reason="the dev extra installs ray")
    outs = {
        "one part": ("-i", parted / "one" / "normalized"),
        "five parts, 1 worker": ("-i", parted / "five" / "normalized", "--workers", "1"),
        "five parts, 2 workers": ("-i", parted / "five" / "normalized", "--workers", "2"),
        "five parts, ray": ("-i", parted / "five" / "normalized", "--executor", "ray", "--workers", "2"),
    }
    for i, args in enumerate(outs.values()):
        cli("train-tokenizer", *args, "-o", tmp_path / str(i), *TOK_ARGS)
    first = tmp_path / "0"
    assert 100_000 < read_manifest(first)["sample"]["bytes"] <= 200_000
    for i, what in enumerate(outs):
        assert (tmp_path / str(i) / "tokenizer.model").read_bytes() == (first / "tokenizer.model").read_bytes(), what
        assert (tmp_path / str(i) / "tokenizer.vocab").read_bytes() == (first / "tokenizer.vocab").read_bytes(), what
        assert _comparable(tmp_path / str(i)) == _comparable(first), what
    assert not (tmp_path / "0" / ".work").exists()  # the sentence files were scratch


def test_pass_one_results_are_small_and_merge_to_the_whole(parted):
    import pickle

    from nonllama.pipeline.tokenizer import HASH_BINS, histogram_part, merge_histograms

    five = read_manifest(parted / "five" / "normalized")
    parts = [parted / "five" / "normalized" / p["name"] for p in five["parts"]]
    results = [histogram_part(p, 0) for p in parts]
    # sparse: a part of 150 documents costs a few KB, not HASH_BINS x 16 bytes a source
    assert all(len(pickle.dumps(r)) < 10_000 for r in results) and HASH_BINS * 16 > 100_000
    merged, docs, nbytes = merge_histograms(results)
    whole, whole_docs, whole_bytes = merge_histograms([histogram_part(parted / "one" / "normalized" / "part-00000.parquet", 0)])
    assert (docs, nbytes) == (whole_docs, whole_bytes) == (five["rows_out"], sum(r.bytes for r in results))
    assert set(merged) == set(whole) and {"sample-en", "sample-zh"} <= set(merged)
    for source in merged:
        assert (merged[source].docs == whole[source].docs).all() and (merged[source].bytes == whole[source].bytes).all()


def test_an_interrupted_sample_resumes_task_by_task(tmp_path, parted, monkeypatch):
    from nonllama.pipeline import tokenizer
    from nonllama.pipeline.tokenizer import TokenizerConfig, run_train_tokenizer

    config = TokenizerConfig(vocab_size=1500, threads=2, sample_bytes=200_000)
    inp = parted / "five" / "normalized"
    run_train_tokenizer(inp, tmp_path / "whole", config)
    done = []
    real = tokenizer._sample_task

    def dies_on_the_fourth(task, report):
        if len(done) == 3:
            raise KeyboardInterrupt
        done.append(task.part)
        return real(task, report)

    monkeypatch.setattr(tokenizer, "_sample_task", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        run_train_tokenizer(inp, tmp_path / "cut", config)
    assert not (tmp_path / "cut" / "tokenizer.model").exists()
    assert len(list((tmp_path / "cut" / ".work" / "scratch" / "sentences").glob("sentences-*.txt"))) == 3
    monkeypatch.setattr(tokenizer, "_sample_task", real)
    run = run_train_tokenizer(inp, tmp_path / "cut", config)
    # pass 1's five tasks and pass 2's first three were not run again (pass 3, the measurement, has five more)
    assert "resumed an interrupted run: 8 of 15 tasks were already done" in run.notices
    assert (tmp_path / "cut" / "tokenizer.model").read_bytes() == (tmp_path / "whole" / "tokenizer.model").read_bytes()
