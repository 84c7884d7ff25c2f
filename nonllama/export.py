"""`nonllama export`: a trained run as files that other tools load.

``hf``       a directory that `transformers` loads with `AutoModelForCausalLM.from_pretrained`
             and `AutoTokenizer.from_pretrained`: config.json, generation_config.json,
             model.safetensors (fp32), tokenizer.json (+ tokenizer_config.json,
             special_tokens_map.json, and the SentencePiece tokenizer.model itself).
``llama2c``  model.bin in the version-0 layout that llama2.c's run.c reads, and tokenizer.bin
             in its tokenizer layout, written beside it unless --tokenizer-out says where.
``gguf``     one model.gguf file for llama.cpp (fp32, architecture "llama", the SentencePiece
             vocabulary inside), written with the `gguf` package.

``--quantize int8`` (nonllama.quantize: symmetric int8 weights, a float scale per group; the
matrices 3.5-3.8x smaller, the norms stay float32):

- llama2c: model.bin in llama2.c's version-2 layout, the one runq.c reads: a 256-byte header
  (magic "ak42", version 2, the 7 sizes, a shared-classifier byte, the group size), the fp32
  norms, then each matrix as its int8 values followed by its float32 scales, in runq.c's order
  (embedding, wq.., wk.., wv.., wo.., w1.., w2.., w3.. of every layer, an untied classifier).
  The group is llama2.c's 64, halved until it divides dim and the feed-forward width (runq.c's
  matmul walks a row in whole groups). runq.c quantizes the activations too (per group, before
  each matrix) and multiplies int8 by int8 in int32.
- gguf: the matrices as GGML Q8_0 (blocks of 32, an fp16 scale each, written with gguf.quants);
  a matrix whose rows are not a multiple of 32 stays F32, and the export says so.
- hf: refused: transformers loads the fp32 (or bf16) safetensors of a LlamaForCausalLM.

The conventions of the other side, and what is done about them:

- Rotary embeddings. nonllama (like Hugging Face) rotates the pairs (i, i + head_dim/2) of each
  head; run.c and llama.cpp's "llama" architecture rotate adjacent pairs (2i, 2i+1). The rows
  of wq and wk are permuted per head so that pair i lands on (2i, 2i+1): attention scores do not
  depend on the order of a head's dimensions, only on which dimensions are rotated together.
- run.c hard-codes rope theta 10000 and RMSNorm eps 1e-5, so a run with others is refused for
  llama2c (the hf and gguf files carry both values).
- run.c's tokenizer assumes BOS = 1 and EOS = 2 (ours already), looks up a single-space piece
  " " for the dummy prefix it puts before every prompt, and in byte fallback takes the piece of
  byte b to be id b + 3. Our byte pieces sit at 5.. (after <pad> and the newline piece), so the
  llama2c export renumbers the vocabulary: unk, BOS, EOS, the 256 bytes, then every other piece
  in its order; the embedding and output rows are permuted to match. Without a "▁" piece the
  byte piece of 0x20 is written as " " (it decodes to a space either way).
- Chat. A tokenizer with the chat tokens (nonllama.chat) exports its template: hf writes it as
  tokenizer_config.json's ``chat_template`` and stops generation at ``<|end|>`` as well as EOS
  (generation_config.json); gguf writes ``tokenizer.chat_template`` and ``<|end|>`` as the
  end-of-turn token, with the chat tokens typed control. In tokenizer.json the chat tokens are
  added tokens that are *not* special: transformers renders a template to a string and encodes
  it, and the exported tokenizer splits special tokens spelled in text (so that "<s>" in text
  stays text, as in SentencePiece), which would split the template's role tokens too. The cost:
  plain ``tokenizer(text)`` turns a literal "<|user|>" into the token, where SentencePiece keeps
  it as text; ``apply_chat_template(..., sanitize_control_tokens=True)`` keeps it as text in
  message contents (tokenizer_config.json names the chat tokens in ``chat_control_tokens``).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nonllama.model import Llama, ModelConfig, hf_config, to_hf_state_dict
from nonllama.pipeline.io import StageError, atomic_path, atomic_write_text
from nonllama.pipeline.tokenizer import CHAT_TOKENS, SPACE_MARK
from nonllama.protobuf import fields
from nonllama.quantize import dequantize_int8, model_group_size, quantize_int8

FORMATS = ("hf", "llama2c", "gguf")
QUANTIZATIONS = ("int8",)

# SentencePiece piece types (sentencepiece_model.proto); GGUF's token types use the same numbers
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM_MODEL, BPE_MODEL = 1, 2


# --------------------------------------------------------------------------- SentencePiece model


@dataclass
class SpmModel:
    """What an export needs of a SentencePiece model file: its pieces and how it was trained."""

    pieces: list[tuple[str, float, int]]  # (piece, score, type) by id
    model_type: int = UNIGRAM_MODEL
    add_dummy_prefix: bool = True
    byte_fallback: bool = False
    ids: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.ids = {piece: i for i, (piece, _, _) in enumerate(self.pieces)}

    def of_type(self, kind: int) -> list[int]:
        return [i for i, (_, _, t) in enumerate(self.pieces) if t == kind]

    def chat_ids(self) -> dict[str, int] | None:
        """Each chat token's id, if the tokenizer has all of them as control pieces (else None)."""
        found = {token: self.ids.get(token) for token in CHAT_TOKENS}
        if any(i is None or self.pieces[i][2] != CONTROL for i in found.values()):
            return None
        return found  # type: ignore[return-value]

    def byte_ids(self) -> list[int]:
        """The id of each byte's piece <0x00>..<0xFF>, in byte order."""
        found = {int(self.pieces[i][0][3:5], 16): i for i in self.of_type(BYTE)}
        if sorted(found) != list(range(256)):
            raise StageError("the tokenizer has no byte fallback pieces <0x00>..<0xFF>")
        return [found[b] for b in range(256)]


