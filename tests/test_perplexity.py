"""The filter's perplexity rule: a reference run trained here (through `nonllama train`) and a
KenLM model written here score documents; thresholds, CCNet's buckets, reruns, executors, errors."""

from __future__ import annotations

import json
import math
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from tiny_runs import invoker, one_line, torch_threads, train_tokenizer

from nonllama.pipeline.io import read_manifest, read_parts
from nonllama.pipeline.perplexity import ccnet_normalize

HELD_OUT = 220  # the clean English sample documents after this one are never trained on


def clean_english() -> list[str]:
    from nonllama.pipeline.sample import sample_corpus

    return [d.text for d in sample_corpus(0) if d.kind == "clean" and d.lang == "en"]


def scrambled(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def kinds(frame: pl.DataFrame) -> pl.Series:
    return frame["meta"].str.json_path_match("$.kind")


def values(frame: pl.DataFrame) -> pl.DataFrame:
    return frame["filter_values"].struct.unnest()


@pytest.fixture(scope="module")
def ref_run(tmp_path_factory) -> Path:
    """A tiny reference run trained through the CLI on the clean English sample documents (all
    but the held-out ones), with a 1200-piece tokenizer: about word-level, so word order counts."""
    from nonllama.pipeline.tokenizer import BOS_ID, EOS_ID, encode_texts, load_processor
    from nonllama.train.data import write_packed

    work = tmp_path_factory.mktemp("ref")
    texts = clean_english()[:HELD_OUT]
    model = train_tokenizer(work / "tokenizer" / "tokenizer.model", texts, 1200)
    processor = load_processor(model)
    tokens = np.concatenate([[BOS_ID, *ids, EOS_ID] for ids in encode_texts(processor, texts)])
    write_packed(work / "packed", {"train": [tokens], "val": [tokens[:4000]]}, processor.vocab_size(), tokenizer=model)
    with torch_threads(1):
        invoker()("train", "--workdir", work, "--preset", "tiny", "--seq-len", "64", "--batch-size", "16",
                  "--lr", "1e-2", "--dtype", "fp32", "--warmup", "10", "--max-steps", "400", "--eval-every", "1000",
                  "--eval-batches", "2", "--save-every", "1000", "--name", "ref")
    return work / "runs" / "ref"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """normalized/ of two sources: `stories` (held-out clean English documents, the same words
    shuffled, keyword-stuffed spam) and `chinese` (clean Chinese documents)."""
    from nonllama.pipeline.sample import sample_corpus

    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    held = clean_english()[HELD_OUT:]
    sample = sample_corpus(0)
    stuffed = [d.text for d in sample if d.kind == "spam" and d.variant == "keyword_stuffing"]
    rows = ([{"text": t, "kind": "clean"} for t in held] + [{"text": scrambled(t, rng), "kind": "scrambled"} for t in held]
            + [{"text": t, "kind": "stuffed"} for t in stuffed])
    (root / "stories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    zh = [d.text for d in sample if d.kind == "clean" and d.lang == "zh"][:40]
    (root / "chinese.jsonl").write_text("".join(json.dumps({"text": t, "kind": "clean"}) + "\n" for t in zh),
                                        encoding="utf-8")
    cli = invoker()
    work = root / "work"
    cli("download", root / "stories.jsonl", root / "chinese.jsonl", "--workdir", work)
    cli("normalize", "--workdir", work)
    return work / "normalized"


def test_the_reference_run_ranks_clean_text_below_scrambled_and_stuffed(ref_run, corpus, tmp_path, cli):
    out = tmp_path / "filtered"
    result = cli("filter", "-i", corpus, "-o", out, "--stats-only", "--perplexity-run", ref_run)
    assert "nothing dropped by this rule" in one_line(result.output)
    kept = read_parts(out)
    stories = kept.filter(pl.col("source") == "stories")
    ppl = values(stories)["perplexity"]
    kind = kinds(stories)
    assert ppl.null_count() == 0 and values(kept)["bits_per_byte"].null_count() == 0
    clean, bad = ppl.filter(kind == "clean"), ppl.filter(kind != "clean")
    assert len(clean) == 30 and len(bad) > 30
    assert clean.max() < bad.min(), (clean.sort().to_list()[-3:], bad.sort().to_list()[:3])
    assert "perplexity" not in set(kept["would_drop"].drop_nulls())  # a run has no threshold by default
    m = read_manifest(out)
    assert {k.split(":")[0] for k in m["dependencies"]} >= {"perplexity_run"}
    assert m["config"]["perplexity_run"] == str(ref_run.absolute())


def test_recorded_values_are_the_models_own_nll(ref_run):
    """perplexity = exp(mean NLL over the text tokens after BOS), bits per byte = sum NLL / ln 2 /
    bytes, from the model's logits computed here one document at a time (no batching, no padding)."""
    from nonllama.generate import load_run
    from nonllama.pipeline.filter import FilterConfig, filter_batch, model_files
    from nonllama.pipeline.perplexity import scorer
    from nonllama.pipeline.tokenizer import BOS_ID, encode_texts

    # short documents (the context is 64 tokens): the first sentence or two of held-out ones
    texts = [". ".join(t.split(". ")[:n]) + "." for t in clean_english()[HELD_OUT:HELD_OUT + 8] for n in (1, 2)]
    texts += ["Tom has a red ball, a blue kite and a very small dog.", "The end."]
    batch = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts, "source": "s", "meta": "{}"})
    config = FilterConfig(perplexity_run=str(ref_run), stats_only=True)
    kept, _ = filter_batch(batch, config)
    run = load_run(ref_run)
    checked = 0
    for text, ppl, bits in zip(kept["text"], values(kept)["perplexity"], values(kept)["bits_per_byte"], strict=True):
        ids = [BOS_ID, *encode_texts(run.processor, [text])[0]]
        if len(ids) > run.config.max_seq_len + 1:
            continue  # longer than the context: scored in windows
        with torch.inference_mode():
            logits, _ = run.model(torch.tensor([ids[:-1]]))
        nll = torch.nn.functional.cross_entropy(logits[0].double(), torch.tensor(ids[1:]), reduction="sum").item()
        assert ppl == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)
        assert bits == pytest.approx(nll / math.log(2) / len(text.encode()), rel=1e-5)
        checked += 1
    assert checked >= 10
    # a document past the context is cut into windows that score every token exactly once
    windows = scorer(model_files(config)).windows([list(range(5, 155)), [], list(range(5, 15))])
    assert sum(len(w) - 1 - skip for doc, w, skip in windows if doc == 0) == 150
    assert max(len(w) - 1 for _, w, _ in windows) <= run.config.max_seq_len
    assert {doc for doc, _, _ in windows} == {0, 2}  # the empty document: nothing to score (null)


