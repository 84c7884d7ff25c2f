"""`nonllama generate`: text from a trained run, streamed to the terminal as it is produced.

- `load_run` finds a run's checkpoint (the latest, or the one asked for) and its tokenizer
  (`<run>/tokenizer.model`, which `train` copies there) and builds the model.
- `encode_prompt`: BOS, then the prompt's tokens. An empty prompt is BOS alone. A prompt that
  leaves no room in the context is refused: the context is the model's `max_seq_len`, which
  is the `--seq-len` the run was trained with (the rotary table stops there, and the model has
  never seen a position past it), and prompt plus generated tokens must fit in it.
- `generate`: the prompt goes through the model in one pass that fills the key/value cache,
  then each new token costs one position (`Llama.stream`). Stops at EOS, at
  `max_new_tokens`, or at the end of the context. `generate_rows`: several samples of one
  prompt decoded together as the rows of one batch (the prompt's pass done once), each row
  stopping on its own. `Sampling.quantize` "int8" decodes with int8 weights (`Decoder`).
- `TextStream` turns the ids into text as they come without ever emitting a broken UTF-8
  sequence: a character outside the vocabulary arrives as 2-4 byte-fallback tokens, and its
  bytes are held back until the character is complete.
- Chat (`--chat`, a run trained with `nonllama sft`): the conversation is first cut to the
  context (`nonllama.chat.fit_context` drops the oldest turns), then `chat_reply` prompts with it
  in nonllama.chat's template and `<|assistant|>`, and the reply ends at `<|end|>` (or EOS, or
  `max_new_tokens`, or the end of the context). `ChatSession` is the interactive loop (history, `/reset`,
  `/exit`), `reply_to_conversations` the file form (JSON lines of `{"messages": [...]}`).
"""

from __future__ import annotations

import codecs
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nonllama.chat import ChatIds, check_messages, fit_context
from nonllama.chat import encode_prompt as encode_chat_prompt
from nonllama.model import QUANTIZE, Llama, ModelConfig
from nonllama.pipeline.io import StageError, atomic_write_text
from nonllama.pipeline.tokenizer import (
    BOS_ID,
    EOS_ID,
    MODEL_NAME,
    SPACE_MARK,
    encode_texts,
    load_processor,
)
from nonllama.train.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# SentencePiece decodes each byte that is not part of a valid UTF-8 character to one U+FFFD
codecs.register_error("nonllama-per-byte", lambda e: ("\ufffd" * (e.end - e.start), e.end))


@dataclass
class LoadedRun:
    model: Llama
    processor: Any  # sentencepiece.SentencePieceProcessor
    run: Path
    checkpoint: Path
    tokenizer: Path
    step: int | None

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def find_checkpoint(run: Path | None, checkpoint: str | Path | None, option: str = "--run") -> tuple[Path, Path]:
    """(run directory, checkpoint file) from --run and --checkpoint: the run's latest checkpoint
    by default; --checkpoint a file, or a step number of the run. Errors name `option`, the
    option that gave the run."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if run is not None and not path.exists() and str(checkpoint).isdigit():
            path = checkpoint_path(run, int(str(checkpoint)))
        if not path.is_file():
            raise FileNotFoundError(f"--checkpoint {checkpoint}: no such checkpoint file")
        return (Path(run) if run is not None else path.parent.parent), path
    if run is None:
        raise ValueError(f"{option}: which run? Give the run directory `nonllama train` wrote (e.g. work/runs/15m)")
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{option} {run}: no such directory")
    path = latest_checkpoint(run)
    if path is None:
        raise FileNotFoundError(f"{option} {run}: no checkpoint in {run / 'checkpoints'} (has it trained?)")
    return run, path


def load_run(run: Path | None = None, checkpoint: str | Path | None = None, tokenizer: Path | None = None,
             device: str | torch.device = "cpu") -> LoadedRun:
    """The model of a checkpoint, in eval mode on `device`, and the tokenizer it was trained with."""
    run, path = find_checkpoint(run, checkpoint)
    state = load_checkpoint(path)
    if "model" not in state or "model_config" not in state:
        raise StageError(f"{path}: not a nonllama training checkpoint (no model or model_config)")
    config = ModelConfig(**state["model_config"])
    model = Llama(config)
    model.load_state_dict(state["model"])
    model.eval().to(device)
    tokenizer = Path(tokenizer) if tokenizer is not None else run / MODEL_NAME
    if not tokenizer.is_file():
        raise FileNotFoundError(f"{tokenizer} not found: pass the run's tokenizer with --tokenizer "
                                "(train copies there the tokenizer its pack manifest names)")
    processor = load_processor(tokenizer)
    if processor.vocab_size() != config.vocab_size:
        raise StageError(f"{tokenizer} has {processor.vocab_size()} pieces but the model of {path} "
                         f"{config.vocab_size}: not the tokenizer it was trained with")
    return LoadedRun(model, processor, run, path, tokenizer, state.get("step"))


def encode_prompt(processor: Any, text: str, max_seq_len: int) -> list[int]:
    """BOS and the prompt's tokens; refused if no token could be generated after them."""
    ids = [BOS_ID, *encode_texts(processor, [text])[0]] if text else [BOS_ID]
    if len(ids) >= max_seq_len:
        raise ValueError(
            f"the prompt is {len(ids)} tokens (BOS included) but the model's context is {max_seq_len} "
            f"tokens (max_seq_len, the --seq-len it was trained with): at most {max_seq_len - 1} "
            "leave room to generate")
    return ids


