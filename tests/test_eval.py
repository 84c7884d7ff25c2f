"""`nonllama eval`: bits per byte, loss and accuracy of a run on any text, per source."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from tiny_runs import invoker, one_line, one_thread, sample_texts, tiny_run_dir, train_tokenizer  # noqa: F401

from nonllama.eval import EvalSettings, evaluate_run, windows
from nonllama.generate import load_run
from nonllama.model import Llama, ModelConfig
from nonllama.pipeline.io import file_sha256, read_parts
from nonllama.pipeline.tokenizer import BOS_ID, EOS_ID, encode_texts, load_processor
from nonllama.train.checkpoint import checkpoint_path

pytestmark = pytest.mark.usefixtures("one_thread")
CONTEXT = 32  # the tiny runs' --seq-len


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run_dir(tmp_path_factory, "eval")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[int, Path]:
    """Two tokenizers of the same English text with vocabularies of different sizes."""
    root = tmp_path_factory.mktemp("tokenizers")
    return {v: train_tokenizer(root / str(v) / "tokenizer.model", sample_texts("en"), v) for v in (330, 600)}


def fake_run(run: Path, tokenizer: Path, *, zero_norm: bool = False, seed: int = 0) -> Path:
    """A run directory holding an untrained model for `tokenizer` (a checkpoint as train writes
    one: model, model_config, step, tokenizer digest). `zero_norm`: the final norm's weights
    zero, so every logit is 0: the model predicts every token with probability 1 / vocab."""
    torch.manual_seed(seed)
    config = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=load_processor(tokenizer).vocab_size(),
                         max_seq_len=CONTEXT)
    model = Llama(config)
    if zero_norm:
        with torch.no_grad():
            model.norm.weight.zero_()
    checkpoint_path(run, 0).parent.mkdir(parents=True)
    shutil.copyfile(tokenizer, run / "tokenizer.model")
    torch.save({"model": model.state_dict(), "model_config": asdict(config), "step": 0,
                "tokenizer_digest": file_sha256(tokenizer)}, checkpoint_path(run, 0))
    return run


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


def direct_nll(model: Llama, tokens: list[int]) -> float:
    """Summed NLL (nats) of tokens[1:] given what precedes each, in one forward pass."""
    with torch.inference_mode():
        logits, _ = model(torch.tensor([tokens[:-1]]))
        return float(F.cross_entropy(logits[0].double(), torch.tensor(tokens[1:]), reduction="sum"))


def short_sentences(processor, limit: int = CONTEXT - 1) -> list[str]:
    """English lines of the sample and a Chinese one, each short enough for one window."""
    lines = [line.strip() for t in sample_texts("en") for line in t.replace(". ", ".\n").split("\n") if line.strip()]
    lines.insert(0, "北京是中国的首都。")
    ids = encode_texts(processor, lines)
    return [line for line, i in zip(lines, ids, strict=True) if len(i) + 1 <= limit][:24]


def evaluate(run: Path, data: list, **settings) -> dict:
    return evaluate_run(run, [str(d) for d in data], EvalSettings(**settings))


# ------------------------------------------------------------------------------ (1) bits per byte


def test_bits_per_byte_is_the_summed_nll_in_bits_over_the_text_bytes(run_dir, tmp_path):
    loaded = load_run(run_dir)
    texts = short_sentences(loaded.processor)
    assert any(not t.isascii() for t in texts) and len(texts) >= 8
    a, b = write_jsonl(tmp_path / "a.jsonl", texts[::2]), write_jsonl(tmp_path / "b.jsonl", texts[1::2])
    for eos in (True, False):
        result = evaluate(run_dir, [a, b], eos=eos)
        assert list(result["sources"]) == ["a", "b"]
        total_nll = total_bytes = total_tokens = 0
        for name, part in (("a", texts[::2]), ("b", texts[1::2])):
            ids = encode_texts(loaded.processor, part)
            nll = sum(direct_nll(loaded.model, [BOS_ID, *i, *([EOS_ID] if eos else [])]) for i in ids)
            nbytes = sum(len(t.encode("utf-8")) for t in part)
            tokens = sum(len(i) + eos for i in ids)
            m = result["sources"][name]
            assert (m["docs"], m["tokens"], m["bytes"]) == (len(part), tokens, nbytes)
            assert m["nll_bits"] == pytest.approx(nll / math.log(2), rel=1e-6)
            assert m["bits_per_byte"] == pytest.approx(nll / math.log(2) / nbytes, rel=1e-6)
            assert m["loss"] == pytest.approx(nll / tokens, rel=1e-6)
            assert m["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-6)
            total_nll, total_bytes, total_tokens = total_nll + nll, total_bytes + nbytes, total_tokens + tokens
        assert result["total"]["bits_per_byte"] == pytest.approx(total_nll / math.log(2) / total_bytes, rel=1e-6)
        assert result["total"]["tokens"] == total_tokens


def test_accuracy_counts_the_targets_the_model_ranks_first_and_in_its_top_five(run_dir, tmp_path):
    loaded = load_run(run_dir)
    texts = short_sentences(loaded.processor)[:6]
    result = evaluate(run_dir, [write_jsonl(tmp_path / "s.jsonl", texts)])
    top1 = top5 = 0
    for ids in encode_texts(loaded.processor, texts):
        tokens = [BOS_ID, *ids, EOS_ID]
        with torch.inference_mode():
            logits, _ = loaded.model(torch.tensor([tokens[:-1]]))
        best = logits[0].topk(5).indices
        target = torch.tensor(tokens[1:])
        top1 += int((best[:, 0] == target).sum())
        top5 += int((best == target[:, None]).any(-1).sum())
    m = result["total"]
    assert (m["top1"] * m["tokens"], m["top5"] * m["tokens"]) == pytest.approx((top1, top5))


# ------------------------------------------------------------------------------ (2) uniform logits


def test_a_model_with_equal_logits_gives_log2_vocab_bits_per_token_whatever_the_tokenizer(tokenizers, tmp_path):
    texts = sample_texts("en")[:3]  # each longer than the context: windows are involved
    data = write_jsonl(tmp_path / "stories.jsonl", texts)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    seen = {}
    for vocab, model_file in tokenizers.items():
        run = fake_run(tmp_path / f"uniform-{vocab}", model_file, zero_norm=True)
        ids = encode_texts(load_processor(model_file), texts)
        assert max(map(len, ids)) > 2 * CONTEXT
        tokens = sum(len(i) + 1 for i in ids)  # text tokens and each document's EOS
        m = evaluate(run, [data])["total"]
        assert (m["tokens"], m["bytes"]) == (tokens, nbytes)
        assert m["bits_per_byte"] == pytest.approx(tokens * math.log2(vocab) / nbytes, rel=1e-6)
        assert m["loss"] == pytest.approx(math.log(vocab), rel=1e-6)
        assert m["perplexity"] == pytest.approx(vocab, rel=1e-5)
        seen[vocab] = tokens
    assert seen[330] > seen[600]  # the larger vocabulary needs fewer tokens for the same bytes


# ------------------------------------------------------------------------------ (3) determinism


def test_the_same_run_and_data_give_identical_numbers(run_dir, tmp_path, cli):
    data = write_jsonl(tmp_path / "stories.jsonl", sample_texts("en")[:4])
    results = []
    for name in ("first", "second"):
        cli("eval", "--run", run_dir, data, "--batch-size", "3", "-o", tmp_path / f"{name}.json")
        results.append(json.loads((tmp_path / f"{name}.json").read_text()))
    assert results[0]["sources"] == results[1]["sources"] and results[0]["total"] == results[1]["total"]
    assert results[0]["data"] == results[1]["data"]
    assert results[0]["checkpoint_sha256"] == file_sha256(Path(results[0]["checkpoint"]))


# ------------------------------------------------------------------------------ (4) stride


@pytest.mark.parametrize("n_tokens", [1, 2, 5, 32, 33, 34, 100, 257])
@pytest.mark.parametrize("stride", [1, 7, 16, 32])
def test_windows_score_every_target_once_with_at_least_context_minus_stride_tokens_before_it(n_tokens, stride):
    seen = []
    for k, (start, stop, skip) in enumerate(windows(n_tokens, CONTEXT, stride)):
        assert stop - start <= CONTEXT + 1 and skip < stop - start - 1
        for target in range(start + 1 + skip, stop):
            seen.append(target)
            if k:
                assert target - start >= CONTEXT - stride + 1
    assert seen == list(range(1, n_tokens))


def test_a_long_document_is_scored_once_per_token_and_stride_context_equals_independent_chunks(run_dir, tmp_path):
    loaded = load_run(run_dir)
    text = "\n\n".join(sample_texts("en")[:3])
    ids = encode_texts(loaded.processor, [text])[0]
    assert len(ids) > 8 * CONTEXT
    data = write_jsonl(tmp_path / "long.jsonl", [text])
    results = {s: evaluate(run_dir, [data], stride=s, batch_size=5)["total"] for s in (1, 7, 16, CONTEXT)}
    for m in results.values():
        assert (m["docs"], m["tokens"], m["bytes"]) == (1, len(ids) + 1, len(text.encode()))
    tokens = [BOS_ID, *ids, EOS_ID]
    chunks = sum(direct_nll(loaded.model, tokens[k:k + CONTEXT + 1]) for k in range(0, len(tokens) - 1, CONTEXT))
    assert results[CONTEXT]["nll_bits"] == pytest.approx(chunks / math.log(2), rel=1e-6)
    assert results[16]["nll_bits"] != pytest.approx(results[CONTEXT]["nll_bits"], rel=1e-6)
    # the default stride is half the context
    assert evaluate(run_dir, [data])["settings"]["stride"] == CONTEXT // 2


# ------------------------------------------------------------------------------ data of every kind


def test_the_default_is_the_runs_own_packed_val_split(run_dir, tmp_path, cli):
    result = cli("eval", "--run", run_dir)
    saved = json.loads((run_dir / "eval" / "packed-val.json").read_text())
    assert saved["data"][0]["kind"] == "packed" and saved["data"][0]["split"] == "val"
    assert saved["step"] == 4 and "packed-val.json" in one_line(result.output)
    # the fixture's val split: 150 documents of 10 tokens between BOS and EOS
    assert (saved["total"]["docs"], saved["total"]["tokens"]) == (150, 150 * 11)


def test_a_packed_val_split_scores_as_the_same_documents_read_as_text(tmp_path, cli):
    work = tmp_path / "w"
    docs = sample_texts("en")[:40]
    cli("download", write_jsonl(tmp_path / "stories.jsonl", docs), "-o", work / "raw")
    cli("train-tokenizer", "-i", work / "raw", "-o", work / "tokenizer", "--vocab-size", "400")
    cli("pack", "-i", work / "raw", "--tokenizer", work / "tokenizer", "-o", work / "packed", "--val-fraction", "0.3")
    # under <workdir>/runs/ without a config.toml: its data is <workdir>/packed
    run = fake_run(work / "runs" / "fake", work / "tokenizer" / "tokenizer.model")
    packed = evaluate(run, [])
    assert packed["data"][0]["kind"] == "packed" and list(packed["sources"]) == ["stories"]
    index = pq.read_table(work / "packed" / "index-00000.parquet").to_pylist()
    val_ids = [r["id"] for r in index if r["split"] == "val"]
    texts = dict(zip(*read_parts(work / "raw").select("id", "text").to_dict(as_series=False).values(), strict=True))
    as_text = evaluate(run, [write_jsonl(tmp_path / "val.jsonl", [texts[i] for i in val_ids])])
    for key in ("docs", "tokens", "bytes", "nll_bits", "top1", "top5"):
        assert packed["total"][key] == pytest.approx(as_text["total"][key], rel=1e-12), key
    # a stage directory: every document, under its source
    raw = evaluate(run, [work / "raw"])
    assert raw["data"][0]["kind"] == "stage" and raw["total"]["docs"] == len(docs)


def test_stage_directories_keep_their_sources_and_limits_apply_per_source(run_dir, tmp_path, cli):
    texts = sample_texts("en")
    cli("download", write_jsonl(tmp_path / "a.jsonl", texts[:5]), write_jsonl(tmp_path / "b.jsonl", texts[5:12]),
        "-o", tmp_path / "raw")
    full = evaluate(run_dir, [tmp_path / "raw"])
    assert {s: m["docs"] for s, m in full["sources"].items()} == {"a": 5, "b": 7}
    few = evaluate(run_dir, [tmp_path / "raw"], max_docs=2)
    assert {s: m["docs"] for s, m in few["sources"].items()} == {"a": 2, "b": 2}
    first = evaluate(run_dir, [tmp_path / "raw"], max_bytes=1)
    assert {s: m["docs"] for s, m in first["sources"].items()} == {"a": 1, "b": 1}
    assert first["sources"]["a"]["bytes"] == len(texts[0].encode())


def test_hf_datasets_are_read_by_downloads_code(run_dir, tmp_path, cli, fake_hub):
    import io

    import pyarrow as pa

    def parquet(texts: list[str]) -> bytes:
        sink = io.BytesIO()
        pq.write_table(pa.table({"text": texts}), sink)
        return sink.getvalue()

    texts = sample_texts("en")[:3]
    fake_hub.add_dataset("org/stories", {"data/train-00000-of-00001.parquet": parquet(["not this"] * 4),
                                         "data/validation-00000-of-00001.parquet": parquet(texts)})
    cli("eval", "--run", run_dir, "hf:org/stories", "--split", "validation")
    saved = json.loads((run_dir / "eval" / "stories-validation.json").read_text())
    assert list(saved["sources"]) == ["stories"] and saved["total"]["docs"] == 3
    assert saved["total"]["bytes"] == sum(len(t.encode()) for t in texts)
    assert saved["data"][0]["split"] == "validation"


def test_quantize_int8_measures_the_round_trip_of_the_weights(run_dir, tmp_path, cli):
    data = write_jsonl(tmp_path / "q.jsonl", sample_texts("en")[:2])
    cli("eval", "--run", run_dir, data, "--quantize", "int8")
    cli("eval", "--run", run_dir, data)
    int8 = json.loads((run_dir / "eval" / "q.int8.json").read_text())
    fp32 = json.loads((run_dir / "eval" / "q.json").read_text())
    assert int8["settings"]["quantize"] == "int8" and fp32["settings"]["quantize"] is None
    assert int8["total"]["tokens"] == fp32["total"]["tokens"]
    assert int8["total"]["bits_per_byte"] != fp32["total"]["bits_per_byte"]
    assert int8["total"]["bits_per_byte"] == pytest.approx(fp32["total"]["bits_per_byte"], rel=0.05)


# ------------------------------------------------------------------------------ (5) runs side by side


def test_several_runs_side_by_side(run_dir, tokenizers, tmp_path, cli):
    other = fake_run(tmp_path / "other", tokenizers[600])
    data = write_jsonl(tmp_path / "side.jsonl", sample_texts("en")[:3])
    result = cli("eval", "--run", run_dir, "--run", other, data)
    out = one_line(result.output)
    assert "bits per byte" in out and "tiny (step 4)" in out and "other (step 0)" in out
    both = [json.loads((r / "eval" / "side.json").read_text()) for r in (run_dir, other)]
    alone = [evaluate(r, [data]) for r in (run_dir, other)]
    for saved, single in zip(both, alone, strict=True):
        assert saved["total"] == single["total"]
    assert both[0]["total"]["bytes"] == both[1]["total"]["bytes"]
    assert both[0]["total"]["tokens"] != both[1]["total"]["tokens"]
    shown = f"{both[1]['total']['bits_per_byte']:.4f}"
    assert shown in out


# ------------------------------------------------------------------------------ (6) errors


def test_errors_are_one_line_naming_the_option_or_file(run_dir, tokenizers, tmp_path, cli):
    def error(*args) -> str:
        result = cli("eval", *args, expect=2)
        assert "Traceback" not in result.output and "internal error" not in result.output
        return one_line(result.output)

    empty = tmp_path / "untrained"
    empty.mkdir()
    assert "--run" in (e := error("--run", empty)) and "no checkpoint" in e
    assert "--run" in error("--run", tmp_path / "missing")
    assert "--run" in error(tmp_path / "x.jsonl")
    missing = tmp_path / "nowhere.jsonl"
    assert str(missing) in error("--run", run_dir, missing)
    (tmp_path / "notes.docx").write_bytes(b"PK")
    assert "notes.docx" in error("--run", run_dir, tmp_path / "notes.docx")
    data = write_jsonl(tmp_path / "d.jsonl", ["hello"])
    assert "--stride" in error("--run", run_dir, data, "--stride", "64")
    assert "--quantize" in error("--run", run_dir, data, "--quantize", "int4")
    assert "--max-bytes" in error("--run", run_dir, data, "--max-bytes", "lots")
    assert "-o" in error("--run", run_dir, "--run", fake_run(tmp_path / "r2", tokenizers[330]), data, "-o", tmp_path / "o.json")
    assert "no document" in error("--run", run_dir, write_jsonl(tmp_path / "blank.jsonl", [""]))
    # a directory that holds no documents
    tokenizer_dir = tmp_path / "tok"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "_manifest.json").write_text(json.dumps({"stage": "train-tokenizer"}))
    assert str(tokenizer_dir) in (e := error("--run", run_dir, tokenizer_dir)) and "train-tokenizer" in e
    # a stage directory whose part went missing
    cli("download", data, "-o", tmp_path / "raw")
    next(iter((tmp_path / "raw").glob("part-*.parquet"))).unlink()
    assert "missing" in error("--run", run_dir, tmp_path / "raw")


def test_packed_data_of_another_tokenizer_is_refused(run_dir, tokenizers, tmp_path, cli):
    from tiny_runs import write_corpus

    other_vocab = tmp_path / "vocab"
    write_corpus(other_vocab, vocab=330, tokenizer=tokenizers[330])
    assert "vocabulary of 330" in one_line(cli("eval", "--run", run_dir, other_vocab, expect=2).output)
    # the same vocabulary size, another tokenizer
    unigram = train_tokenizer(tmp_path / "unigram" / "tokenizer.model", sample_texts("en"), 400, "unigram")
    other_tokens = tmp_path / "unigram-packed"
    write_corpus(other_tokens, vocab=400, tokenizer=unigram)
    out = one_line(cli("eval", "--run", run_dir, other_tokens, expect=2).output)
    assert str(other_tokens) in out and "another tokenizer" in out
    # a run whose tokenizer.model was swapped after training
    swapped = tmp_path / "swapped"
    shutil.copytree(run_dir, swapped, ignore=shutil.ignore_patterns("eval"))
    shutil.copyfile(unigram, swapped / "tokenizer.model")
    out = one_line(cli("eval", "--run", swapped, write_jsonl(tmp_path / "t.jsonl", ["hi"]), expect=2).output)
    assert "--run" in out and "is not the tokenizer" in out


# ------------------------------------------------------------------------------ (7) the report


def test_the_report_lists_the_evaluations_of_its_runs(run_dir, tmp_path, cli):
    from nonllama.report import build_report

    work = tmp_path / "work"
    data = write_jsonl(tmp_path / "stories.jsonl", sample_texts("en")[:3])
    cli("download", data, "-o", work / "raw")
    run = work / "runs" / "tiny"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("eval"))
    report = work / "report.md"
    build_report(work, report)
    assert "## Evaluation" in (text := report.read_text()) and "No evaluation saved" in text
    cli("eval", "--run", run, work / "raw")
    cli("eval", "--run", run, data, "--quantize", "int8")
    build_report(work, report)
    text = report.read_text()
    section = text[text.index("## Evaluation"):]
    raw = json.loads((run / "eval" / "raw.json").read_text())
    assert "bits per byte on raw" in section and "bits per byte on stories.int8" in section
    assert f"{raw['sources']['stories']['bits_per_byte']:.4f}" in section
    assert "| stories |" in section and "tiny (step 4)" in section and "| latest |" in section
    # an earlier checkpoint's result goes beside the latest's; a checkpoint gone makes its results stale
    cli("eval", "--run", run, work / "raw", "--checkpoint", "2")
    assert json.loads((run / "eval" / "raw.step-2.json").read_text())["step"] == 2
    build_report(work, report)
    assert "| older |" in report.read_text()
    (run / "checkpoints" / "step-00000004.pt").unlink()
    build_report(work, report)
    section = report.read_text().split("## Evaluation")[1]
    assert "tiny (step 4, stale)" in section and "| stale |" in section


# ------------------------------------------------------------------------------ lm-eval


def test_lm_eval_scores_the_hf_export_as_eval_does(run_dir, tmp_path, cli, monkeypatch):
    pytest.importorskip("lm_eval", reason="the dev extra installs lm-eval[hf]")
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    cli("export", "--run", run_dir, "--format", "hf", "-o", tmp_path / "hf")
    texts = [whole_windows(load_run(run_dir).processor, t) for t in sample_texts("en")[:3]]
    docs = write_jsonl(tmp_path / "docs.jsonl", texts)
    choices = tmp_path / "choices.jsonl"
    choices.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "Once upon a time, there was a", "choices": [" little girl", " purple theorem"], "label": 0},
        {"question": "The cat sat on the", "choices": [" mat", " quantum"], "label": 0},
    ]))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "nonllama_docs.yaml").write_text(f"""task: nonllama_docs
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""")
    (tasks / "nonllama_choices.yaml").write_text(f"""task: nonllama_choices
