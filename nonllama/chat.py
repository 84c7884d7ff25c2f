"""Conversations as token ids: the one chat template of nonllama, for training and for talking.

A conversation is a list of messages ``{"role": "system" | "user" | "assistant", "content": str}``
(a system message only first). Its ids are, for each message, the role's token, the content's
tokens, and ``<|end|>``::

    <|system|>You are terse.<|end|><|user|>Hi<|end|><|assistant|>Hello.<|end|>

and a prompt to generate the next reply is the conversation so far followed by ``<|assistant|>``:
the model writes the reply and ends it with ``<|end|>``.

Why this shape:
- The role tokens and ``<|end|>`` are control pieces at fixed ids (5..8, see
  nonllama.pipeline.tokenizer). SentencePiece never produces a control piece from text, so a
  message that spells ``<|user|>`` stays those characters: a user cannot forge a turn. This also
  means the template cannot be applied to a string and then encoded; the ids of the tokens are
  put in directly, and each content is encoded on its own.
- No BOS in front. Hugging Face applies a chat template by rendering a string and encoding it;
  our exported tokenizer keeps text that spells ``<s>`` as text (``split_special_tokens``, as
  SentencePiece does), so no template could produce BOS there, and the ids would differ. The
  first role token marks the start instead (pretraining windows start mid-document anyway, so
  the model is used to text without BOS in front).
- No newline after the role token or ``<|end|>``: each would be one more token per message that
  carries nothing the role token does not already say.
- `CHAT_TEMPLATE` is the same template in Jinja, for `export`: `apply_chat_template` of
  transformers on the exported tokenizer gives exactly these ids (tests/test_chat.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nonllama.pipeline.io import StageError
from nonllama.pipeline.tokenizer import CHAT_TOKENS, encode_texts

__all__ = ["CHAT_TEMPLATE", "CHAT_TOKENS", "ROLES", "ChatIds", "chat_ids", "check_messages", "encode_conversation",
           "encode_prompt", "fit_context", "has_chat_tokens"]

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatIds:
    """The ids of the chat tokens in one tokenizer."""

    system: int
    user: int
    assistant: int
    end: int

    def role(self, role: str) -> int:
        """The id of a role's token ("system", "user" or "assistant")."""
        return {"system": self.system, "user": self.user, "assistant": self.assistant}[role]


def has_chat_tokens(processor: Any) -> bool:
    """Whether the tokenizer has the four chat tokens, as control pieces."""
    return all(_control_id(processor, token) is not None for token in CHAT_TOKENS)


def _control_id(processor: Any, token: str) -> int | None:
    # piece_to_id answers unk's id for a piece it does not know; a user-defined piece that
    # spells a chat token (an old `--user-symbols '<|user|>'`) is matched in text, so it is
    # not a chat token: a user could forge a turn by typing it
    i = processor.piece_to_id(token)
    if i == processor.unk_id() or processor.id_to_piece(i) != token or not processor.is_control(i):
        return None
    return int(i)


def chat_ids(processor: Any, where: str) -> ChatIds:
    """The chat tokens' ids in this tokenizer; StageError naming `where` (what the tokenizer came
    with, e.g. "--run runs/base") if it has none."""
    found = {token: _control_id(processor, token) for token in CHAT_TOKENS}
    missing = [token for token, i in found.items() if i is None]
    if missing:
        raise StageError(
            f"{where}: the tokenizer has no chat tokens ({', '.join(missing)} missing, or not control pieces); "
            "it was trained before they existed. Retrain it with `nonllama train-tokenizer` (which reserves "
            "them), then pack and pretrain again")
    system, user, assistant, end = (found[token] for token in CHAT_TOKENS)
    return ChatIds(system, user, assistant, end)  # type: ignore[arg-type]