class TextStream:
    """Token ids in, text out; each piece of text returned is whole UTF-8 characters.

    Every id maps to bytes (a byte-fallback piece to its one byte, a control piece to none,
    any other piece to its text with ▁ as a space) and the bytes go through an incremental
    UTF-8 decoder, which holds back an incomplete character until its last byte arrives.
    The pieces joined are the processor's decode of all the ids (each byte that never forms a
    character comes out as one U+FFFD, as there).
    """

    def __init__(self, processor: Any):
        self.processor = processor
        self._bytes: dict[int, bytes] = {}
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="nonllama-per-byte")

    def piece_bytes(self, token: int) -> bytes:
        if token not in self._bytes:
            p = self.processor
            piece = p.id_to_piece(token)
            if p.is_byte(token) and (m := _BYTE_PIECE.fullmatch(piece)):
                value = bytes([int(m.group(1), 16)])
            elif p.is_control(token) or p.is_unused(token):
                value = b""
            elif p.is_unknown(token):
                value = p.decode([token]).encode()
            else:
                value = piece.replace(SPACE_MARK, " ").encode()
            self._bytes[token] = value
        return self._bytes[token]

    def push(self, token: int) -> str:
        return self._decoder.decode(self.piece_bytes(token))

    def flush(self) -> str:
        """What is left at the end: the bytes of an incomplete character, as U+FFFD each."""
        return self._decoder.decode(b"", final=True)


@dataclass
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = 0.9
    seed: int | None = None
    quantize: str = "none"  # the decoder's weights: "none" (float32, as trained) or "int8" (nonllama.model.Decoder)

    def check(self) -> None:
        """ValueError naming the option for a value out of range. A negative temperature is not
        taken as greedy: it is a mistake (a sign typed or lost), and 0 says greedy plainly."""
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise ValueError(f"--max-new-tokens {self.max_new_tokens}: must be at least 1")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"--temperature {self.temperature:g}: must be a number >= 0 (0 is greedy)")
        if self.top_k is not None and not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise ValueError(f"--top-k {self.top_k}: must be at least 1 (leave it out to sample from every token)")
        if self.top_p is not None and not 0 < self.top_p <= 1:  # NaN fails too
            raise ValueError(f"--top-p {self.top_p:g}: must be in (0, 1] (1 turns nucleus sampling off)")
        if self.quantize not in QUANTIZE:
            raise ValueError(f"--quantize {self.quantize}: choose one of {', '.join(QUANTIZE)}")


@dataclass
class Generation:
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)  # the new tokens, EOS (or the stop token) not included
    text: str = ""  # the new text
    stop: str = "max_new_tokens"  # or "eos", "end" (a chat reply's <|end|>), "context"
    prefill_s: float = 0.0  # the prompt's pass, up to the first new token
    decode_s: float = 0.0  # every later token

    @property
    def tokens_per_s(self) -> float:
        """New tokens per second of generation, the prompt's pass included."""
        total = self.prefill_s + self.decode_s
        return len(self.ids) / total if total > 0 else 0.0


