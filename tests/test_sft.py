"""`nonllama sft`: chat records in (quarantined when bad), the loss mask, packing, the sample,
and training through `train`'s loop (DDP equals gradient accumulation, resume equals a straight run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_runs import invoker, one_line, one_thread, tiny_run, torch_threads  # noqa: F401 - one_thread: a fixture

from nonllama.chat import chat_ids, encode_conversation
from nonllama.pipeline.tokenizer import load_processor
from nonllama.sft.data import BadChat, conversation_pieces, pack_windows, to_messages
from nonllama.sft.sample import chat_sample
from nonllama.train.data import IGNORE_INDEX

pytestmark = pytest.mark.usefixtures("one_thread")

# a tiny base run with windows of 128 tokens: the English conversations of the sample fit
SEQ_LEN = 128
# fp32: bf16 autocast (--dtype auto on a CPU with AVX-512 BF16) makes steps this small slower
SFT = ["--batch-size", "4", "--eval-batches", "2", "--lr", "3e-3", "--warmup", "2", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    with torch_threads(1):
        return tiny_run(invoker(), tmp_path_factory.mktemp("base"), "--seq-len", str(SEQ_LEN))


@pytest.fixture(scope="module")
def chat(base: Path):
    processor = load_processor(base / "tokenizer.model")
    return processor, chat_ids(processor, where="test")


def records(run: Path, split: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in map(json.loads, lines) if r["split"] == split]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(sorted((run / "checkpoints").glob("step-*.pt"))[-1], weights_only=True)["model"]


def english_chats(path: Path, chat, n: int = 60) -> Path:
    """The sample's English conversations that fit in a window whole (the base tokenizer has no
    Chinese pieces: Chinese text takes a token a byte), as JSONL."""
    processor, ids = chat
    english = [c for c in chat_sample(0) if c["messages"][-1]["content"].isascii()
               and len(encode_conversation(processor, c["messages"], ids)[0]) <= SEQ_LEN + 1][:n]
    path.write_text("".join(json.dumps(c) + "\n" for c in english), encoding="utf-8")
    return path


def test_the_chat_sample_is_valid_and_deterministic() -> None:
    sample = chat_sample(0)
    assert sample == chat_sample(0) and sample != chat_sample(1)
    assert 300 <= len(sample) <= 600
    for conversation in sample:
        assert to_messages(conversation) == conversation["messages"]
    assert sum(c["messages"][0]["role"] == "system" for c in sample) > 50
    assert sum(sum(m["role"] == "user" for m in c["messages"]) > 1 for c in sample) > 50
    chinese = [c for c in sample if not c["messages"][-1]["content"].isascii()]
    assert 100 < len(chinese) < len(sample) - 100


def test_record_shapes_and_what_is_wrong_with_bad_ones() -> None:
    assert to_messages({"prompt": "Hi", "response": "Hello.", "system": "Be brief."}) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}]
    assert to_messages({"instruction": "Add.", "input": "2 and 3", "output": "5"})[0]["content"] == "Add.\n\n2 and 3"
    assert to_messages({"instruction": "Say hi.", "input": "", "output": "Hi!"})[0]["content"] == "Say hi."
    bad = {
        "missing field": {"messages": [{"role": "user"}]},
        "wrong role": {"messages": [{"role": "bot", "content": "x"}]},
        "empty assistant reply": {"prompt": "Hi", "response": "  "},
        "non-string content": {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
        "turns out of order": {"messages": [{"role": "assistant", "content": "x"}]},
        "no assistant reply": {"messages": [{"role": "user", "content": "x"}]},
    }
    for category, record in bad.items():
        with pytest.raises(BadChat, match=f"^{category}:"):
            to_messages(record)


def test_the_loss_counts_exactly_the_assistant_tokens(chat, base: Path) -> None:
    """The targets that count are the assistant's content tokens and their <|end|>, nothing else;
    the model's loss is the mean NLL over them, computed here from its logits."""
    from nonllama.model import Llama, ModelConfig
    from nonllama.sft.windows import ChatWindows

    processor, ids = chat
    conversations = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 3?"},
                      {"role": "assistant", "content": "2 plus 3 is 5."}, {"role": "user", "content": "And 4?"},
                      {"role": "assistant", "content": "9."}],
                     [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello, friend."}]]
    pieces = [encode_conversation(processor, c, ids) for c in conversations]
    tokens, mask = pack_windows(pieces, SEQ_LEN + 1, "uint16")
    assert len(tokens) == 1  # both in one window
    expected = []  # the positions of every assistant content token and its end, worked out from the messages
    at = 0
    for conversation in conversations:
        for message in conversation:
            content = processor.encode(message["content"])
            if message["role"] == "assistant":
                expected += list(range(at + 1, at + 1 + len(content) + 1))
            at += 1 + len(content) + 1
    assert np.flatnonzero(mask[0]).tolist() == expected
    assert tokens[0][expected[-1]] == ids.end

    data = windows_dir(base.parent / "mask-windows", tokens, mask)
    x, y = ChatWindows(data).batch("train", [0], SEQ_LEN, torch.device("cpu"))
    counted = (y[0] != IGNORE_INDEX).nonzero().flatten() + 1  # target i is token i + 1
    assert counted.tolist() == expected
    assert torch.equal(y[0][counted - 1], torch.from_numpy(tokens[0][expected].astype(np.int64)))

    state = torch.load(sorted((base / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    model = Llama(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    logits, loss = model(x, y)
    nll = -F.log_softmax(logits.float()[0], -1)[counted - 1, y[0][counted - 1]]
    assert loss.item() == pytest.approx(nll.mean().item(), rel=1e-6)


def windows_dir(directory: Path, tokens: np.ndarray, mask: np.ndarray) -> Path:
    """A ChatWindows directory of these train windows (and no val ones)."""
    from nonllama.pipeline.io import file_sha256
    from nonllama.sft.windows import STAGE

    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, (t, m) in {"train": (tokens, mask), "val": (tokens[:0], mask[:0])}.items():
        for name, array in ((f"{split}.tokens.npy", t), (f"{split}.mask.npy", m)):
            np.save(directory / name, array)
            files[name] = file_sha256(directory / name)
    manifest = {"stage": STAGE, "seq_len": tokens.shape[1] - 1, "vocab_size": 400, "files": files,
                "tokenizer": {"path": "none", "sha256": "x"}, "output_digest": "x", "base": {"checkpoint": "none"}}
    (directory / "_manifest.json").write_text(json.dumps(manifest))
    return directory


def test_packing_never_cuts_an_answer(chat) -> None:
    """A conversation longer than a window is split before a user message; an exchange longer
    than a window is dropped with what follows it; every reply in a window is whole."""
    processor, ids = chat

    def encode(messages):
        return encode_conversation(processor, messages, ids)

    system = [{"role": "system", "content": "Answer briefly."}]
    turns = [m for i in range(8) for m in ({"role": "user", "content": f"Question number {i}, what is {i} plus 1?"},
                                            {"role": "assistant", "content": f"{i} plus 1 is {i + 1}."})]
    capacity = 64
    assert len(encode(system + turns)[0]) > 2 * capacity
    pieces, dropped = conversation_pieces(system + turns, encode, capacity)
    assert dropped == 0 and len(pieces) >= 3
    assert all(len(p[0]) <= capacity and p[0][0] == ids.system and p[0][len(encode(system)[0])] == ids.user
               for p in pieces)
    assert sum(int(p[1].sum()) for p in pieces) == sum(int(encode(system + turns[i:i + 2])[1].sum()) for i in
                                                        range(0, len(turns), 2))  # every answer once
    long_answer = [{"role": "user", "content": "Tell me everything."},
                   {"role": "assistant", "content": "and then " * 40}]
    pieces, dropped = conversation_pieces(system + turns[:2] + long_answer + turns[2:4], encode, capacity)
    assert dropped == 2 and len(pieces) == 1  # the long exchange and the one after it
    assert conversation_pieces(long_answer, encode, capacity) == ([], 1)

    every = [encode(c["messages"]) for c in chat_sample(0)[:150]]
    fitting = [p for c in chat_sample(0)[:150] for p in conversation_pieces(c["messages"], encode, capacity)[0]]
    assert len(fitting) > 50 and len(every) == 150
    tokens, mask = pack_windows(fitting, capacity, "uint16")
    assert mask.sum() == sum(int(p[1].sum()) for p in fitting)
    for window, counted in zip(tokens, mask, strict=True):
        runs = np.split(np.arange(capacity), np.flatnonzero(np.diff(counted.astype(int))) + 1)
        for run in runs:
            if counted[run[0]]:  # a reply: after its assistant token, closed by <|end|>
                assert window[run[0] - 1] == ids.assistant and window[run[-1]] == ids.end


def test_bad_records_are_quarantined_with_counts(cli, base: Path, chat, tmp_path: Path) -> None:
    data = english_chats(tmp_path / "chat.jsonl", chat, n=30)
    lines = data.read_text().splitlines() + [
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}),
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Beep."}]}),
        json.dumps({"prompt": "Hi"}),
        json.dumps({"prompt": "Hi", "response": ["Hello"]}),
        json.dumps({"text": "no conversation"}),
        json.dumps({"prompt": "Tell me", "response": "and then " * 100}),
        json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi!"}),
    ]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "sft"
    # (a fifth held out: the split is a hash of the file's name and position, so the val split of 31
    # conversations is never empty here)
    result = cli("sft", "--from", base, "--data", data, "--out", out, *SFT, "--max-steps", "2", "--eval-every", "2",
                 "--val-fraction", "0.2")
    text = one_line(result.output)
    assert "7 of 38 records quarantined" in text
    for reason, n in (("malformed JSON", 1), ("empty assistant reply", 1), ("wrong role", 1), ("missing field", 2),
                      ("non-string content", 1), ("too long", 1)):
        assert f"{reason}: {n}" in text, reason
    quarantined = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert len(quarantined) == 7 and all(q["file"] == str(data) and q["reason"] for q in quarantined)
    assert {q["line"] or q["record"] for q in quarantined} == {31, 32, 33, 34, 35, 36, 37}
    manifest = json.loads((out / "sft-data" / "_manifest.json").read_text())
    assert manifest["counts"]["conversations"] == 31 and manifest["counts"]["quarantined"] == 7
    assert (out / "tokenizer.model").read_bytes() == (base / "tokenizer.model").read_bytes()
    assert [r["step"] for r in records(out, "val")] == [2]

    result = cli("sft", "--from", base, "--data", tmp_path / "nothing.jsonl", "--out", tmp_path / "x", expect=2)
    assert "--data" in one_line(result.output) and "no such file" in one_line(result.output)


def test_a_tokenizer_without_chat_tokens_is_refused(cli, base: Path, tmp_path: Path) -> None:
    import shutil

    import sentencepiece as spm

    old = tmp_path / "old"
    shutil.copytree(base, old)
    text = tmp_path / "text.txt"
    text.write_text("\n".join(m["content"] for c in chat_sample(0)[:200] for m in c["messages"]
                               if m["content"].isascii()), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "plain"), vocab_size=400,
                                   byte_fallback=True, minloglevel=2)
    shutil.copyfile(tmp_path / "plain.model", old / "tokenizer.model")
    result = cli("sft", "--from", old, "--data", "sample", "--out", tmp_path / "sft", expect=2)
    message = one_line(result.output)
    assert f"--from {old}: the tokenizer has no chat tokens" in message and "Retrain it" in message
    assert "Traceback" not in result.output


def test_sft_starts_from_the_base_and_learns(cli, base: Path, chat, tmp_path: Path) -> None:
    data = english_chats(tmp_path / "chat.jsonl", chat)
    out = tmp_path / "sft"
    cli("sft", "--from", base, "--data", data, "--out", out, *SFT, "--max-steps", "30", "--eval-every", "15",
        "--lr", "1e-2")
    first = torch.load(sorted((base / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    train = records(out, "train")
    assert train[-1]["loss"] < 0.75 * train[0]["loss"], (train[0], train[-1])
    val = records(out, "val")
    assert [r["step"] for r in val] == [15, 30] and val[-1]["val_loss"] < train[0]["loss"]
    state = torch.load(sorted((out / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert state["model_config"] == first["model_config"] and state["config"]["seq_len"] == SEQ_LEN
    from nonllama.sft.windows import ChatWindows

    start = ChatWindows(out / "sft-data").initial_weights()  # what the loop loads before step 1
    assert all(torch.equal(start[k], first["model"][k]) for k in first["model"])
    # run again with --auto-resume: nothing to do
    result = cli("sft", "--from", base, "--data", data, "--out", out, *SFT, "--max-steps", "30", "--eval-every", "15",
                 "--lr", "1e-2", "--auto-resume")
    assert "up to date" in result.output


def test_ddp_matches_gradient_accumulation_and_resume_matches_a_straight_run(cli, base: Path, chat, tmp_path: Path) -> None:
    data = english_chats(tmp_path / "chat.jsonl", chat)
    common = ["--from", base, "--data", data, *SFT, "--batch-size", "2", "--max-steps", "6", "--eval-every", "3"]
    cli("sft", *common, "--out", tmp_path / "one", "--grad-accum", "2")
    env = {**os.environ, "NONLLAMA_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-m", "nonllama", "sft", *map(str, common), "--out", str(tmp_path / "two"),
                           "--nproc", "2"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = records(tmp_path / "one", "train"), records(tmp_path / "two", "train")
    assert len(one) == len(two) == 6
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4
    for a, b in zip(records(tmp_path / "one", "val"), records(tmp_path / "two", "val"), strict=True):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-5
    w1, w2 = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)

    cli("sft", *common, "--out", tmp_path / "resumed", "--grad-accum", "2", "--stop-at", "4")
    assert records(tmp_path / "resumed", "train")[-1]["step"] == 4
    cli("sft", "--out", tmp_path / "resumed", "--resume")  # --from and --data: the run's own
    for split in ("train", "val"):
        assert records(tmp_path / "resumed", split) == records(tmp_path / "one", split)
    resumed = final_weights(tmp_path / "resumed")
    assert all(torch.equal(w1[k], resumed[k]) for k in w1)
