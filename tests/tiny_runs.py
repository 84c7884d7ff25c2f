"""Small fixtures for the tests of `train`, `generate` and `export`: a packed corpus, a tokenizer
trained in a second, a tiny run trained through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nonllama.pipeline.executors import torch_threads

VOCAB = 64
# fp32: runs compare losses across runs and processes to float32 rounding, and bf16 autocast
# (--dtype auto on a CPU with AVX-512 BF16) makes steps this small 2x slower, not faster
TINY = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "8", "--lr", "3e-3", "--warmup", "5",
        "--eval-batches", "4", "--dtype", "fp32"]


def write_corpus(packed: Path, seed: int = 0, vocab: int = VOCAB, tokenizer: Path | None = None) -> np.ndarray:
    """A packed/ directory of documents, each one of 8 fixed 10-token sentences between BOS and
    EOS: a model can learn every token but the choice of sentence. Written in pack's layout, the
    train tokens in three shards of uneven sizes cut mid-document (windows cross their
    boundaries), val in two; `tokenizer`: the tokenizer.model the manifest names. Returns the
    train tokens, all shards in order."""
    from nonllama.train.data import write_packed

    rng = np.random.default_rng(seed)
    sentences = [rng.integers(4, vocab, size=10) for _ in range(8)]

    def documents(n: int) -> np.ndarray:
        return np.concatenate([[1, *sentences[rng.integers(0, 8)], 2] for _ in range(n)]).astype(np.uint16)

    train, val = documents(1500), documents(150)
    write_packed(packed, {"train": np.split(train, [5_000, 12_345]), "val": np.split(val, [1_000])}, vocab,
                 tokenizer=tokenizer)
    return train


def one_line(output: str) -> str:
    """The message without the line breaks rich adds at the terminal's width."""
    return output.replace("\n", "")


def sample_texts(*langs: str) -> list[str]:
    """The clean documents of the built-in sample corpus in these languages."""
    from nonllama.pipeline.sample import sample_corpus

    return [d.text for d in sample_corpus(0) if d.kind == "clean" and d.lang in langs]


def train_tokenizer(model_file: Path, texts: list[str], vocab_size: int, model_type: str = "bpe") -> Path:
    """A SentencePiece model with the project's settings (fixed ids, byte fallback, no dummy
    prefix) trained on `texts`, written to `model_file`."""
    from nonllama.pipeline.tokenizer import TokenizerConfig, train_sentencepiece

    model_file.parent.mkdir(parents=True, exist_ok=True)
    sentences = model_file.with_suffix(".txt")
    sentences.write_text("\n".join(line for t in texts for line in t.split("\n") if line), encoding="utf-8")
    config = TokenizerConfig(vocab_size=vocab_size, model_type=model_type, threads=1)
    train_sentencepiece(sentences, model_file, config, sentences.stat().st_size)
    sentences.unlink()
    return model_file


def tiny_run(cli, workdir: Path, *train_args: str) -> Path:
    """A run of the `tiny` preset trained for a few steps through the CLI, with an English
    tokenizer of 400 pieces (so Chinese text falls back to bytes) beside its checkpoints."""
    from nonllama.pipeline.tokenizer import load_processor

    model = train_tokenizer(workdir / "tokenizer" / "tokenizer.model", sample_texts("en"), 400)
    write_corpus(workdir / "packed", vocab=load_processor(model).vocab_size(), tokenizer=model)
    cli("train", "--workdir", workdir, *TINY, "--max-steps", "4", "--eval-every", "100", "--save-every", "2",
        *train_args)
    return workdir / "runs" / "tiny"


def invoker():
    """`nonllama ARGS...` in-process, as the `cli` fixture does, for module-scoped fixtures."""
    from typer.testing import CliRunner

    from nonllama.cli import app

    runner = CliRunner()

    def invoke(*args, expect: int | None = 0, input: str | None = None):
        result = runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, (result.exit_code, result.output)
        return result

    return invoke


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine threads that spin
    waiting for each other make a step several times slower."""
    with torch_threads(1):
        yield


def tiny_run_dir(tmp_path_factory, name: str) -> Path:
    """`tiny_run` for a module-scoped fixture: its own directory, trained on one thread."""
    with torch_threads(1):
        return tiny_run(invoker(), tmp_path_factory.mktemp(name))