def read_spm_model(path: Path) -> SpmModel:
    """Parse a SentencePiece `.model` file (a protobuf ModelProto) without the protobuf package:
    the pieces (field 1), the trainer's model type and byte fallback (field 2) and the
    normalizer's add_dummy_prefix (field 3)."""
    data = Path(path).read_bytes()
    pieces: list[tuple[str, float, int]] = []
    model_type, byte_fallback, add_dummy_prefix = UNIGRAM_MODEL, False, True
    try:
        for number, value, _ in fields(data):
            if number == 1:  # SentencePiece {piece = 1; score = 2; type = 3 [default NORMAL]}
                piece, score, kind = "", 0.0, NORMAL
                for n, v, _ in fields(value):
                    if n == 1:
                        piece = v.decode("utf-8")
                    elif n == 2:
                        score = struct.unpack("<f", v)[0]
                    elif n == 3:
                        kind = v
                pieces.append((piece, score, kind))
            elif number == 2:  # TrainerSpec {model_type = 3; byte_fallback = 35}
                for n, v, _ in fields(value):
                    if n == 3:
                        model_type = v
                    elif n == 35:
                        byte_fallback = bool(v)
            elif number == 3:  # NormalizerSpec {add_dummy_prefix = 3}
                for n, v, _ in fields(value):
                    if n == 3:
                        add_dummy_prefix = bool(v)
    except (IndexError, UnicodeDecodeError, struct.error, ValueError) as e:
        raise StageError(f"{path}: not a SentencePiece model ({e})") from None
    if not pieces:
        raise StageError(f"{path}: not a SentencePiece model (no pieces)")
    return SpmModel(pieces, model_type, add_dummy_prefix, byte_fallback)