# ------------------------------------------------------------------------------- KenLM


def write_arpa(path: Path, sentences: list[list[str]]) -> None:
    """A bigram ARPA: add-one unigrams; seen bigrams take 0.9 of their history's mass, the rest
    backs off to the unigrams."""
    uni, bi, history = Counter(), Counter(), Counter()
    for s in sentences:
        tokens = ["<s>", *s, "</s>"]
        uni.update(tokens[1:])
        bi.update(zip(tokens, tokens[1:], strict=False))
    for (a, _), c in bi.items():
        history[a] += c
    vocab = [*sorted(uni), "<unk>"]
    total = sum(uni.values()) + len(vocab)
    backoff = f"\t{math.log10(0.1):.6f}"
    lines = ["\\data\\", f"ngram 1={len(vocab) + 1}", f"ngram 2={len(bi)}", "", "\\1-grams:", f"-99\t<s>{backoff}"]
    lines += [f"{math.log10((uni[w] + 1) / total):.6f}\t{w}" + (backoff if w in history else "") for w in vocab]
    lines += ["", "\\2-grams:"]
    lines += [f"{math.log10(0.9 * c / history[a]):.6f}\t{a} {b}" for (a, b), c in sorted(bi.items())]
    path.write_text("\n".join([*lines, "", "\\end\\", ""]), encoding="utf-8")