def generate(model: Llama, processor: Any, prompt: str, sampling: Sampling, generator: torch.Generator | None = None,
             on_text: Callable[[str], None] | None = None) -> Generation:
    """Continue `prompt`; `on_text` receives the new text piece by piece as it is produced."""
    return generate_ids(model, processor, encode_prompt(processor, prompt, model.config.max_seq_len), sampling,
                        generator, on_text)


def generate_ids(model: Llama, processor: Any, prompt_ids: list[int], sampling: Sampling,
                 generator: torch.Generator | None = None, on_text: Callable[[str], None] | None = None,
                 end_id: int | None = None) -> Generation:
    """Continue the ids `prompt_ids` (shorter than the context); stops at EOS, and at `end_id`
    when given (a chat reply's <|end|>)."""
    return generate_rows(model, processor, prompt_ids, sampling, 1, generator, on_text, end_id)[0]


def generate_rows(model: Llama, processor: Any, prompt_ids: list[int], sampling: Sampling, rows: int = 1,
                  generator: torch.Generator | None = None, on_text: Callable[[str], None] | None = None,
                  end_id: int | None = None,
                  on_done: Callable[[int, Generation], None] | None = None) -> list[Generation]:
    """`rows` continuations of `prompt_ids`, decoded together as the rows of one batch: the
    prompt's pass is done once, each step draws one token per row, and each row stops on its
    own (EOS, `end_id`; the batch goes on while any row is open). Greedy rows are all the
    one-row result. `on_text` streams row 0's text as it comes (meant for one row);
    `on_done(row, generation)` hears of each row when it ends."""
    sampling.check()
    if rows < 1:
        raise ValueError(f"--num-samples {rows}: must be at least 1")
    device = model.rope_cos.device
    results = [Generation(list(prompt_ids)) for _ in range(rows)]
    tokens = torch.tensor([results[0].prompt_ids] * rows, device=device)
    streams = [TextStream(processor) for _ in range(rows)]
    pieces: list[list[str]] = [[] for _ in range(rows)]
    eos = processor.eos_id() if processor.eos_id() >= 0 else EOS_ID
    open_rows = list(range(rows))

    def emit(row: int, text: str) -> None:
        if text:
            pieces[row].append(text)
            if on_text is not None and row == 0:
                on_text(text)

    def finish(row: int, stop: str, now: float) -> None:
        result = results[row]
        result.stop, result.decode_s = stop, now - first
        emit(row, streams[row].flush())
        result.text = "".join(pieces[row])
        if on_done is not None:
            on_done(row, result)

    started = first = time.perf_counter()
    for step, new in enumerate(model.stream(tokens, sampling.max_new_tokens, sampling.temperature, sampling.top_k,
                                            sampling.top_p, eos, generator, quantize=sampling.quantize)):
        now = time.perf_counter()
        if step == 0:
            for result in results:
                result.prefill_s = now - started
            first = now
        drawn = new[:, 0].tolist()
        for row in list(open_rows):
            token = drawn[row]
            if token == eos or token == end_id:
                open_rows.remove(row)
                finish(row, "eos" if token == eos else "end", now)
            else:
                results[row].ids.append(token)
                emit(row, streams[row].push(token))
        if not open_rows:
            break
    now = time.perf_counter()
    for row in open_rows:  # max_new_tokens, or Llama.stream stopped at max_seq_len
        finish(row, "context" if len(results[row].ids) < sampling.max_new_tokens else "max_new_tokens", now)
    return results


# --------------------------------------------------------------------------- chat (--chat)


def chat_reply(model: Llama, processor: Any, ids: ChatIds, kept: list[dict], sampling: Sampling,
               generator: torch.Generator | None = None,
               on_text: Callable[[str], None] | None = None) -> Generation:
    """The assistant's reply to `kept`: messages ending with the user's, as `fit_context` cut them
    to the context (room for at least one new token)."""
    return generate_ids(model, processor, encode_chat_prompt(processor, kept, ids), sampling, generator, on_text,
                        end_id=ids.end)