dataset_path: json
dataset_kwargs:
  data_files:
    test: {choices}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
""")
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    # add_bos_token=False: lm-eval puts BOS before each document itself (its prefix token)
    results = simple_evaluate(model="hf", model_args=f"pretrained={tmp_path / 'hf'},add_bos_token=False",
                              tasks=["nonllama_docs", "nonllama_choices"], task_manager=manager, batch_size=2,
                              device="cpu", bootstrap_iters=0)["results"]
    assert 0.0 <= results["nonllama_choices"]["acc,none"] <= 1.0
    # lm-eval's rolling windows are disjoint (each predicts max_length tokens from the one before,
    # BOS first): eval's windows with stride = context, the text tokens without EOS
    ours = evaluate(run_dir, [docs], eos=False, stride=CONTEXT)["total"]
    assert results["nonllama_docs"]["bits_per_byte,none"] == pytest.approx(ours["bits_per_byte"], rel=1e-6)


def whole_windows(processor, text: str) -> str:
    """The longest start of `text` whose tokens fill whole windows of the context: lm-eval gives
    its last, partial window a full context of earlier tokens, eval (stride = context) does not."""
    for end in range(len(text), 0, -1):
        n = len(encode_texts(processor, [text[:end]])[0])
        if n % CONTEXT == 0 and n >= 3 * CONTEXT:
            return text[:end]
    raise AssertionError("no such start")