@pytest.fixture(scope="module")
def kenlm_model(tmp_path_factory) -> Path:
    """en.arpa and en.sp.model beside it (CCNet's layout), trained on the normalized clean text."""
    pytest.importorskip("kenlm", reason="the kenlm extra: pip install -e '.[kenlm]'")
    from nonllama.pipeline.tokenizer import load_processor

    root = tmp_path_factory.mktemp("kenlm")
    lines = [n for t in clean_english()[:HELD_OUT] for line in t.split("\n") if (n := ccnet_normalize(line))]
    sp = train_tokenizer(root / "en.sp.model", lines, 1200)
    processor = load_processor(sp)
    write_arpa(root / "en.arpa", [processor.encode(line, out_type=str) for line in lines])
    return root / "en.arpa"


def test_ccnet_normalization():
    assert ccnet_normalize("  Café “Déjà” Vu, 1998… ") == 'cafe "deja" vu, 0000...'
    assert ccnet_normalize("全角：（测试）") == "全角:(测试)"


def test_kenlm_values_are_kenlms_own_and_1400_drops_above(kenlm_model, tmp_path, cli):
    import kenlm

    from nonllama.pipeline.tokenizer import load_processor

    work = tmp_path / "work"
    docs = clean_english()[HELD_OUT:] + [d for d in _foreign()]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    cli("download", path, "--workdir", work)
    cli("normalize", "--workdir", work)
    # foreign languages pass the language rule, so the perplexity rule (last) is what judges them
    result = cli("filter", "--workdir", work, "--perplexity-model", kenlm_model, "--languages", "en,fr,de,es")
    assert "perplexity above 1400" in one_line(result.output)
    kept, rejected = read_parts(work / "filtered"), read_parts(work / "filtered" / "rejected")
    model, processor = kenlm.Model(str(kenlm_model)), load_processor(kenlm_model.with_name("en.sp.model"))
    for frame in (kept, rejected.filter(pl.col("drop_reason") == "perplexity")):
        for text, ppl, bits in zip(frame["text"], values(frame)["perplexity"], values(frame)["bits_per_byte"],
                                   strict=True):
            log10, length = 0.0, 0
            for line in filter(None, map(ccnet_normalize, text.split("\n"))):
                pieces = " ".join(processor.encode(line, out_type=str))
                log10 += model.score(pieces)
                length += len(pieces.split()) + 1
            assert ppl == pytest.approx(10 ** (-log10 / length), rel=1e-9)
            assert bits == pytest.approx(-log10 * math.log2(10) / len(text.encode()), rel=1e-9)
    assert (values(kept)["perplexity"] <= 1400).all()
    dropped = rejected.filter(pl.col("drop_reason") == "perplexity")
    assert dropped.height >= 5 and (values(dropped)["perplexity"] > 1400).all()
    assert values(rejected.filter(pl.col("drop_reason") != "perplexity"))["perplexity"].null_count() == \
        rejected.filter(pl.col("drop_reason") != "perplexity").height  # dropped earlier: not scored
    assert kept.height >= 28  # the clean English documents stay


def _foreign() -> list[str]:
    from nonllama.pipeline.sample import sample_corpus

    return [d.text for d in sample_corpus(0) if d.kind == "foreign" and d.lang in ("fr", "de", "es")]


# ------------------------------------------------------------------------------- buckets