CHAT_HELP = "/reset starts over, /exit (or end of input) quits"
USER_PROMPT, REPLY_PROMPT = "you> ", "assistant> "  # what the loop writes before each side's turn


@dataclass
class ChatSession:
    """The interactive chat: one line of the user's per turn, the reply streamed, the history
    kept (and cut from the oldest turns when the context is full). Reads `lines`, writes the
    conversation through `write` and notes (what was dropped, where a reply stopped) through
    `note`."""

    model: Llama
    processor: Any
    ids: ChatIds
    sampling: Sampling
    generator: torch.Generator | None = None
    system: str | None = None
    write: Callable[[str], None] = lambda text: print(text, end="", flush=True)  # noqa: E731
    note: Callable[[str], None] = lambda text: print(text, file=sys.stderr)  # noqa: E731
    messages: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def run(self, lines: Iterable[str]) -> None:
        self.write(USER_PROMPT)
        for line in lines:
            text = line.rstrip("\r\n")
            command = text.strip() if text.startswith("/") else None  # " /x" is a message
            if command == "/exit":
                return
            if command == "/reset":
                self.reset()
                self.note("history cleared")
            elif command is not None:
                self.note(f"{command.split()[0] if command else '/'}: not a command ({CHAT_HELP}; a message that "
                          "starts with / needs a space in front)")
            elif text.strip():
                self.turn(text)
            self.write(USER_PROMPT)
        self.write("\n")  # end of input: the prompt's line is left open

    def turn(self, text: str) -> Generation | None:
        """One exchange: the user's `text`, the reply streamed and added to the history."""
        context = self.model.config.max_seq_len
        try:
            kept, dropped = fit_context(self.processor, [*self.messages, {"role": "user", "content": text}],
                                        self.ids, context)
        except ValueError as e:  # a message too long for the context: say so, keep the history
            self.note(str(e))
            return None
        if dropped:  # for good: the history is what the model sees
            self.note(f"the conversation outgrew the context ({context} tokens): dropped the oldest "
                      f"{dropped} turn{'s' if dropped > 1 else ''}")
        self.write(REPLY_PROMPT)
        result = chat_reply(self.model, self.processor, self.ids, kept, self.sampling, self.generator,
                            on_text=self.write)
        self.write("\n")
        self.messages = [*kept, {"role": "assistant", "content": result.text}]
        if result.stop != "end":
            self.note(f"reply cut: {_STOPS.get(result.stop, result.stop)}")
        return result


_STOPS = {"eos": "the model ended it with EOS, not <|end|>", "max_new_tokens": "--max-new-tokens reached",
          "context": "the context is full"}