def check_messages(messages: Any, where: str = "messages") -> list[dict]:
    """`messages` if it is a conversation; ValueError saying what is wrong (prefixed by `where`,
    e.g. "conversations.jsonl line 3") if not. Keys besides role and content are allowed and
    ignored (a file may carry names or ids)."""
    if not isinstance(messages, list | tuple) or not messages:
        raise ValueError(f"{where}: expected a non-empty list of messages, got {_shown(messages)}")
    for n, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise ValueError(f"{where}: message {n} is {_shown(message)}, not an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}: message {n} has role {_shown(role)}: must be one of {', '.join(ROLES)}")
        if role == "system" and n != 1:
            raise ValueError(f"{where}: message {n} is a system message: only the first message may be one")
        if not isinstance(content, str):
            raise ValueError(f"{where}: message {n} ({role}) has content {_shown(content)}: must be a string")
    return list(messages)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def encode_conversation(processor: Any, messages: Sequence[dict], ids: ChatIds) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, loss mask) of a conversation, both of its length, int32 and bool.

    The mask is aligned with the ids, as targets: ``mask[i]`` is True when ``ids[i]`` is a token
    the model should learn to produce, i.e. the content tokens of the assistant's messages and
    the ``<|end|>`` closing each (so that it learns to stop). The assistant's role token is not
    in it: the prompt supplies it. To train, predict ``ids[1:]`` from ``ids[:-1]`` and weight
    the loss by ``mask[1:]``.
    """
    check_messages(messages)
    # every content in one call: the per-call overhead of SentencePiece dominates short messages
    contents = encode_texts(processor, [m["content"] for m in messages], as_arrays=True)
    id_parts: list[np.ndarray] = []
    mask_parts: list[np.ndarray] = []
    for message, content in zip(messages, contents, strict=True):
        learned = message["role"] == "assistant"
        id_parts.append(np.concatenate([[ids.role(message["role"])], content, [ids.end]]).astype(np.int32))
        mask_parts.append(np.concatenate([[False], np.full(len(content) + 1, learned)]))
    return np.concatenate(id_parts), np.concatenate(mask_parts)


def encode_prompt(processor: Any, messages: Sequence[dict], ids: ChatIds) -> list[int]:
    """The conversation so far and ``<|assistant|>``: what the model continues with its reply."""
    tokens, _ = encode_conversation(processor, messages, ids)
    return [*tokens.tolist(), ids.assistant]


def fit_context(processor: Any, messages: Sequence[dict], ids: ChatIds, max_seq_len: int,
                room: int = 1) -> tuple[list[dict], int]:
    """(messages whose prompt leaves at least `room` positions free, turns dropped).

    The oldest turns go first (a turn: the messages up to the next user message), a first
    system message is always kept. ValueError when even the system message and the last turn
    alone leave no room: that message is too long for the model's context.
    """
    messages = check_messages(messages)
    system = messages[:1] if messages[0]["role"] == "system" else []
    rest = messages[len(system):]
    starts = [i for i, m in enumerate(rest) if m["role"] == "user"] or [0]
    if starts[0] != 0:
        starts.insert(0, 0)
    for dropped, start in enumerate(starts):
        kept = [*system, *rest[start:]]
        length = len(encode_prompt(processor, kept, ids))
        if length + room <= max_seq_len:
            return kept, dropped
    raise ValueError(
        f"the last message makes a prompt of {length} tokens (the system message included), but the model's "
        f"context is {max_seq_len} tokens (the --seq-len it was trained with): write a shorter message"
        f"{' or a shorter --system' if system else ''}")


# The same template for transformers (`export --format hf` writes it as tokenizer_config.json's
# chat_template) and llama.cpp (GGUF's tokenizer.chat_template). The role tokens are written out
# literally, not joined from the role's name, so that transformers' sanitize_control_tokens can
# tell them from text; roles and the system message's place are checked as check_messages does.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' and not loop.first -%}"
    "{{ raise_exception('only the first message may be a system message') }}"
    "{%- elif message['role'] == 'system' -%}<|system|>"
    "{%- elif message['role'] == 'user' -%}<|user|>"
    "{%- elif message['role'] == 'assistant' -%}<|assistant|>"
    "{%- else -%}{{ raise_exception('role must be system, user or assistant, not ' + message['role']) }}"
    "{%- endif -%}"
    "{{ message['content'] }}<|end|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