def hf_tokenizer(spm: SpmModel) -> Any:
    """A `tokenizers.Tokenizer` that encodes and decodes as the SentencePiece model does.

    The project's tokenizers add no dummy prefix and normalize nothing, so the pipeline is:
    spaces to ▁ (Metaspace, no prefix, no split: SentencePiece pieces never span a word
    boundary anyway), the same BPE merges (derived from the piece scores, as transformers'
    converter does) or unigram scores, byte fallback, user-defined pieces (the newline) matched
    first; decoding maps ▁ back to spaces and fuses byte pieces. BOS is added in front.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE, Unigram

    unk = spm.of_type(UNKNOWN)[0] if spm.of_type(UNKNOWN) else 0
    if spm.model_type == BPE_MODEL:
        model = BPE(vocab=dict(spm.ids), merges=_bpe_merges(spm), unk_token=spm.pieces[unk][0],
                    fuse_unk=True, byte_fallback=spm.byte_fallback)
    elif spm.model_type == UNIGRAM_MODEL:
        # SentencePiece never matches text against a byte or control piece (literal "<0x41>"
        # or "<s>" is text); a score no path would choose keeps the Viterbi search off them too.
        # Left over: where "<" itself is not a piece, such literal text still comes out as that
        # one piece here (in SentencePiece as byte pieces)
        scores = [(piece, -1e6 if kind in (BYTE, CONTROL) else score) for piece, score, kind in spm.pieces]
        model = Unigram(scores, unk_id=unk, byte_fallback=spm.byte_fallback)
    else:
        raise StageError(f"SentencePiece model type {spm.model_type} (word or char): only bpe and unigram export")
    tokenizer = Tokenizer(model)
    prepend = "first" if spm.add_dummy_prefix else "never"
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE_MARK, prepend_scheme=prepend, split=False)
    steps = [decoders.Replace(SPACE_MARK, " "), decoders.ByteFallback(), decoders.Fuse()]
    if spm.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tokenizer.decoder = decoders.Sequence(steps)
    chat = set(spm.chat_ids() or {})
    specials = [spm.pieces[i][0] for i in (*spm.of_type(UNKNOWN), *spm.of_type(CONTROL))]
    tokenizer.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in specials if p not in chat])
    # the chat tokens: not special, so that a rendered chat template's role tokens are matched
    # even though the tokenizer splits special tokens spelled in text (see the module's notes)
    tokenizer.add_tokens([AddedToken(spm.pieces[i][0], special=False, normalized=False)
                          for i in (*spm.of_type(USER_DEFINED), *(spm.ids[t] for t in CHAT_TOKENS if t in chat))])
    bos = spm.pieces[1][0]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 1)])
    return tokenizer


def _bpe_merges(spm: SpmModel) -> list[tuple[str, str]]:
    """Every split of a learned piece into two pieces, ranked by the piece's score: BPE with
    these merges picks the pair SentencePiece picks (the one whose union scores highest)."""
    normal = {spm.pieces[i][0] for i in spm.of_type(NORMAL)}
    merges = []
    for i in spm.of_type(NORMAL):
        piece, score, _ = spm.pieces[i]
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                merges.append((-score, spm.ids[left], spm.ids[right], left, right))
    return [(left, right) for *_, left, right in sorted(merges)]


# --------------------------------------------------------------------------- the formats


@dataclass
class Exported:
    format: str
    files: list[Path]
    notes: list[str] = field(default_factory=list)


def export_run(fmt: str, out: Path, run: Path | None = None, checkpoint: str | Path | None = None,
               tokenizer: Path | None = None, tokenizer_out: Path | None = None, force: bool = False,
               quantize: str | None = None) -> Exported:
    """Write the run's model (latest checkpoint, or --checkpoint) in format `fmt` to `out`;
    `quantize`: None (fp32) or "int8" (llama2c and gguf only).

    Nothing that exists is overwritten unless `force`, and then only a previous export of the
    same format (see `check_output`), which is checked before the run is even loaded.
    """
    from nonllama.generate import load_run

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if tokenizer_out is not None and fmt != "llama2c":
        raise ValueError(f"--tokenizer-out {tokenizer_out}: only --format llama2c writes a separate tokenizer file")
    check_quantize(fmt, quantize)
    check_output(fmt, Path(out), tokenizer_out, force)
    loaded = load_run(run, checkpoint, tokenizer)
    spm = read_spm_model(loaded.tokenizer)
    if fmt == "hf":
        return export_hf(loaded.model, spm, loaded.tokenizer, Path(out), force=force)
    if fmt == "llama2c":
        return export_llama2c(loaded.model, spm, Path(out), tokenizer_out, force=force, quantize=quantize)
    return export_gguf(loaded.model, spm, Path(out), name=loaded.run.name, force=force, quantize=quantize)


def check_quantize(fmt: str, quantize: str | None) -> None:
    """Refuse (ValueError naming the option) a quantization the format cannot carry."""
    if quantize is None:
        return
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"--quantize {quantize!r}: choose {', '.join(QUANTIZATIONS)} (or leave it out for fp32)")
    if fmt == "hf":
        raise ValueError(f"--quantize {quantize}: --format hf writes the fp32 safetensors transformers loads "
                         "(no int8 layout of its own); int8 goes to --format llama2c (runq.c) or gguf (Q8_0)")


# ---- where an export may write

# What an hf export writes, all of it: a directory holding these names and nothing else, with a
# config.json of a Llama, is a previous export (--force replaces it); anything else is not ours.
HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
_DEFAULT_NAMES = {"hf": "hf", "llama2c": "model.bin", "gguf": "model.gguf"}


def llama2c_tokenizer_path(out: Path, tokenizer_out: Path | None) -> Path:
    """Where the llama2c export writes tokenizer.bin: --tokenizer-out, or beside -o."""
    return Path(tokenizer_out) if tokenizer_out is not None else Path(out).with_name("tokenizer.bin")


def check_output(fmt: str, out: Path, tokenizer_out: Path | None = None, force: bool = False) -> None:
    """Refuse (ValueError naming the path) to write where an export would overwrite or mix into
    something it did not write. Without `force` nothing that exists is replaced; with it, only a
    previous export of the same format: for hf a directory of exactly the files an hf export
    writes, for llama2c and gguf a file that reads as one of that format."""
    out = Path(out)
    _check_parents(out, "-o")
    if fmt == "hf":
        _check_hf_dir(out, force)
    elif fmt == "llama2c":
        tokenizer_path = llama2c_tokenizer_path(out, tokenizer_out)
        option = "--tokenizer-out" if tokenizer_out is not None else "--tokenizer-out (default: beside -o)"
        if tokenizer_path.resolve() == out.resolve():
            raise ValueError(f"-o {out} and --tokenizer-out {tokenizer_path} are the same file")
        _check_parents(tokenizer_path, option)
        _check_file(out, "-o", "llama2c model.bin", _is_llama2c_model, force, fmt)
        _check_file(tokenizer_path, option, "llama2c tokenizer.bin", _is_llama2c_tokenizer, force, fmt)
    elif fmt == "gguf":
        _check_file(out, "-o", "GGUF file", _is_gguf, force, fmt)


def _check_parents(path: Path, option: str) -> None:
    """The nearest existing folder above `path` must be a directory (a file there is an error)."""
    for parent in Path(path).parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a directory")
            return


def _check_file(path: Path, option: str, what: str, looks_like: Any, force: bool, fmt: str) -> None:
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a directory; --format {fmt} writes a file "
                         f"(e.g. {path / _DEFAULT_NAMES[fmt]})")
    if not force:
        raise ValueError(f"{option} {path}: already exists (not overwritten); --force replaces a previous "
                         f"{fmt} export")
    try:
        ours = looks_like(path)
    except OSError:  # unreadable, or a dangling link: not something to replace blindly
        ours = False
    if not ours:
        raise ValueError(f"{option} {path}: exists and is not a {what}; not replacing it, even with --force")


def _check_hf_dir(out: Path, force: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"-o {out}: exists and is not a directory (--format hf writes a directory)")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    others = [name for name in entries if name not in HF_FILES]
    if others or not _is_llama_config(out / "config.json"):
        shown = others or entries
        listed = ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
        raise ValueError(f"-o {out}: a directory of files a nonllama hf export did not write ({listed}); "
                         "not writing into it, even with --force: give a new or empty directory")
    if not force:
        raise ValueError(f"-o {out}: holds a previous hf export ({', '.join(entries[:3])}, ...; not "
                         "overwritten); --force replaces it")


def _is_llama_config(path: Path) -> bool:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "llama" \
        and config.get("architectures") == ["LlamaForCausalLM"]


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _is_llama2c_model(path: Path) -> bool:
    """A file whose size is what its version-0 header says (see `export_llama2c`), or what its
    version-2 header says (`--quantize int8`)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(41)
    if len(header) == 41 and struct.unpack("<Ii", header[:8]) == (LLAMA2C_MAGIC, 2):
        dim, hidden, layers, heads, kv_heads, vocab, seq = struct.unpack("<7i", header[8:36])
        shared, group = header[36], struct.unpack("<i", header[37:41])[0]
        if min(dim, hidden, layers, heads, kv_heads, vocab, seq, group) < 1 or shared > 1 or dim % heads:
            return False
        return size == llama2c_int8_size(dim, hidden, layers, heads, kv_heads, vocab, bool(shared), group)
    if len(header) < 28:
        return False
    dim, hidden, layers, heads, kv_heads, vocab, seq = struct.unpack("7i", header[:28])
    if min(dim, hidden, layers, heads, kv_heads, seq) < 1 or vocab == 0 or dim % heads:
        return False
    head = dim // heads
    kv_dim = head * kv_heads
    floats = (abs(vocab) * dim * (1 if vocab > 0 else 2) + layers * (2 * dim + 2 * dim * dim + 2 * dim * kv_dim
              + 3 * dim * hidden) + dim + seq * head)
    return size == 28 + 4 * floats