def read_conversations(path: Path, system: str | None = None) -> list[dict]:
    """The lines of a JSON-lines file, each `{"messages": [...]}` (other keys kept), checked
    before anything is generated: ValueError naming the line. Blank lines are skipped. `system`
    becomes the first message of each conversation that has no system message."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--input {path}: no such file")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"--input {path} line {n}"
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{where}: not JSON ({e})") from None
        if not isinstance(row, dict) or "messages" not in row:
            raise ValueError(f'{where}: expected an object {{"messages": [...]}}')
        messages = check_messages(row["messages"], where)
        if messages[-1]["role"] != "user":
            raise ValueError(f"{where}: the last message is the {messages[-1]['role']}'s: a conversation to reply "
                             "to ends with a user message")
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
        rows.append({**row, "messages": messages})
    if not rows:
        raise ValueError(f"--input {path}: no conversation in it (one JSON object per line)")
    return rows


def reply_to_conversations(model: Llama, processor: Any, ids: ChatIds, rows: list[dict], sampling: Sampling,
                           generator: torch.Generator | None = None,
                           on_reply: Callable[[int, Generation, int], None] | None = None) -> list[dict]:
    """Each row (from `read_conversations`) with the assistant's reply appended to its messages.
    The messages written are the whole conversation as given, even where the prompt had to drop
    its oldest turns (`on_reply(index, generation, dropped)` hears of it)."""
    fitted = []
    for i, row in enumerate(rows):  # all of them before any is generated: no work lost to the last one
        try:
            fitted.append(fit_context(processor, row["messages"], ids, model.config.max_seq_len))
        except ValueError as e:
            raise ValueError(f"conversation {i + 1}: {e}") from None
    out = []
    for i, (row, (kept, dropped)) in enumerate(zip(rows, fitted, strict=True)):
        result = chat_reply(model, processor, ids, kept, sampling, generator)
        out.append({**row, "messages": [*row["messages"], {"role": "assistant", "content": result.text}]})
        if on_reply is not None:
            on_reply(i, result, dropped)
    return out


SMALL_MODEL_PARAMS = 50_000_000


def decode_threads(model: Llama, device: torch.device | str) -> int:
    """CPU threads for decoding when --threads is not given: one for a model under 50M
    parameters, torch's default above. A decoding step of a small model is a few hundred small
    pieces of work bound by memory bandwidth, and threads meet at a barrier between each (36 per
    token for the 15m preset in the C++ kernel): when another process keeps a core busy, every
    barrier waits for a thread the scheduler has parked, and two threads of a 2-core machine
    fall well below one thread's speed (the 15m preset, float32, on a 2-core machine running
    others' training: 450-890 tokens/s on one thread, 80-250 on two; llama2.c's run.c likewise,
    360-550 and 10-50)."""
    if torch.device(device).type != "cpu" or model.num_params() >= SMALL_MODEL_PARAMS:
        return torch.get_num_threads()
    return 1


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> tuple[torch.Generator, int]:
    """A generator seeded with `seed`, or with a fresh seed (returned, so it can be given back)."""
    generator = torch.Generator(device=device)
    if seed is None:
        seed = int(torch.seed() % (2**31))
    generator.manual_seed(seed)
    return generator, seed


def read_prompts(prompts: list[str], file: Path | None = None, stdin: Any = None) -> list[str]:
    """The prompts: the arguments, then a file's lines (--file), with `-` for stdin's lines.
    Blank lines of a file are skipped; no prompt given at all is one empty prompt (BOS alone)."""
    if not prompts and file is None:
        return [""]
    out: list[str] = []
    for prompt in prompts:
        if prompt == "-":
            import sys

            out.extend(line for line in (stdin or sys.stdin).read().splitlines() if line.strip())
        else:
            out.append(prompt)
    if file is not None:
        if not file.is_file():
            raise FileNotFoundError(f"--file {file}: no such file")
        out.extend(line for line in file.read_text(encoding="utf-8").splitlines() if line.strip())
    if not out:
        raise ValueError(f"no prompt in {file if file is not None else 'stdin'} (one prompt per line)")
    return out


# --------------------------------------------------------------------------- saved samples (--save)


def sample_settings(sampling: Sampling, seed: int | None, num_samples: int) -> dict:
    """What decides the samples besides the checkpoint and the prompts (`seed`: the one used;
    greedy decoding draws nothing, so none; `quantize` only when not "none", so that files
    written before it existed stay up to date)."""
    settings = {"max_new_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                "top_k": sampling.top_k, "top_p": sampling.top_p,
                "seed": seed if sampling.temperature > 0 else None, "num_samples": num_samples}
    if sampling.quantize != "none":
        settings["quantize"] = sampling.quantize
    return settings


def _stamp(checkpoint: Path) -> list[int]:
    stat = Path(checkpoint).stat()
    return [stat.st_size, stat.st_mtime_ns]


def saved_samples(path: Path, checkpoint: Path, settings: dict, prompts: list[str]) -> dict | None:
    """What `save_samples` wrote to `path`, if it was for this checkpoint file (unchanged since),
    these settings and these prompts; else None."""
    if not Path(path).is_file():
        return None
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    same = (saved.get("checkpoint") == str(checkpoint) and saved.get("checkpoint_stamp") == _stamp(checkpoint)
            and saved.get("settings") == settings and saved.get("prompts") == prompts)
    return saved if same else None


def save_samples(path: Path, checkpoint: Path, step: int | None, settings: dict, prompts: list[str],
                 samples: list[dict]) -> None:
    """`samples` ({prompt, completion, tokens, stop} each) as JSON, with what made them."""
    atomic_write_text(Path(path), json.dumps({
        "checkpoint": str(checkpoint), "checkpoint_stamp": _stamp(checkpoint), "step": step,
        "settings": settings, "prompts": prompts, "samples": samples,
    }, ensure_ascii=False, indent=2) + "\n")