def test_buckets_split_each_source_by_its_quantiles_and_rerun_is_up_to_date(ref_run, corpus, tmp_path, cli):
    from nonllama.pipeline.filter import FilterConfig, config_from_dict, draw_report

    run = tmp_path / "ref"
    shutil.copytree(ref_run, run)
    out = tmp_path / "filtered"
    args = ["filter", "-i", corpus, "-o", out, "--perplexity-run", run, "--perplexity-buckets", "0.33,0.66"]
    result = cli(*args)
    assert "perplexity buckets of stories" in one_line(result.output)
    m = read_manifest(out)
    kept = read_parts(out)
    assert m["rows_out"] == kept.height and "perplexity" not in m["drop_reasons"]
    ppl = values(kept)["perplexity"]
    for source in ("stories", "chinese"):
        mine = kept.filter(pl.col("source") == source)
        share = mine["ppl_bucket"].value_counts(normalize=True)
        share = dict(zip(share["ppl_bucket"], share["proportion"], strict=True))
        assert abs(share["head"] - 0.33) < 0.05 and abs(share["tail"] - 0.34) < 0.05, (source, share)
        cuts = m["perplexity_buckets"][source]["cut_points"]
        mine_ppl = ppl.filter(kept["source"] == source)
        assert (mine_ppl.filter(mine["ppl_bucket"] == "head") <= cuts[0] * 1.001).all()
        assert (mine_ppl.filter(mine["ppl_bucket"] == "tail") >= cuts[1] / 1.001).all()
    assert m["perplexity_buckets"]["chinese"]["cut_points"][0] > m["perplexity_buckets"]["stories"]["cut_points"][1]
    # the manifest describes the rewritten parts (the next stage checks their checksums)
    from nonllama.pipeline.io import file_sha256

    assert all(file_sha256(out / p["name"]) == p["sha256"] for p in m["parts"])
    assert "up to date" in cli(*args).output
    # the report draws one perplexity histogram per source, from the manifest's config
    written = draw_report(out, tmp_path / "report", config_from_dict(m["config"]))
    assert {"perplexity-stories.png", "perplexity-chinese.png", "bits_per_byte.png"} <= {p.name for p in written}
    assert config_from_dict(m["config"]).perplexity_buckets == [0.33, 0.66] != FilterConfig().perplexity_buckets
    # a retrained reference (another checkpoint's weights) makes the filter rerun
    checkpoint = next((run / "checkpoints").glob("step-*.pt"))
    state = torch.load(checkpoint, weights_only=True)
    state["model"]["norm.weight"] = state["model"]["norm.weight"] * 1.01
    torch.save(state, checkpoint)
    assert "up to date" not in cli(*args).output
    assert read_manifest(out)["dependencies"] != m["dependencies"]


def test_local_and_ray_write_the_same_bytes(ref_run, corpus, tmp_path, ray_executor):
    from test_executors import assert_same

    from nonllama.pipeline.executors import LocalExecutor
    from nonllama.pipeline.filter import FilterConfig, run_filter

    config = FilterConfig(perplexity_run=str(ref_run), perplexity_buckets=[0.33, 0.66], max_perplexity=5000.0)
    with LocalExecutor(2) as local:
        run_filter(corpus, tmp_path / "local", config, executor=local)
    run_filter(corpus, tmp_path / "ray", config, executor=ray_executor)
    assert_same([tmp_path / "local", tmp_path / "ray"])
    assert read_manifest(tmp_path / "ray")["drop_reasons"].get("perplexity", 0) > 0


# ------------------------------------------------------------------------------- errors


def test_cli_errors_are_one_line(ref_run, tmp_path, cli, kenlm_model, monkeypatch):
    def error(*args: object) -> str:
        result = cli("filter", "--workdir", tmp_path / "work", *args, expect=2)
        out = one_line(result.output)
        assert out.startswith("error:") and "Traceback" not in out, out
        return out

    both = error("--perplexity-run", ref_run, "--perplexity-model", kenlm_model)
    assert "--perplexity-run and --perplexity-model both given" in both
    assert "--perplexity-run" in error("--perplexity-run", tmp_path / "nope") and "no such directory" in \
        error("--perplexity-run", tmp_path / "nope")
    (tmp_path / "empty-run").mkdir()
    assert "no checkpoint" in error("--perplexity-run", tmp_path / "empty-run")
    assert "--perplexity-model" in error("--perplexity-model", tmp_path / "en.arpa.bin")
    lone = tmp_path / "lone" / "xx.arpa"
    lone.parent.mkdir()
    shutil.copy(kenlm_model, lone)
    assert "xx.sp.model" in error("--perplexity-model", lone) and "--perplexity-tokenizer" in error(
        "--perplexity-model", lone)
    assert "--perplexity-tokenizer" in error("--perplexity-model", lone, "--perplexity-tokenizer", tmp_path / "sp")
    assert "two increasing quantiles" in error("--perplexity-run", ref_run, "--perplexity-buckets", "0.7,0.3")
    assert "no model to score with" in error("--max-perplexity", "100")
    assert not (tmp_path / "work").exists()  # judged before any input is looked for
    # kenlm not installed
    import builtins

    real_import = builtins.__import__

    def no_kenlm(name, *args, **kwargs):
        if name == "kenlm":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_kenlm)
    assert "pip install -e '.[kenlm]'" in error("--perplexity-model", kenlm_model)