def _is_llama2c_tokenizer(path: Path) -> bool:
    """A file that parses to its end as tokenizer.bin: max length, then (score, length, bytes)."""
    data = path.read_bytes()
    if len(data) < 4:
        return False
    (max_len,), at = struct.unpack("<i", data[:4]), 4
    while at < len(data):
        if at + 8 > len(data):
            return False
        n = struct.unpack("<i", data[at + 4:at + 8])[0]
        if not 0 <= n <= max_len:
            return False
        at += 8 + n
    return at == len(data) and at > 4


def _require(*modules: str, fmt: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise StageError(f"--format {fmt} needs {' and '.join(missing)}: pip install 'nonllama[export]'")


# ---- Hugging Face


def export_hf(model: Llama, spm: SpmModel, tokenizer_model: Path, out: Path, force: bool = False) -> Exported:
    """A `transformers` directory: LlamaForCausalLM weights and config, and a fast tokenizer.

    Written into a staging directory beside `out` and moved into place once complete, so a
    failed export leaves `out` as it was (absent, empty, or the previous export).
    """
    _require("safetensors", "tokenizers", fmt="hf")
    out = Path(out)
    check_output("hf", out, force=force)
    target = out.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.export-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        chat = spm.chat_ids()
        files = write_hf_model(model, staging, pad_token_id=spm.ids.get("<pad>"),
                               end_token_id=chat["<|end|>"] if chat else None)
        files += write_hf_tokenizer(spm, tokenizer_model, staging, model.config.max_seq_len)
        if not target.exists():
            os.replace(staging, target)
        else:  # empty, or a previous export (check_output): every one of its files is replaced
            for file in files:
                os.replace(file, target / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Exported("hf", [out / file.name for file in files])


def write_hf_model(model: Llama, out: Path, pad_token_id: int | None = None,
                   end_token_id: int | None = None) -> list[Path]:
    """config.json, generation_config.json and model.safetensors (fp32; a tied head is stored
    once, as the embedding, and config.json says it is tied). `end_token_id`: <|end|>, where
    generation stops too (a chat reply ends there)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **hf_config(model.config),
              "pad_token_id": pad_token_id, "torch_dtype": "float32"}
    eos = [2, end_token_id] if end_token_id is not None else 2
    generation = {"bos_token_id": 1, "eos_token_id": eos, "pad_token_id": pad_token_id}
    files = [out / "config.json", out / "generation_config.json", out / "model.safetensors"]
    atomic_write_text(files[0], json.dumps(config, indent=2) + "\n")
    atomic_write_text(files[1], json.dumps(generation, indent=2) + "\n")
    weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in to_hf_state_dict(model).items()}
    with atomic_path(files[2]) as tmp:
        save_file(weights, str(tmp), metadata={"format": "pt"})
    return files


def write_hf_tokenizer(spm: SpmModel, tokenizer_model: Path, out: Path, max_length: int) -> list[Path]:
    """tokenizer.json (see `hf_tokenizer`), its tokenizer_config.json and special_tokens_map.json,
    and a copy of the SentencePiece model (what llama.cpp's converter reads)."""
    files = [out / "tokenizer.json", out / "tokenizer_config.json", out / "special_tokens_map.json",
             out / "tokenizer.model"]
    with atomic_path(files[0]) as tmp:
        hf_tokenizer(spm).save(str(tmp))
    specials = {"bos_token": spm.pieces[1][0], "eos_token": spm.pieces[2][0], "unk_token": spm.pieces[0][0]}
    if "<pad>" in spm.ids:
        specials["pad_token"] = "<pad>"
    chat = {}
    if spm.chat_ids() is not None:
        from nonllama.chat import CHAT_TEMPLATE

        chat = {"chat_template": CHAT_TEMPLATE, "chat_control_tokens": list(CHAT_TOKENS)}
    atomic_write_text(files[1], json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "add_bos_token": True,
        "add_eos_token": False,
        # text that spells "<s>" is text, as in SentencePiece, not the BOS token
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        **chat,
    }, indent=2) + "\n")
    atomic_write_text(files[2], json.dumps(specials, indent=2) + "\n")
    with atomic_path(files[3]) as tmp:
        shutil.copyfile(tokenizer_model, tmp)
    return files


# ---- llama2.c


def interleave_rotary(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a query or key projection from rotate-half order (pairs i, i + head_dim/2 of each
    head) to adjacent pairs (2i, 2i + 1): the inverse of the permutation Hugging Face's
    convert_llama_weights_to_hf applies."""
    rows, cols = weight.shape
    return weight.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def llama2c_problems(config: ModelConfig, spm: SpmModel) -> list[str]:
    """Why run.c could not run this model as trained (empty: it can)."""
    problems = []
    if config.rope_theta != 10000.0:
        problems.append(f"rope theta {config.rope_theta:g}: run.c hard-codes 10000")
    if config.norm_eps != 1e-5:
        problems.append(f"RMSNorm eps {config.norm_eps:g}: run.c hard-codes 1e-5")
    if config.n_heads * config.head_dim != config.dim:
        problems.append(f"head size {config.head_dim} x {config.n_heads} heads != dim {config.dim}: run.c takes dim / n_heads")
    if config.head_dim % 2:
        problems.append(f"head size {config.head_dim} is odd: run.c rotates pairs of dimensions")
    if len(spm.pieces) != config.vocab_size:
        problems.append(f"the tokenizer has {len(spm.pieces)} pieces, the model {config.vocab_size}")
    if [spm.pieces[i][2] for i in (1, 2)] != [CONTROL, CONTROL]:
        problems.append("BOS and EOS are not ids 1 and 2, which run.c assumes")
    if len(spm.of_type(BYTE)) != 256:
        problems.append("the tokenizer has no byte fallback pieces, which run.c's encoder assumes")
    return problems


def llama2c_order(spm: SpmModel) -> list[int]:
    """Our id of each llama2.c id: 0, 1, 2 (unk, BOS, EOS) stay; the piece of byte b goes to
    b + 3, where run.c's byte fallback looks for it; the other pieces follow in their order."""
    head = [0, 1, 2]
    byte_ids = spm.byte_ids()
    placed = set(head) | set(byte_ids)
    return head + byte_ids + [i for i in range(len(spm.pieces)) if i not in placed]


def llama2c_tokenizer_entries(spm: SpmModel, order: list[int]) -> list[tuple[float, bytes]]:
    """(score, bytes) of each token of tokenizer.bin, as llama2.c's tokenizer.py writes them:
    ▁ as a space, BOS and EOS as "\\n<s>\\n" and "\\n</s>\\n", byte pieces as "<0xNN>" (run.c
    parses that form back into the byte)."""
    space_piece = SPACE_MARK in spm.ids
    entries = []
    for i in order:
        piece, score, kind = spm.pieces[i]
        if i == 1:
            piece = "\n<s>\n"
        elif i == 2:
            piece = "\n</s>\n"
        elif kind == BYTE and piece == "<0x20>" and not space_piece:
            piece = " "  # run.c's encoder looks up " " for every prompt's dummy prefix
        else:
            piece = piece.replace(SPACE_MARK, " ")
        entries.append((score, piece.encode("utf-8")))
    return entries


LLAMA2C_MAGIC = 0x616B3432  # "ak42": the header of llama2.c's versioned files (version 2: runq.c's int8)
LLAMA2C_HEADER = 256  # bytes, zero-padded
INT8_GROUP = 64  # llama2.c's export.py default, halved until it fits (quantize.model_group_size)


def llama2c_int8_size(dim: int, hidden: int, layers: int, heads: int, kv_heads: int, vocab: int,
                      shared: bool, group: int) -> int:
    """Bytes of a version-2 model.bin: header, fp32 norms, each matrix's int8 values (1 byte)
    and float32 scales (4 bytes per group)."""
    kv_dim = dim // heads * kv_heads
    values = vocab * dim * (1 if shared else 2) + layers * (2 * dim * dim + 2 * dim * kv_dim + 3 * dim * hidden)
    return LLAMA2C_HEADER + 4 * (2 * layers * dim + dim) + values + 4 * (values // group)


def llama2c_int8_problems(config: ModelConfig) -> list[str]:
    """Why runq.c could not run this model's int8 file, beyond `llama2c_problems` (empty: it can)."""
    problems = []
    group = model_group_size(config, INT8_GROUP)
    if group < 2:  # an odd dim: a scale (4 bytes) per int8 value would be larger than fp32
        problems.append(f"dim {config.dim} and feed-forward width {config.ffn_dim} share no even group size")
    largest = max(config.vocab_size * config.dim, config.dim * config.ffn_dim)
    if largest >= 2**31:
        problems.append(f"a matrix of {largest:,} values: runq.c indexes with 32-bit ints")
    return problems


def _llama2c_tensors(model: Llama, order: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """The tensors as run.c and runq.c read them, by their names there: fp32 on the CPU, rows of
    wq and wk in adjacent-pair rotary order, embedding and classifier rows in llama2.c's ids;
    "wcls" is empty when the head is tied to the embedding."""
    config = model.config
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}

    def per_layer(name: str) -> list[torch.Tensor]:
        return [state[f"layers.{i}.{name}.weight"] for i in range(config.n_layers)]

    return {
        "embedding": [state["tok_embeddings.weight"][order]],
        "rms_att": per_layer("attention_norm"),
        "wq": [interleave_rotary(w, config.n_heads) for w in per_layer("attention.wq")],
        "wk": [interleave_rotary(w, config.n_kv_heads) for w in per_layer("attention.wk")],
        "wv": per_layer("attention.wv"),
        "wo": per_layer("attention.wo"),
        "rms_ffn": per_layer("ffn_norm"),
        "w1": per_layer("feed_forward.w1"),
        "w2": per_layer("feed_forward.w2"),
        "w3": per_layer("feed_forward.w3"),
        "rms_final": [state["norm.weight"]],
        "wcls": [] if config.tie_embeddings else [state["output.weight"][order]],
    }


def _fp32_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().numpy().astype("<f4").tobytes()


def _write_llama2c_v0(f: Any, config: ModelConfig, tensors: dict[str, list[torch.Tensor]]) -> None:
    """run.c's version 0: 7 ints (vocab negative when the classifier is not shared), then every
    tensor as float32."""
    tied = config.tie_embeddings
    f.write(struct.pack("<7i", config.dim, config.ffn_dim, config.n_layers, config.n_heads, config.n_kv_heads,
                        config.vocab_size if tied else -config.vocab_size, config.max_seq_len))
    # run.c skips these (it computes its own); version 0 still has room for them
    angles = torch.outer(torch.arange(config.max_seq_len).float(),
                         1.0 / config.rope_theta ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim))
    tensors = {**tensors, "freqs": [angles.cos(), angles.sin()]}
    for name in ("embedding", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final",
                 "freqs", "wcls"):
        for t in tensors[name]:
            f.write(_fp32_bytes(t))


def _write_llama2c_v2(f: Any, config: ModelConfig, tensors: dict[str, list[torch.Tensor]], group: int) -> float:
    """runq.c's version 2 (its read_checkpoint and memory_map_weights): the 256-byte header, the
    fp32 norms, then each matrix's int8 values followed by its float32 scales. Returns the
    largest error of a quantized value."""
    header = struct.pack("<Ii7i", LLAMA2C_MAGIC, 2, config.dim, config.ffn_dim, config.n_layers, config.n_heads,
                         config.n_kv_heads, config.vocab_size, config.max_seq_len)
    header += struct.pack("<Bi", int(config.tie_embeddings), group)  # unaligned, as fread reads it
    f.write(header + b"\0" * (LLAMA2C_HEADER - len(header)))
    for name in ("rms_att", "rms_ffn", "rms_final"):
        for t in tensors[name]:
            f.write(_fp32_bytes(t))
    error = 0.0
    for name in ("embedding", "wq", "wk", "wv", "wo", "w1", "w2", "w3", "wcls"):
        for t in tensors[name]:
            q, scales = quantize_int8(t, group)
            error = max(error, (dequantize_int8(q, scales, group) - t).abs().max().item())
            f.write(q.contiguous().numpy().tobytes())
            f.write(_fp32_bytes(scales))
    return error


def export_llama2c(model: Llama, spm: SpmModel, out: Path, tokenizer_out: Path | None = None,
                   force: bool = False, quantize: str | None = None) -> Exported:
    """model.bin (llama2.c version 0 for run.c, or with quantize="int8" version 2 for runq.c) and
    tokenizer.bin: both replaced, or neither."""
    config = model.config
    check_quantize("llama2c", quantize)
    problems = llama2c_problems(config, spm)
    runner = "runq.c" if quantize else "run.c"
    if quantize:
        problems += llama2c_int8_problems(config)
    if problems:
        problems = [p.replace("run.c", runner) for p in problems]
        raise StageError(f"--format llama2c{' --quantize ' + quantize if quantize else ''}: {runner} cannot run "
                         "this model: " + "; ".join(problems))
    out = Path(out)
    check_output("llama2c", out, tokenizer_out, force)
    tokenizer_out = llama2c_tokenizer_path(out, tokenizer_out)
    order = torch.tensor(llama2c_order(spm))
    tensors = _llama2c_tensors(model, order)
    group = model_group_size(config, INT8_GROUP)
    entries = llama2c_tokenizer_entries(spm, order.tolist())
    # nested: the tokenizer is renamed into place, then the model; an error before leaves both
    with atomic_path(out) as model_tmp, atomic_path(tokenizer_out) as tokenizer_tmp:
        with open(model_tmp, "wb") as f:
            if quantize:
                error = _write_llama2c_v2(f, config, tensors, group)
            else:
                _write_llama2c_v0(f, config, tensors)
        with open(tokenizer_tmp, "wb") as f:
            f.write(struct.pack("<i", max(len(b) for _, b in entries)))
            for score, piece in entries:
                f.write(struct.pack("<fi", score, len(piece)))
                f.write(piece)
    notes = []
    if order.tolist() != list(range(len(order))):
        notes.append("token ids renumbered so that byte b is id b + 3, as run.c's byte fallback expects "
                     "(unk, BOS, EOS keep 0, 1, 2)")
    if SPACE_MARK not in spm.ids:
        notes.append('no "▁" piece: the byte piece <0x20> is written as " " for run.c\'s dummy prefix')
    notes.append(f"{runner} puts a space before every prompt (SentencePiece's dummy prefix; this tokenizer adds none)")
    if quantize:
        notes.append(f"int8 (llama2.c version 2, for runq.c): groups of {group}"
                     + (f" (64 halved to divide dim {config.dim} and feed-forward {config.ffn_dim})" if group < 64 else "")
                     + f", largest error of a weight {error:.3g}; the norms stay float32")
    return Exported("llama2c", [out, tokenizer_out], notes)


# ---- GGUF


def export_gguf(model: Llama, spm: SpmModel, out: Path, name: str = "nonllama", force: bool = False,
                quantize: str | None = None) -> Exported:
    """One .gguf file for llama.cpp: architecture "llama", fp32 tensors (with quantize="int8" the
    matrices in Q8_0), the SentencePiece vocabulary."""
    _require("gguf", fmt="gguf")
    import gguf

    check_quantize("gguf", quantize)
    out = Path(out)
    check_output("gguf", out, force=force)
    config = model.config
    if len(spm.pieces) != config.vocab_size:
        raise StageError(f"--format gguf: the tokenizer has {len(spm.pieces)} pieces, the model {config.vocab_size}")
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    names = {  # ours -> llama.cpp's, for layer i
        "attention_norm": "attn_norm", "attention.wq": "attn_q", "attention.wk": "attn_k",
        "attention.wv": "attn_v", "attention.wo": "attn_output", "ffn_norm": "ffn_norm",
        "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
    }
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quantize else gguf.LlamaFileType.ALL_F32)
        writer.add_context_length(config.max_seq_len)
        writer.add_embedding_length(config.dim)
        writer.add_block_count(config.n_layers)
        writer.add_feed_forward_length(config.ffn_dim)
        writer.add_head_count(config.n_heads)
        writer.add_head_count_kv(config.n_kv_heads)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_layer_norm_rms_eps(config.norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_tokenizer_model("llama")
        writer.add_token_list([piece for piece, _, _ in spm.pieces])
        writer.add_token_scores([score for _, score, _ in spm.pieces])
        writer.add_token_types([kind for _, _, kind in spm.pieces])
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        if (pad := spm.ids.get("<pad>")) is not None:
            writer.add_pad_token_id(pad)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(spm.add_dummy_prefix)
        if (chat := spm.chat_ids()) is not None:  # the chat tokens are control already (token types)
            from nonllama.chat import CHAT_TEMPLATE

            writer.add_chat_template(CHAT_TEMPLATE)
            writer.add_eot_token_id(chat["<|end|>"])  # llama.cpp ends a reply at end-of-turn

        q8 = gguf.GGMLQuantizationType.Q8_0
        block = gguf.GGML_QUANT_SIZES[q8][0]  # 32 values per Q8_0 block
        kept_f32: list[str] = []

        def add(gguf_name: str, tensor: torch.Tensor) -> None:
            data = tensor.contiguous().numpy().astype(np.float32)
            if quantize and data.ndim == 2:  # the matrices; norms (1-D) stay F32, as llama.cpp's converter keeps them
                if data.shape[-1] % block == 0:
                    writer.add_tensor(gguf_name, gguf.quants.quantize(data, q8), raw_dtype=q8)
                    return
                kept_f32.append(f"{gguf_name} (rows of {data.shape[-1]})")
            writer.add_tensor(gguf_name, data)

        add("token_embd.weight", state["tok_embeddings.weight"])
        for i in range(config.n_layers):
            for ours, theirs in names.items():
                w = state[f"layers.{i}.{ours}.weight"]
                if ours in ("attention.wq", "attention.wk"):  # llama.cpp's "llama" rotates adjacent pairs
                    w = interleave_rotary(w, config.n_heads if ours == "attention.wq" else config.n_kv_heads)
                add(f"blk.{i}.{theirs}.weight", w)
        add("output_norm.weight", state["norm.weight"])
        if not config.tie_embeddings:  # without it llama.cpp uses token_embd
            add("output.weight", state["output.weight"])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    notes = ["not run through llama.cpp here: read back and checked with gguf's reader"]
    if quantize:
        notes.append("int8: the matrices as Q8_0 (blocks of 32 values, an fp16 scale each); the norms stay F32")
    if kept_f32:
        notes.append(f"kept F32, rows not a multiple of {block} (Q8_0's block): " + ", ".join(kept_f32[:4])
                     + (f" and {len(kept_f32) - 4} more" if len(kept_f32) > 4 else ""))
    return Exported("gguf", [out], notes)
