"""`nonllama generate`: the cache, sampling, streaming text, prompts, and the command end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from tiny_runs import one_line, one_thread, sample_texts, tiny_run_dir, train_tokenizer  # noqa: F401

from nonllama.generate import Sampling, TextStream, encode_prompt, generate, read_prompts
from nonllama.model import Decoder, KVCache, Llama, ModelConfig, sample
from nonllama.pipeline.tokenizer import encode_texts, load_processor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run_dir(tmp_path_factory, "generate")


@pytest.fixture(scope="module")
def english(tmp_path_factory):
    """A SentencePiece model of 400 pieces trained on English only: Chinese falls back to bytes."""
    return load_processor(train_tokenizer(tmp_path_factory.mktemp("tok") / "en.model", sample_texts("en"), 400))


def random_model(n_kv_heads: int = 2, vocab: int = 97, max_seq_len: int = 96, seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, vocab_size=vocab,
                         max_seq_len=max_seq_len, tie_embeddings=False)
    model = Llama(config).eval()
    with torch.no_grad():  # larger weights than the initialization: sharper, more varied logits
        for p in model.parameters():
            p.mul_(8 if p.dim() == 2 else 1)
    return model


# --------------------------------------------------------------------------- the decoding loop


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_greedy_with_the_cache_equals_greedy_rerunning_everything(n_kv_heads: int) -> None:
    model = random_model(n_kv_heads)
    prompt = torch.randint(0, 97, (1, 7))
    cached = model.generate(prompt, max_new_tokens=60, temperature=0)[0].tolist()
    tokens = prompt[0].tolist()
    with torch.no_grad():
        for _ in range(60):  # the whole sequence through the model again for every token
            logits, _ = model(torch.tensor([tokens]))
            tokens.append(int(logits[0, -1].argmax()))
    assert cached == tokens
    assert len(set(tokens[7:])) > 5  # not one token repeated: the comparison says something


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_a_decoding_step_computes_what_forward_computes(n_kv_heads: int) -> None:
    model = random_model(n_kv_heads)
    tokens = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        full, _ = model(tokens)
        cache = KVCache(model.config, 2, torch.device("cpu"), torch.float32)
        decoder = Decoder(model)
        steps = [decoder.head(model.features(tokens[:, :8], cache, 0)[:, -1])]
        steps += [decoder.step(tokens[:, i:i + 1], cache, i) for i in range(8, 12)]
    assert torch.allclose(torch.stack(steps, dim=1), full[:, 7:], atol=1e-5, rtol=0)


def test_prompt_is_prefilled_once_then_one_position_per_token(monkeypatch) -> None:
    model = random_model()
    seen = []
    features, step = Llama.features, Decoder.step

    def spy_features(self, tokens, cache=None, start=0):
        seen.append(("prompt", tokens.shape[1], start))
        return features(self, tokens, cache, start)

    def spy_step(self, tokens, cache, position):
        seen.append(("step", tokens.shape[1], position))
        return step(self, tokens, cache, position)

    monkeypatch.setattr(Llama, "features", spy_features)
    monkeypatch.setattr(Decoder, "step", spy_step)
    model.generate(torch.randint(0, 97, (1, 9)), max_new_tokens=5, temperature=0)
    # one pass over the prompt, one position per token after it; the 5th token needs none
    assert seen == [("prompt", 9, 0), ("step", 1, 9), ("step", 1, 10), ("step", 1, 11), ("step", 1, 12)]


def test_generation_stops_at_eos_and_at_the_end_of_the_context() -> None:
    model = random_model(max_seq_len=20)
    prompt = torch.randint(0, 97, (1, 5))
    full = model.generate(prompt, max_new_tokens=100, temperature=0)[0].tolist()
    assert len(full) == 20  # max_seq_len in all
    eos = full[8]
    stopped = model.generate(prompt, max_new_tokens=100, temperature=0, eos_id=eos)[0].tolist()
    assert stopped == full[:full.index(eos, 5) + 1]


def test_same_seed_same_output() -> None:
    model = random_model()
    prompt = torch.randint(0, 97, (2, 4))

    def run(seed: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(seed)
        return model.generate(prompt, 30, temperature=1.0, top_k=40, top_p=0.95, generator=g).tolist()

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_top_k_and_top_p_keep_only_the_likely_tokens() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(4000, 1)
    g = torch.Generator().manual_seed(0)

    def drawn(**kwargs) -> set[int]:
        return set(sample(logits, generator=g, **kwargs).flatten().tolist())

    assert drawn() == {0, 1, 2, 3}
    assert drawn(top_k=2) == {0, 1}
    assert drawn(top_p=0.75) == {0, 1}  # 0.5 alone falls short of 0.75; 0.5 + 0.3 reaches it
    assert drawn(top_p=0.85) == {0, 1, 2}
    assert drawn(top_p=0.01) == {0}  # the most likely token always stays
    assert drawn(top_k=3, top_p=0.6) == {0, 1}
    assert drawn(temperature=0) == {0}
    # temperature sharpens: at 0.25 the 0.3 token is (0.3/0.5)^4 = 13% as likely as the first
    counts = torch.bincount(sample(logits, temperature=0.25, generator=g).flatten(), minlength=4)
    assert 0.08 < counts[1] / counts[0] < 0.18 and counts[3] < 5


# --------------------------------------------------------------------------- text


def test_streamed_text_never_splits_a_character(english) -> None:
    text = "Tom saw 北京 and 😀 at the café, then 中文。"
    ids = encode_texts(english, [text])[0]
    assert sum(english.is_byte(i) for i in ids) >= 12  # the Chinese and the emoji are byte pieces
    stream = TextStream(english)
    chunks = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(chunks) == english.decode(ids) == text
    assert all("\ufffd" not in c for c in chunks)
    first = ids.index(english.piece_to_id("<0xE5>"))  # the first byte of 北
    assert chunks[first] == chunks[first + 1] == "" and chunks[first + 2] == "北"
    # bytes that never make a character: one U+FFFD each, as SentencePiece decodes them
    b = [english.piece_to_id(f"<0x{x:02X}>") for x in (0xE4, 0xB8, 0x61, 0xF0, 0x9F)]
    stream = TextStream(english)
    assert "".join([stream.push(i) for i in b] + [stream.flush()]) == english.decode(b) == "\ufffd\ufffda\ufffd\ufffd"


class ScriptedModel:
    """Stands in for Llama: "generates" a fixed list of ids."""

    def __init__(self, ids: list[int], max_seq_len: int = 64):
        self.ids, self.config = ids, ModelConfig(dim=8, n_heads=2, n_kv_heads=2, vocab_size=400, max_seq_len=max_seq_len)
        self.rope_cos = torch.zeros(1)
        self.prompts: list[list[int]] = []

    def stream(self, tokens, max_new_tokens, *args, **kwargs):
        self.prompts.append(tokens[0].tolist())
        for i in self.ids[:min(max_new_tokens, self.config.max_seq_len - tokens.shape[1])]:
            yield torch.tensor([[i]])


def test_generate_streams_whole_characters_and_stops_at_eos(english) -> None:
    ids = encode_texts(english, ["and 北京欢迎你 😀!"])[0]
    model = ScriptedModel([*ids, 2, 50, 51])
    chunks: list[str] = []
    result = generate(model, english, "Tom", Sampling(max_new_tokens=100), on_text=chunks.append)
    assert result.stop == "eos" and result.ids == ids and result.text == "and 北京欢迎你 😀!"
    assert "".join(chunks) == result.text and all("\ufffd" not in c for c in chunks)
    assert model.prompts == [[1, *encode_texts(english, ["Tom"])[0]]]
    assert result.tokens_per_s > 0
    result = generate(model, english, "Tom", Sampling(max_new_tokens=3))
    assert result.stop == "max_new_tokens" and result.ids == ids[:3]
    result = generate(ScriptedModel(ids, max_seq_len=8), english, "Tom", Sampling())
    assert result.stop == "context" and len(result.prompt_ids) + len(result.ids) == 8


def test_prompts_empty_and_too_long(english) -> None:
    assert encode_prompt(english, "", 32) == [1]
    assert encode_prompt(english, "Tom", 32)[0] == 1
    long = "the cat sat on the mat " * 10
    n = 1 + len(encode_texts(english, [long])[0])
    assert len(encode_prompt(english, long, n + 1)) == n
    with pytest.raises(ValueError, match=f"the prompt is {n} tokens .* context is {n} tokens .* at most {n - 1}"):
        encode_prompt(english, long, n)


def test_read_prompts(tmp_path: Path) -> None:
    import io

    assert read_prompts([]) == [""]
    f = tmp_path / "prompts.txt"
    f.write_text("one\n\ntwo  \n")
    assert read_prompts(["a", "-"], f, stdin=io.StringIO("x\ny\n")) == ["a", "x", "y", "one", "two  "]
    with pytest.raises(FileNotFoundError, match="--file"):
        read_prompts([], tmp_path / "missing.txt")
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no prompt"):
        read_prompts([], tmp_path / "blank.txt")


# --------------------------------------------------------------------------- the command


def test_generate_command(cli, run_dir: Path, tmp_path: Path) -> None:
    first = cli("generate", "Once upon a time", "--run", run_dir, "--seed", "3", "--max-new-tokens", "12")
    again = cli("generate", "Once upon a time", "--run", run_dir, "--seed", "3", "--max-new-tokens", "12")
    assert first.stdout == again.stdout and first.stdout.startswith("Once upon a time")
    assert re.search(r"\d+ tokens in [\d.]+s, [\d.]+ tokens/s", first.stderr)
    assert "step-00000004.pt" in first.stderr and "seed 3" in first.stderr
    # the same through the library: the command adds nothing but the prompt in front
    from nonllama.generate import load_run, make_generator

    loaded = load_run(run_dir)
    result = generate(loaded.model, loaded.processor, "Once upon a time", Sampling(max_new_tokens=12),
                      make_generator(3)[0])
    assert first.stdout == "Once upon a time" + result.text + "\n"

    greedy = cli("generate", "--run", run_dir, "--greedy", "--checkpoint", "2", "--max-new-tokens", "100")
    assert "step-00000002.pt" in greedy.stderr and "greedy" in greedy.stderr
    assert "stopped at EOS" in greedy.stderr or "context limit (32 tokens)" in one_line(greedy.stderr)

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tom\nThe dog\n")
    both = cli("generate", "-", "--file", prompts, "--run", run_dir, "--num-samples", "2", "--max-new-tokens", "4",
               input="A cat\n")
    # the two samples of a prompt are one batch: one summary each, one tokens/s per batch
    assert both.stderr.count("tokens; stopped at") == 6 and both.stderr.count("tokens/s") == 3
    assert "prompt 3/3, sample 2/2" in both.stderr
    lines = both.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines if line][:1] == ["A"]


def test_generate_save_writes_samples_and_a_rerun_prints_them(cli, run_dir: Path, tmp_path: Path) -> None:
    import json

    save = tmp_path / "samples.json"
    args = ["generate", "-", "--run", run_dir, "--seed", "0", "--max-new-tokens", "6", "--save", save]
    first = cli(*args, input="Once upon a time\n很久很久以前\n")
    saved = json.loads(save.read_text(encoding="utf-8"))
    assert [s["prompt"] for s in saved["samples"]] == ["Once upon a time", "很久很久以前"]
    assert saved["settings"]["seed"] == 0 and saved["step"] == 4 and saved["checkpoint"].endswith("step-00000004.pt")
    assert first.stdout == "".join(s["prompt"] + s["completion"] + "\n" for s in saved["samples"])
    stamp = save.stat().st_mtime_ns
    again = cli(*args, input="Once upon a time\n很久很久以前\n")
    assert "generate: up to date" in one_line(again.stderr) and again.stdout == first.stdout
    assert save.stat().st_mtime_ns == stamp
    other = cli(*args[:-2], "--temperature", "0.5", "--save", save, input="Once upon a time\n")
    assert "up to date" not in other.stderr and len(json.loads(save.read_text())["samples"]) == 1


def test_generate_command_errors(cli, run_dir: Path, tmp_path: Path) -> None:
    result = cli("generate", "x" * 200, "--run", run_dir, expect=2)
    assert "context is 32 tokens" in one_line(result.output)
    result = cli("generate", "hi", "--run", tmp_path / "nope", expect=2)
    assert "--run" in result.output and "no such directory" in result.output
    result = cli("generate", "hi", expect=2)
    assert "--run: which run?" in one_line(result.output)
    result = cli("generate", "hi", "--run", run_dir, "--checkpoint", "7", expect=2)
    assert "--checkpoint 7: no such checkpoint file" in one_line(result.output)
    result = cli("generate", "hi", "--run", run_dir, "--top-p", "0", expect=2)
    assert "--top-p 0: must be in (0, 1]" in one_line(result.output)
    empty = tmp_path / "run"
    (empty / "checkpoints").mkdir(parents=True)
    result = cli("generate", "hi", "--run", empty, expect=2)
    assert "no checkpoint" in one_line(result.output)


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "--temperature -1: must be a number >= 0 (0 is greedy)"),
    (["--temperature", "-0.5", "--seed", "1"], "--temperature -0.5: must be a number >= 0"),
    (["--temperature", "nan"], "--temperature nan: must be a number >= 0"),
    (["--temperature", "inf"], "--temperature inf: must be a number >= 0"),
    (["--top-p", "0"], "--top-p 0: must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p 1.5: must be in (0, 1]"),
    (["--top-p", "-0.2"], "--top-p -0.2: must be in (0, 1]"),
    (["--top-k", "0"], "--top-k 0: must be at least 1"),
    (["--top-k", "-3"], "--top-k -3: must be at least 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: must be at least 1"),
    (["--max-new-tokens", "-5"], "--max-new-tokens -5: must be at least 1"),
    (["--greedy", "--temperature", "0.8"], "--greedy and --temperature 0.8: give one"),
    (["--greedy", "--temperature", "-1"], "--temperature -1: must be a number >= 0"),
])
def test_sampling_options_out_of_range_are_refused(cli, run_dir: Path, tmp_path: Path, args, message) -> None:
    save = tmp_path / "samples.json"
    result = cli("generate", "Once upon a time", "--run", run_dir, *args, "--save", save, expect=2)
    out = one_line(result.output)
    assert out.startswith("error: ") and message in out and "Traceback" not in out
    assert not save.exists()  # nothing generated


def test_greedy_and_temperature_zero_agree(cli, run_dir: Path) -> None:
    args = ("generate", "Once upon a time", "--run", run_dir, "--max-new-tokens", "8")
    greedy = cli(*args, "--greedy")
    assert greedy.stdout == cli(*args, "--temperature", "0").stdout == cli(*args, "--greedy", "--temperature", "0").stdout
    assert "greedy" in greedy.stderr
    from nonllama.generate import load_run

    loaded = load_run(run_dir)
    with pytest.raises(ValueError, match="--temperature -1: must be a number >= 0"):  # the library checks too
        generate(loaded.model, loaded.processor, "hi", Sampling(temperature=-1.0))
