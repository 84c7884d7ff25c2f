"""The C++ decoding step (nonllama/kernels) and int8 decoding: the same numbers as the torch path
and as Llama.forward, int8 as the fake-quantized model computes it, batched samples.

The first test to need the kernel builds it (~30-60 s once per machine; cached after)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from tiny_runs import one_line, one_thread, tiny_run_dir  # noqa: F401
from torch import nn

from nonllama import kernels
from nonllama.generate import Generation, Sampling, generate_rows
from nonllama.model import Decoder, KVCache, Llama, ModelConfig
from nonllama.quantize import dequantize_int8, fake_quantize_, model_group_size, quantize_int8

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def kernel():
    """The compiled kernel module; a build that fails is a failure here (the cause named), not a skip."""
    if not kernels.enabled():
        pytest.skip(f"{kernels.ENV}=0")
    module = kernels.load()
    assert module is not None, f"the decode kernel did not build: {kernels.problem}"
    return module


@pytest.fixture
def torch_path(monkeypatch):
    """Decoders made while it is active run in torch (NONLLAMA_KERNELS=0)."""
    monkeypatch.setenv(kernels.ENV, "0")


CONFIGS = {  # name: (n_heads, n_kv_heads, tied)
    "mha": (4, 4, False), "gqa": (4, 2, False), "mqa-tied": (4, 1, True), "gqa-tied": (4, 2, True),
}


def random_model(n_heads: int = 4, n_kv_heads: int = 2, tie: bool = False, dim: int = 64, hidden: int | None = None,
                 vocab: int = 97, max_seq_len: int = 64, scale: float = 8.0, seed: int = 0) -> Llama:
    """Weights `scale` x the initialization's: sharper, more varied logits (greedy says more)."""
    torch.manual_seed(seed)
    config = ModelConfig(dim=dim, n_layers=2, n_heads=n_heads, n_kv_heads=n_kv_heads, vocab_size=vocab,
                         max_seq_len=max_seq_len, tie_embeddings=tie, hidden_dim=hidden)
    model = Llama(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
            else:  # norms start at one; make them matter
                p.uniform_(0.5, 1.5)
    return model


def decode(model: Llama, decoder: Decoder, tokens: torch.Tensor, prompt: int, prefill: Llama | None = None) -> torch.Tensor:
    """Logits (batch, n - prompt + 1, vocab) for positions prompt - 1 .. n - 1 of `tokens`: the
    prompt's pass (by `prefill`, default the model) then one decoder step per position."""
    with torch.inference_mode():
        cache = KVCache(model.config, tokens.shape[0], torch.device("cpu"), torch.float32)
        steps = [decoder.head((prefill or model).features(tokens[:, :prompt], cache, 0)[:, -1])]
        steps += [decoder.step(tokens[:, i:i + 1], cache, i) for i in range(prompt, tokens.shape[1])]
    return torch.stack(steps, dim=1)


# --------------------------------------------------------------------------- float32


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_kernel_step_computes_what_the_torch_path_and_forward_compute(kernel, monkeypatch, name: str,
                                                                      batch: int) -> None:
    heads, kv_heads, tie = CONFIGS[name]
    model = random_model(heads, kv_heads, tie)
    tokens = torch.randint(0, 97, (batch, 20))
    with torch.no_grad():
        full, _ = model(tokens)
    fast = Decoder(model)
    assert fast.kernel is not None
    monkeypatch.setenv(kernels.ENV, "0")
    slow = Decoder(model)
    assert slow.kernel is None
    ours, theirs = decode(model, fast, tokens, 6), decode(model, slow, tokens, 6)
    assert (ours - theirs).abs().max() < 1e-4
    assert (ours - full[:, 5:]).abs().max() < 1e-4
    prompt = tokens[:, :5]
    monkeypatch.delenv(kernels.ENV)
    greedy = model.generate(prompt, 40, temperature=0)
    assert len(set(greedy[0, 5:].tolist())) > 5  # not one token repeated: the comparison says something
    monkeypatch.setenv(kernels.ENV, "0")
    assert torch.equal(greedy, model.generate(prompt, 40, temperature=0))


def test_odd_shapes(kernel) -> None:
    """Heads of 6, rows that are not a multiple of the kernel's 16-row tiles, a feed-forward of 30."""
    model = random_model(n_heads=6, n_kv_heads=3, dim=36, hidden=30, vocab=50)
    tokens = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        full, _ = model(tokens)
    assert (decode(model, Decoder(model), tokens, 4) - full[:, 3:]).abs().max() < 1e-4


def test_environment_turns_the_kernel_off(kernel, torch_path) -> None:
    decoder = Decoder(random_model())
    assert decoder.kernel is None and kernels.load() is None


def test_threads_do_not_change_the_numbers(kernel) -> None:
    model = random_model(tie=True)
    tokens = torch.randint(0, 97, (3, 24))
    one = decode(model, Decoder(model), tokens, 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = decode(model, Decoder(model), tokens, 4)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@pytest.mark.timeout(120)
def test_a_failed_build_falls_back_to_torch_and_says_why(kernel, monkeypatch, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "decode.cpp"
    broken.write_text("this is not C++;\n")
    monkeypatch.setattr(kernels, "SOURCE", broken)
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "problem", None)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    stale = kernels._build_directory(kernels.build_name()) / "lock"
    stale.touch()  # as a build killed half-way leaves it: torch alone would wait on it forever
    decoder = Decoder(random_model())
    assert decoder.kernel is None and kernels.problem
    err = capsys.readouterr().err
    assert "compiling nonllama's decode kernel" in err
    warning = [line for line in err.splitlines() if "did not build" in line]
    assert len(warning) == 1 and "decoding with torch" in warning[0] and "error" in warning[0]
    Decoder(random_model())  # tried once per process: no second build, no second warning
    assert "did not build" not in capsys.readouterr().err


# --------------------------------------------------------------------------- int8


def fake_int8(model: Llama, activations: bool = True) -> Llama:
    """A copy of `model` with every matrix quantize-dequantized (nonllama.quantize) and, with
    `activations`, the input of every linear layer too, per group along its last dimension: what
    the kernel's int8 step computes, in float32 torch."""
    fake = fake_quantize_(copy.deepcopy(model))
    group = model_group_size(model.config)

    def quantize_input(module, args):
        return (dequantize_int8(*quantize_int8(args[0], group), group),)

    if activations:
        for module in fake.modules():
            if isinstance(module, nn.Linear):
                module.register_forward_pre_hook(quantize_input)
    return fake


def step_by_step(model: Llama, decoder: Decoder, reference: Llama, tokens: torch.Tensor,
                 prompt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (batch, positions, vocab) of the decoder's steps after the reference's prompt pass,
    and the reference's logits for each of those positions computed from the same cache (the
    decoder's keys and values so far): every step compared on its own."""
    ours, theirs = [], []
    with torch.inference_mode():
        cache = KVCache(model.config, tokens.shape[0], torch.device("cpu"), torch.float32)
        reference.features(tokens[:, :prompt], cache, 0)
        for i in range(prompt, tokens.shape[1]):
            copied = KVCache(model.config, tokens.shape[0], torch.device("cpu"), torch.float32)
            for mine, same in zip([*copied.keys, *copied.values], [*cache.keys, *cache.values], strict=True):
                mine.copy_(same)
            theirs.append(reference(tokens[:, i:i + 1], cache=copied, start=i)[0][:, 0])
            ours.append(decoder.step(tokens[:, i:i + 1], cache, i))
    return torch.stack(ours, dim=1), torch.stack(theirs, dim=1)


def assert_fake_quantized(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal to float rounding, but for the rare step where a rounding difference upstream moves
    one activation across the .5 between two int8 values (one quantization step off, ~0.01-0.1
    on these logits; int8 against float32 is 0.2-0.3)."""
    error = (ours - theirs).abs().amax(dim=-1)  # per (row, position)
    assert error.max() < 0.2
    assert (error < 1e-4).float().mean() >= 0.9, error


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_int8_kernel_computes_what_the_fake_quantized_model_computes(kernel, name: str, batch: int) -> None:
    heads, kv_heads, tie = CONFIGS[name]
    model = random_model(heads, kv_heads, tie)
    decoder = Decoder(model, "int8")
    assert decoder.kernel is not None and decoder.group_size == 64
    assert_fake_quantized(*step_by_step(model, decoder, fake_int8(model), torch.randint(0, 97, (batch, 24)), 6))


def test_int8_groups_that_are_not_a_multiple_of_four(kernel) -> None:
    model = random_model(n_heads=6, n_kv_heads=3, dim=36, hidden=30, vocab=50)  # group 2 (divides 36 and 30)
    decoder = Decoder(model, "int8")
    assert decoder.group_size == 2
    assert_fake_quantized(*step_by_step(model, decoder, fake_int8(model), torch.randint(0, 50, (2, 16)), 4))


@pytest.mark.parametrize("scale, tolerance", [(1.0, 0.02), (8.0, 0.06)])
def test_int8_logits_are_close_to_float32(kernel, scale: float, tolerance: float) -> None:
    """Relative L2 error of the logits: measured 1.0% with the initialization's weights (1.4% on the
    15m preset) and 3.6% with weights 8x as large, whose activations have more outliers."""
    model = random_model(tie=True, scale=scale)
    tokens = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        full, _ = model(tokens)
    logits = decode(model, Decoder(model, "int8"), tokens, 8)
    reference = full[:, 7:]
    assert (logits - reference).norm() / reference.norm() < tolerance
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() > 0.9


def test_int8_torch_path_is_the_fake_quantized_model(torch_path) -> None:
    """Without the kernel, int8 multiplies by the dequantized weights: exactly the float32 torch
    path of the model with its weights quantize-dequantized."""
    model = random_model(tie=True)
    decoder = Decoder(model, "int8")
    assert decoder.kernel is None
    tokens = torch.randint(0, 97, (2, 16))
    fake = fake_int8(model, activations=False)
    assert torch.equal(decode(model, decoder, tokens, 4, prefill=fake), decode(fake, Decoder(fake), tokens, 4))


def test_quantize_is_checked() -> None:
    with pytest.raises(ValueError, match="quantize 'int4': choose one of none, int8"):
        Decoder(random_model(), "int4")


# --------------------------------------------------------------------------- batches of samples


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_greedy_rows_are_the_single_row_result(kernel, quantize: str) -> None:
    model = random_model()
    prompt = torch.randint(0, 97, (1, 6))
    one = model.generate(prompt, 50, temperature=0, quantize=quantize)
    many = model.generate(prompt.repeat(4, 1), 50, temperature=0, quantize=quantize)
    assert all(torch.equal(row, one[0]) for row in many)


def test_greedy_rows_in_torch_are_the_single_row_result(torch_path) -> None:
    model = random_model()
    prompt = torch.randint(0, 97, (1, 6))
    one = model.generate(prompt, 30, temperature=0)
    assert all(torch.equal(row, one[0]) for row in model.generate(prompt.repeat(3, 1), 30, temperature=0))


def test_the_prompt_of_identical_rows_is_prefilled_once(monkeypatch) -> None:
    model = random_model()
    seen = []
    features = Llama.features

    def spy(self, tokens, cache=None, start=0):
        seen.append(tuple(tokens.shape))
        return features(self, tokens, cache, start)

    monkeypatch.setattr(Llama, "features", spy)
    model.generate(torch.randint(0, 97, (1, 7)).repeat(3, 1), 4, temperature=0)
    model.generate(torch.randint(0, 97, (3, 7)), 4, temperature=0)
    assert seen == [(1, 7), (3, 7)]


class BatchScript:
    """Stands in for Llama: row r "generates" scripts[r] (then EOS forever)."""

    def __init__(self, scripts: list[list[int]]):
        self.scripts = scripts
        self.config = ModelConfig(dim=8, n_heads=2, n_kv_heads=2, vocab_size=400, max_seq_len=64)
        self.rope_cos = torch.zeros(1)
        self.quantize = None

    def stream(self, tokens, max_new_tokens, temperature, top_k, top_p, eos_id, generator, quantize="none"):
        self.quantize = quantize
        assert tokens.shape[0] == len(self.scripts) and bool((tokens == tokens[:1]).all())
        for i in range(max_new_tokens):
            yield torch.tensor([[s[i] if i < len(s) else eos_id] for s in self.scripts])


class Pieces:
    """A processor whose every id is a one-letter piece."""

    def eos_id(self) -> int:
        return 2

    def id_to_piece(self, i: int) -> str:
        return chr(ord("a") + i % 26)

    def is_byte(self, i: int) -> bool:
        return False

    def is_control(self, i: int) -> bool:
        return i < 3

    def is_unused(self, i: int) -> bool:
        return False

    def is_unknown(self, i: int) -> bool:
        return False


def test_each_row_stops_on_its_own() -> None:
    model = BatchScript([[3, 4, 2], [5, 6, 7, 8, 9, 10], [11, 2]])
    done: list[tuple[int, Generation]] = []
    results = generate_rows(model, Pieces(), [1], Sampling(max_new_tokens=5, quantize="int8"), 3,
                            on_done=lambda row, result: done.append((row, result)))
    assert [r.ids for r in results] == [[3, 4], [5, 6, 7, 8, 9], [11]]
    assert [r.stop for r in results] == ["eos", "max_new_tokens", "eos"]
    assert [r.text for r in results] == ["de", "fghij", "l"]
    assert [row for row, _ in done] == [2, 0, 1]  # as they ended
    assert model.quantize == "int8"


def test_seeded_batches_are_reproducible(kernel) -> None:
    model = random_model()
    prompt = torch.randint(0, 97, (1, 5)).repeat(3, 1)

    def run(seed: int) -> torch.Tensor:
        return model.generate(prompt, 30, temperature=1.0, top_p=0.95, generator=torch.Generator().manual_seed(seed))

    first = run(7)
    assert torch.equal(first, run(7)) and not torch.equal(first, run(8))
    assert len({tuple(row.tolist()) for row in first}) == 3  # the rows are different samples


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run_dir(tmp_path_factory, "decode")


def test_generate_quantize_int8(cli, run_dir: Path, kernel) -> None:
    args = ("generate", "Once upon a time", "--run", run_dir, "--greedy", "--max-new-tokens", "10")
    fp32, int8 = cli(*args), cli(*args, "--quantize", "int8")
    assert int8.stdout.startswith("Once upon a time") and "int8 weights" in int8.stderr
    assert "int8" not in fp32.stderr
    assert re.search(r"\d+ tokens in [\d.]+s, [\d.]+ tokens/s", int8.stderr)
    result = cli(*args, "--quantize", "int4", expect=2)
    assert "--quantize int4: choose one of none, int8" in one_line(result.output)


def test_generate_num_samples_is_one_batch(cli, run_dir: Path, tmp_path: Path, kernel) -> None:
    args = ("generate", "Once upon a time", "--run", run_dir, "--max-new-tokens", "12")
    one = cli(*args, "--greedy")
    save = tmp_path / "samples.json"
    three = cli(*args, "--greedy", "--num-samples", "3", "--save", save)
    assert three.stdout == one.stdout * 3  # greedy: every row is the single-row result
    assert three.stderr.count("tokens; stopped at") == 3 and "3 samples in one batch" in three.stderr
    assert "prompt 1/1, sample 3/3" in three.stderr
    saved = json.loads(save.read_text(encoding="utf-8"))
    assert len(saved["samples"]) == 3 and saved["settings"]["num_samples"] == 3
    assert "quantize" not in saved["settings"]  # float32: the settings of files written before --quantize
    assert all(s["prompt"] + s["completion"] + "\n" == one.stdout for s in saved["samples"])
    again = cli(*args, "--greedy", "--num-samples", "3", "--save", save)
    assert "up to date" in one_line(again.stderr) and again.stdout == three.stdout
    int8 = cli(*args, "--greedy", "--num-samples", "3", "--save", save, "--quantize", "int8")
    assert "up to date" not in int8.stderr
    assert json.loads(save.read_text(encoding="utf-8"))["settings"]["quantize"] == "int8"
    sampled = [cli(*args, "--seed", "5", "--num-samples", "3", "--temperature", "1.5").stdout for _ in range(2)]
    assert sampled[0] == sampled[1] and len(set(sampled[0].splitlines())) > 1
