"""`nonllama export`: Hugging Face, llama2.c and GGUF files, read back and run by other code."""

from __future__ import annotations

import copy
import shutil
import struct
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import one_line, one_thread, sample_texts, tiny_run_dir, train_tokenizer  # noqa: F401

from nonllama.export import (
    HF_FILES,
    export_gguf,
    export_hf,
    export_llama2c,
    hf_tokenizer,
    interleave_rotary,
    llama2c_int8_size,
    llama2c_order,
    read_spm_model,
)
from nonllama.generate import load_run
from nonllama.model import Llama, ModelConfig
from nonllama.pipeline.io import StageError
from nonllama.pipeline.tokenizer import encode_texts, load_processor
from nonllama.quantize import fake_quantize_, model_group_size

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [
    "Once upon a time, a little girl named Lily found a shiny red ball in the park.",
    "北京是中国的首都，人口约2100万。你好！“引号”（括号）：结束；",
    "emoji 😀🎉 and a family 👨\u200d👩\u200d👧 and a flag 🇨🇳",
    "  leading spaces,   runs of spaces, trailing  ",
    "lines\nand\n\nparagraphs\n\n\n  indented\n",
    "digits 3.14159 and 2024-05-01, literal <s> and </s> in text",
    "",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run_dir(tmp_path_factory, "export")


def varied(model: Llama) -> Llama:
    """Norm weights away from one, so that a norm read from the wrong place shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def untied_model(vocab: int, **overrides) -> Llama:
    torch.manual_seed(1)
    config = ModelConfig(dim=48, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=vocab, max_seq_len=40,
                         tie_embeddings=False, **overrides)
    return varied(Llama(config).eval())


def tokens_of(processor, text: str) -> torch.Tensor:
    return torch.tensor([[1, *encode_texts(processor, [text])[0]]])


# --------------------------------------------------------------------------- Hugging Face


@pytest.mark.parametrize("variant", ["trained", "untied-mha-theta500"])
def test_hf_export_loads_in_transformers_with_the_same_logits(cli, run_dir: Path, tmp_path: Path, variant: str) -> None:
    transformers = pytest.importorskip("transformers")
    loaded = load_run(run_dir)
    out = tmp_path / "hf"
    if variant == "trained":  # through the command: GQA, tied embeddings
        cli("export", "--run", run_dir, "--format", "hf", "-o", out)
        model = loaded.model
    else:
        model = untied_model(loaded.config.vocab_size, rope_theta=500.0)
        export_hf(model, read_spm_model(loaded.tokenizer), loaded.tokenizer, out)
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                "tokenizer_config.json", "generation_config.json"}
    reference = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert reference.dtype == torch.float32 and reference.num_parameters() == model.num_params()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = tokenizer("Once upon a time, Lily", return_tensors="pt").input_ids
    assert ids.tolist() == tokens_of(loaded.processor, "Once upon a time, Lily").tolist()
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = reference(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-5
    room = model.config.max_seq_len - ids.shape[1]  # the whole context
    mine = model.generate(ids, max_new_tokens=room, temperature=0)
    with torch.no_grad():
        hf = reference.generate(ids, max_new_tokens=room, do_sample=False, use_cache=True, eos_token_id=None)
    assert hf.tolist() == mine.tolist()


@pytest.mark.parametrize("model_type, langs, vocab", [("bpe", ("en",), 400), ("bpe", ("en", "zh"), 2000),
                                                      ("unigram", ("en", "zh"), 1500)])
def test_hf_tokenizer_encodes_and_decodes_as_sentencepiece(tmp_path: Path, model_type: str, langs, vocab: int) -> None:
    transformers = pytest.importorskip("transformers")
    path = train_tokenizer(tmp_path / "tokenizer.model", sample_texts(*langs), vocab, model_type)
    processor = load_processor(path)
    export_hf(untied_model(vocab), read_spm_model(path), path, tmp_path / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    texts = TEXTS + sample_texts("en", "zh")[::7]
    if processor.piece_to_id("<") == 0:  # unigram without "<": literal "<s>" is one piece in HF (export.py)
        texts = [t for t in texts if "<" not in t]
    for text, ids in zip(texts, encode_texts(processor, texts), strict=True):
        assert tokenizer(text).input_ids == [1, *ids], text
        assert tokenizer.decode([1, *ids], skip_special_tokens=True) == text
    assert tokenizer.bos_token_id == 1 and tokenizer.eos_token_id == 2 and tokenizer.pad_token_id == 3
    # the library function alone, without transformers' wrapper
    assert hf_tokenizer(read_spm_model(path)).encode(TEXTS[0]).ids == [1, *encode_texts(processor, TEXTS[:1])[0]]


# --------------------------------------------------------------------------- llama2.c


def read_llama2c(model_bin: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """model.bin as run.c's read_checkpoint and memory_map_weights read it."""
    data = model_bin.read_bytes()
    names = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
    config = dict(zip(names, struct.unpack("<7i", data[:28]), strict=True))
    shared = config["vocab_size"] > 0
    config["vocab_size"] = abs(config["vocab_size"])
    floats = np.frombuffer(data, dtype="<f4", offset=28).astype(np.float64)
    dim, hidden, layers, vocab = config["dim"], config["hidden_dim"], config["n_layers"], config["vocab_size"]
    head_size = dim // config["n_heads"]
    kv_dim = config["n_kv_heads"] * head_size
    shapes = [("embedding", (vocab, dim)), ("rms_att", (layers, dim)), ("wq", (layers, dim, dim)),
              ("wk", (layers, kv_dim, dim)), ("wv", (layers, kv_dim, dim)), ("wo", (layers, dim, dim)),
              ("rms_ffn", (layers, dim)), ("w1", (layers, hidden, dim)), ("w2", (layers, dim, hidden)),
              ("w3", (layers, hidden, dim)), ("rms_final", (dim,)),
              ("freq_cis_real", (config["seq_len"], head_size // 2)), ("freq_cis_imag", (config["seq_len"], head_size // 2))]
    if not shared:
        shapes.append(("wcls", (vocab, dim)))
    weights, at = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        weights[name] = floats[at:at + n].reshape(shape)
        at += n
    assert at == len(floats), "trailing data after the weights"
    weights.setdefault("wcls", weights["embedding"])
    return config, weights


def runc_forward(config: dict, w: dict[str, np.ndarray], tokens: list[int], theta: float = 10000.0,
                 eps: float = 1e-5, matmul=None) -> np.ndarray:
    """Logits at every position, computed as run.c's forward() does (float64): RoPE rotating
    adjacent pairs (i, i+1) by pos / theta^((i % head_size) / head_size). `matmul(x, name,
    layer)`: x @ W.T for the matrix `name` (of `layer`; None for the classifier), by default
    with the float weights in `w`."""
    if matmul is None:
        def matmul(x: np.ndarray, name: str, layer: int | None) -> np.ndarray:
            return x @ (w[name] if layer is None else w[name][layer]).T

    dim, n_heads, n_kv = config["dim"], config["n_heads"], config["n_kv_heads"]
    hs = dim // n_heads
    T = len(tokens)
    i = np.arange(0, dim, 2)
    angle = np.arange(T)[:, None] * (1.0 / theta ** ((i % hs) / hs))[None, :]
    cos, sin = np.cos(angle), np.sin(angle)

    def rmsnorm(x, weight):
        return weight * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)

    def rope(v):
        n = v.shape[1] // 2
        v0, v1 = v[:, 0::2], v[:, 1::2]
        out = np.empty_like(v)
        out[:, 0::2] = v0 * cos[:, :n] - v1 * sin[:, :n]
        out[:, 1::2] = v0 * sin[:, :n] + v1 * cos[:, :n]
        return out

    x = w["embedding"][tokens]
    causal = np.triu(np.full((T, T), -np.inf), 1)
    for layer in range(config["n_layers"]):
        h = rmsnorm(x, w["rms_att"][layer])
        q, k, v = rope(matmul(h, "wq", layer)), rope(matmul(h, "wk", layer)), matmul(h, "wv", layer)
        heads = []
        for head in range(n_heads):
            kv = head // (n_heads // n_kv)
            qh, kh, vh = q[:, head * hs:(head + 1) * hs], k[:, kv * hs:(kv + 1) * hs], v[:, kv * hs:(kv + 1) * hs]
            scores = qh @ kh.T / np.sqrt(hs) + causal
            att = np.exp(scores - scores.max(-1, keepdims=True))
            heads.append((att / att.sum(-1, keepdims=True)) @ vh)
        x = x + matmul(np.concatenate(heads, axis=1), "wo", layer)
        h = rmsnorm(x, w["rms_ffn"][layer])
        gate = matmul(h, "w1", layer)
        x = x + matmul((gate / (1 + np.exp(-gate))) * matmul(h, "w3", layer), "w2", layer)
    return matmul(rmsnorm(x, w["rms_final"]), "wcls", None)


def read_tokenizer_bin(path: Path, vocab_size: int) -> tuple[int, list[tuple[float, bytes]]]:
    """tokenizer.bin as run.c's build_tokenizer reads it."""
    data = path.read_bytes()
    (max_len,), at, entries = struct.unpack("<i", data[:4]), 4, []
    for _ in range(vocab_size):
        score, n = struct.unpack("<fi", data[at:at + 8])
        entries.append((score, data[at + 8:at + 8 + n]))
        at += 8 + n
    assert at == len(data)
    return max_len, entries


@pytest.mark.parametrize("variant", ["trained", "untied"])
def test_llama2c_export_runs_as_run_c_computes(cli, run_dir: Path, tmp_path: Path, variant: str) -> None:
    loaded = load_run(run_dir)
    spm = read_spm_model(loaded.tokenizer)
    out = tmp_path / "model.bin"
    if variant == "trained":  # tied, GQA, through the command: tokenizer.bin goes beside model.bin
        result = cli("export", "--run", run_dir, "--format", "llama2c", "-o", out)
        assert "renumbered" in one_line(result.output)
        model, tokenizer_bin = loaded.model, tmp_path / "tokenizer.bin"
    else:
        model, tokenizer_bin = untied_model(loaded.config.vocab_size), tmp_path / "elsewhere" / "tok.bin"
        export_llama2c(model, spm, out, tokenizer_bin)
    config, weights = read_llama2c(out)
    c = model.config
    assert config == {"dim": c.dim, "hidden_dim": c.ffn_dim, "n_layers": c.n_layers, "n_heads": c.n_heads,
                      "n_kv_heads": c.n_kv_heads, "vocab_size": c.vocab_size, "seq_len": c.max_seq_len}
    assert (weights["wcls"] is weights["embedding"]) == c.tie_embeddings
    order = llama2c_order(spm)  # our id of each llama2.c id
    ours_ids = tokens_of(loaded.processor, "Once upon a time, Lily saw 北京.")[0].tolist()
    theirs_ids = [order.index(i) for i in ours_ids]
    with torch.no_grad():
        ours, _ = model(torch.tensor([ours_ids]))
    theirs = runc_forward(config, weights, theirs_ids)
    np.testing.assert_allclose(theirs[:, np.argsort(order)], ours[0].double().numpy(), atol=1e-5, rtol=0)

    max_len, entries = read_tokenizer_bin(tokenizer_bin, config["vocab_size"])
    pieces = [piece for _, piece in entries]
    assert max_len == max(len(p) for p in pieces)
    assert pieces[1] == b"\n<s>\n" and pieces[2] == b"\n</s>\n"
    assert pieces[3:259] == [f"<0x{b:02X}>".encode() for b in range(256)]  # byte b at b + 3
    assert b" " in pieces  # run.c's dummy prefix
    for new, old in enumerate(order[3:], start=3):
        assert pieces[new] == loaded.processor.id_to_piece(old).replace("\u2581", " ").encode()
        assert entries[new][0] == pytest.approx(loaded.processor.get_score(old))


def test_llama2c_refuses_what_run_c_cannot_run(cli, run_dir: Path, tmp_path: Path) -> None:
    loaded = load_run(run_dir)
    spm = read_spm_model(loaded.tokenizer)
    for overrides, reason in [({"rope_theta": 500.0}, "rope theta 500: run.c hard-codes 10000"),
                              ({"norm_eps": 1e-6}, "RMSNorm eps 1e-06: run.c hard-codes 1e-5")]:
        with pytest.raises(Exception, match=reason):
            export_llama2c(untied_model(loaded.config.vocab_size, **overrides), spm, tmp_path / "m.bin")
    # through the command: a run whose checkpoint says theta 500
    other = tmp_path / "run"
    (other / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "tokenizer.model", other / "tokenizer.model")
    config = replace(loaded.config, rope_theta=500.0)
    torch.save({"model": Llama(config).state_dict(), "model_config": asdict(config), "step": 1},
               other / "checkpoints" / "step-00000001.pt")
    result = cli("export", "--run", other, "--format", "llama2c", "-o", tmp_path / "m.bin", expect=2)
    assert "run.c cannot run this model: rope theta 500" in one_line(result.output)
    assert not (tmp_path / "m.bin").exists()
    cli("export", "--run", other, "--format", "gguf", "-o", tmp_path / "m.gguf")  # llama.cpp reads the theta
    result = cli("export", "--run", other, "--format", "onnx", "-o", tmp_path / "m.onnx", expect=2)
    assert "--format 'onnx': choose one of hf, llama2c, gguf" in one_line(result.output)
    no_space = replace(spm, pieces=[(p, s, t) for p, s, t in spm.pieces if p != "\u2581"])
    model = untied_model(len(no_space.pieces))
    export_llama2c(model, no_space, tmp_path / "x.bin")
    _, entries = read_tokenizer_bin(tmp_path / "tokenizer.bin", len(no_space.pieces))
    assert entries[3 + 0x20][1] == b" "  # the byte piece of the space stands in for it


# --------------------------------------------------------------------------- int8: llama2.c version 2 (runq.c)


def read_llama2c_int8(model_bin: Path) -> tuple[dict, int, dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """model.bin version 2 as runq.c's read_checkpoint and memory_map_weights read it: the config,
    the group size, the fp32 norms, and each matrix's (int8 values, float32 scales per group of
    its rows), stacked over layers."""
    data = model_bin.read_bytes()
    assert struct.unpack("<Ii", data[:8]) == (0x616B3432, 2)  # "ak42", version 2
    names = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
    config = dict(zip(names, struct.unpack("<7i", data[8:36]), strict=True))
    shared, (group,) = data[36], struct.unpack("<i", data[37:41])  # a byte, then an unaligned int
    assert shared in (0, 1) and data[41:256] == bytes(215)  # zero padding to 256 bytes
    config["shared_classifier"] = bool(shared)
    dim, hidden, layers, vocab = config["dim"], config["hidden_dim"], config["n_layers"], config["vocab_size"]
    kv_dim = dim // config["n_heads"] * config["n_kv_heads"]
    assert dim % group == 0 and hidden % group == 0  # runq.c's matmul walks each row in whole groups
    at = 256

    def take(dtype: str, n: int) -> np.ndarray:
        nonlocal at
        out = np.frombuffer(data, dtype=dtype, count=n, offset=at)
        at += out.nbytes
        return out

    norms = {"rms_att": take("<f4", layers * dim).reshape(layers, dim),
             "rms_ffn": take("<f4", layers * dim).reshape(layers, dim), "rms_final": take("<f4", dim)}
    shapes = [("embedding", 1, vocab, dim), ("wq", layers, dim, dim), ("wk", layers, kv_dim, dim),
              ("wv", layers, kv_dim, dim), ("wo", layers, dim, dim), ("w1", layers, hidden, dim),
              ("w2", layers, dim, hidden), ("w3", layers, hidden, dim)]
    if not shared:
        shapes.append(("wcls", 1, vocab, dim))
    matrices = {}
    for name, count, rows, cols in shapes:  # init_quantized_tensors: per tensor, int8 values then scales
        pairs = [(take("i1", rows * cols).reshape(rows, cols), take("<f4", rows * cols // group).reshape(rows, cols // group))
                 for _ in range(count)]
        q, scales = np.stack([q for q, _ in pairs]), np.stack([s for _, s in pairs])
        matrices[name] = (q[0], scales[0]) if name in ("embedding", "wcls") else (q, scales)
    assert at == len(data), "trailing data after the weights"
    matrices.setdefault("wcls", matrices["embedding"])
    return config, group, norms, matrices


def dequantized(q: np.ndarray, scales: np.ndarray, group: int) -> np.ndarray:
    """q * scale in float32, as runq.c's dequantize (and nonllama.quantize) compute it."""
    grouped = q.astype(np.float32).reshape(*q.shape[:-1], -1, group) * scales[..., None]
    return grouped.reshape(q.shape)


def runq_quantize(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """runq.c's quantize() of activations (one row per position), in float32 like C: per group
    s = max|x| / 127, q = round(x / s), C's round (halves away from zero)."""
    grouped = x.astype(np.float32).reshape(x.shape[0], -1, group)
    scales = np.abs(grouped).max(-1) / np.float32(127.0)
    ratio = (grouped / scales[..., None]).astype(np.float64)
    return (np.sign(ratio) * np.floor(np.abs(ratio) + 0.5)).astype(np.int32), scales


def runq_forward(config: dict, group: int, norms: dict, matrices: dict, tokens: list[int],
                 quantize_activations: bool = True) -> np.ndarray:
    """Logits as runq.c's forward() computes them: the embedding row dequantized; before every
    matrix the activation quantized per group (runq_quantize), int8 x int8 dot products summed
    per group in int32, times the weight's and the activation's scale of that group. The rest
    (norms, RoPE, attention, SwiGLU) in float, as run.c. quantize_activations=False: float
    activations times the dequantized weights, what the fake-quantized model computes."""
    weights = {name: dequantized(q, s, group).astype(np.float64) for name, (q, s) in matrices.items()}
    weights.update(norms)

    def int8_matmul(x: np.ndarray, name: str, layer: int | None) -> np.ndarray:
        q, s = matrices[name] if layer is None else (matrices[name][0][layer], matrices[name][1][layer])
        xq, xs = runq_quantize(x, group)
        rows = q.reshape(q.shape[0], -1, group).astype(np.int32)
        dots = np.einsum("tgk,dgk->tdg", xq, rows)  # int32, as runq.c's ival (|sum| <= 64 * 127 * 127)
        assert dots.dtype == np.int32
        return (dots.astype(np.float64) * s[None].astype(np.float64) * xs[:, None, :]).sum(-1)

    return runc_forward(config, weights, tokens, matmul=int8_matmul if quantize_activations else None)


@pytest.mark.parametrize("variant", ["trained", "untied"])
def test_llama2c_int8_runs_as_runq_computes(cli, run_dir: Path, tmp_path: Path, variant: str) -> None:
    loaded = load_run(run_dir)
    spm = read_spm_model(loaded.tokenizer)
    out = tmp_path / "model.bin"
    if variant == "trained":  # tied, GQA, dim 32 (group 32), through the command
        result = cli("export", "--run", run_dir, "--format", "llama2c", "--quantize", "int8", "-o", out)
        assert "int8 (llama2.c version 2, for runq.c): groups of 32" in one_line(result.output)
        model = loaded.model
    else:  # dim 48, feed-forward 128: llama2.c's 64 backs off to 16
        model = untied_model(loaded.config.vocab_size)
        done = export_llama2c(model, spm, out, quantize="int8")
        assert "groups of 16 (64 halved to divide dim 48 and feed-forward 128)" in " ".join(done.notes)
    config, group, norms, matrices = read_llama2c_int8(out)
    c = model.config
    assert group == model_group_size(c)
    assert config == {"dim": c.dim, "hidden_dim": c.ffn_dim, "n_layers": c.n_layers, "n_heads": c.n_heads,
                      "n_kv_heads": c.n_kv_heads, "vocab_size": c.vocab_size, "seq_len": c.max_seq_len,
                      "shared_classifier": c.tie_embeddings}
    assert (matrices["wcls"] is matrices["embedding"]) == c.tie_embeddings
    assert out.stat().st_size == llama2c_int8_size(c.dim, c.ffn_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                                                   c.vocab_size, c.tie_embeddings, group)
    # the same tokenizer.bin as the fp32 export
    export_llama2c(model, spm, tmp_path / "fp32" / "model.bin")
    assert (tmp_path / "tokenizer.bin").read_bytes() == (tmp_path / "fp32" / "tokenizer.bin").read_bytes()

    order = llama2c_order(spm)
    fake = fake_quantize_(copy.deepcopy(model))
    # the int8 values read back are exactly the fake-quantized weights (rows in llama2.c's order)
    emb_q, emb_s = matrices["embedding"]
    assert np.array_equal(dequantized(emb_q, emb_s, group), fake.tok_embeddings.weight.detach()[order].numpy())
    w1_q, w1_s = matrices["w1"]
    assert np.array_equal(dequantized(w1_q[1], w1_s[1], group), fake.layers[1].feed_forward.w1.weight.detach().numpy())
    assert np.array_equal(norms["rms_ffn"][1], model.layers[1].ffn_norm.weight.detach().numpy())

    ours_ids = tokens_of(loaded.processor, "Once upon a time, Lily saw 北京.")[0].tolist()
    theirs_ids = [order.index(i) for i in ours_ids]
    back = np.argsort(order)  # llama2.c's logits in our ids
    with torch.no_grad():
        fake_logits = fake(torch.tensor([ours_ids]))[0][0].double().numpy()
    # with float activations the file computes the fake-quantized model exactly (layout, order, rotary)
    exact = runq_forward(config, group, norms, matrices, theirs_ids, quantize_activations=False)
    np.testing.assert_allclose(exact[:, back], fake_logits, atol=1e-5, rtol=0)
    # runq.c also rounds every activation to int8: each value moves by at most 1/254 of its group's
    # largest, so each product moves by at most ~0.4% of sum|w||x| (far less on average: the
    # roundings are independent and cancel). 7 products per layer plus the classifier compound
    # that; allow 2% of the logits' spread, ~5x the one-product bound
    runq = runq_forward(config, group, norms, matrices, theirs_ids)[:, back]
    spread = fake_logits.max() - fake_logits.min()
    assert np.abs(runq - fake_logits).max() < 0.02 * spread, (np.abs(runq - fake_logits).max(), spread)
    assert not np.array_equal(runq, exact)  # the activations were quantized
    assert (runq.argmax(-1) == fake_logits.argmax(-1)).mean() >= 0.9


def test_int8_files_are_about_4x_smaller(run_dir: Path, tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    loaded = load_run(run_dir)
    spm = read_spm_model(loaded.tokenizer)
    torch.manual_seed(0)  # group 64: dim 256, feed-forward 704
    model = Llama(ModelConfig(dim=256, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=loaded.config.vocab_size,
                              max_seq_len=64, tie_embeddings=False))
    sizes = {}
    for quantize in (None, "int8"):
        export_llama2c(model, spm, tmp_path / str(quantize) / "model.bin", quantize=quantize)
        export_gguf(model, spm, tmp_path / f"{quantize}.gguf", quantize=quantize)
        sizes[quantize] = ((tmp_path / str(quantize) / "model.bin").stat().st_size,
                           (tmp_path / f"{quantize}.gguf").stat().st_size)
    # int8 + a float32 scale per 64 values (llama2c) or an fp16 scale per 32 (Q8_0): 4 / 1.0625
    llama2c_ratio, gguf_ratio = (fp32 / int8 for fp32, int8 in zip(sizes[None], sizes["int8"], strict=True))
    assert 3.5 < llama2c_ratio < 4 and 3.5 < gguf_ratio < 4, sizes
    reader = gguf.GGUFReader(tmp_path / "int8.gguf")
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0


def test_gguf_int8_is_q8_0(cli, run_dir: Path, tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    q8 = gguf.GGMLQuantizationType.Q8_0
    result = cli("export", "--run", run_dir, "--format", "gguf", "--quantize", "int8", "-o", tmp_path / "m.gguf")
    assert "the matrices as Q8_0" in one_line(result.output) and "kept F32" not in one_line(result.output)
    loaded = load_run(run_dir)
    c = loaded.config
    tensors = {t.name: t for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert len(tensors) == 1 + 9 * c.n_layers + 1  # tied: no output.weight
    originals = {"token_embd.weight": loaded.model.tok_embeddings.weight}
    names = {"attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv",
             "attn_output": "attention.wo", "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2",
             "ffn_up": "feed_forward.w3"}
    for i, block in enumerate(loaded.model.layers):
        for theirs, ours in names.items():
            originals[f"blk.{i}.{theirs}.weight"] = block.get_submodule(ours).weight
    for name, tensor in tensors.items():
        if name not in originals:  # the norms
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32, name
            continue
        assert tensor.tensor_type == q8, name
        w = originals[name].detach().numpy()
        if ".attn_q." in name or ".attn_k." in name:
            w = interleave_rotary(torch.from_numpy(w), c.n_heads if ".attn_q." in name else c.n_kv_heads).numpy()
        expected = gguf.quants.dequantize(gguf.quants.quantize(w, q8), q8)
        got = gguf.quants.dequantize(np.asarray(tensor.data), q8)
        assert got.shape == w.shape and np.array_equal(got, expected), name
        assert np.abs(got - w).max() <= np.abs(w).max() / 127  # within a step of the largest scale


def test_gguf_int8_keeps_rows_q8_0_cannot_hold(run_dir: Path, tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    loaded = load_run(run_dir)
    model = untied_model(loaded.config.vocab_size)  # dim 48: rows of 48 are not blocks of 32; w2's 128 are
    done = export_gguf(model, read_spm_model(loaded.tokenizer), tmp_path / "m.gguf", quantize="int8")
    note = " ".join(done.notes)
    assert "kept F32, rows not a multiple of 32 (Q8_0's block): token_embd.weight (rows of 48)" in note
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert types["token_embd.weight"] == types["blk.0.attn_q.weight"] == types["output.weight"] == "F32"
    assert types["blk.0.ffn_down.weight"] == types["blk.1.ffn_down.weight"] == "Q8_0"


def test_quantize_refusals(cli, run_dir: Path, tmp_path: Path) -> None:
    out = one_line(cli("export", "--run", run_dir, "--format", "hf", "--quantize", "int8", "-o", tmp_path / "hf",
                       expect=2).output)
    assert "--quantize int8: --format hf writes the fp32 safetensors transformers loads" in out
    assert not (tmp_path / "hf").exists()
    # judged before the run is loaded
    out = one_line(cli("export", "--run", tmp_path / "none", "--format", "gguf", "--quantize", "int4", "-o",
                       tmp_path / "m.gguf", expect=2).output)
    assert "--quantize 'int4': choose int8 (or leave it out for fp32)" in out
    loaded = load_run(run_dir)
    spm = read_spm_model(loaded.tokenizer)
    with pytest.raises(StageError, match="--format llama2c --quantize int8: runq.c cannot run this model: rope "
                                         "theta 500: runq.c hard-codes 10000"):
        export_llama2c(untied_model(loaded.config.vocab_size, rope_theta=500.0), spm, tmp_path / "a.bin",
                       quantize="int8")
    with pytest.raises(StageError, match="runq.c cannot run this model: dim 48 and feed-forward width 33 share "
                                         "no even group size"):
        export_llama2c(untied_model(loaded.config.vocab_size, hidden_dim=33), spm, tmp_path / "b.bin", quantize="int8")
    export_llama2c(untied_model(loaded.config.vocab_size, hidden_dim=33), spm, tmp_path / "c.bin")  # run.c can
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "b.bin").exists()


def test_int8_and_fp32_llama2c_exports_replace_each_other_only_with_force(cli, run_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    cli("export", "--run", run_dir, "--format", "llama2c", "--quantize", "int8", "-o", model)
    first = model.read_bytes()
    out = one_line(cli("export", "--run", run_dir, "--format", "llama2c", "-o", model, expect=2).output)
    assert "already exists (not overwritten)" in out and model.read_bytes() == first
    cli("export", "--run", run_dir, "--format", "llama2c", "-o", model, "--force")  # a version-2 file is ours
    assert read_llama2c(model)[0]["dim"] == load_run(run_dir).config.dim
    cli("export", "--run", run_dir, "--format", "llama2c", "--quantize", "int8", "-o", model, "--force")
    assert model.read_bytes() == first
    # a file that starts like a version-2 header but is not one is not replaced
    (tmp_path / "fake.bin").write_bytes(first[:300])
    out = one_line(cli("export", "--run", run_dir, "--format", "llama2c", "--quantize", "int8", "-o",
                       tmp_path / "fake.bin", "--tokenizer-out", tmp_path / "t2.bin", "--force", expect=2).output)
    assert "exists and is not a llama2c model.bin" in out


# --------------------------------------------------------------------------- GGUF


def test_gguf_export_reads_back_and_computes_the_same_logits(cli, run_dir: Path, tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    cli("export", "--run", run_dir, "--format", "gguf", "-o", tmp_path / "model.gguf")
    reader = gguf.GGUFReader(tmp_path / "model.gguf")
    field = {name: f.contents() for name, f in reader.fields.items()}
    loaded = load_run(run_dir)
    c, p = loaded.config, loaded.processor
    assert field["general.architecture"] == "llama"
    assert (field["llama.embedding_length"], field["llama.block_count"], field["llama.attention.head_count"],
            field["llama.attention.head_count_kv"], field["llama.feed_forward_length"],
            field["llama.context_length"]) == (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_dim, c.max_seq_len)
    assert field["llama.rope.freq_base"] == c.rope_theta and field["tokenizer.ggml.model"] == "llama"
    assert field["tokenizer.ggml.tokens"] == [p.id_to_piece(i) for i in range(p.vocab_size())]
    assert field["tokenizer.ggml.add_space_prefix"] is False and field["tokenizer.ggml.bos_token_id"] == 1
    t = {tensor.name: np.asarray(tensor.data, dtype=np.float64) for tensor in reader.tensors}
    assert "output.weight" not in t  # tied: llama.cpp falls back to token_embd

    def stack(name: str) -> np.ndarray:
        return np.stack([t[f"blk.{i}.{name}.weight"] for i in range(c.n_layers)])

    weights = {"embedding": t["token_embd.weight"], "rms_att": stack("attn_norm"), "wq": stack("attn_q"),
               "wk": stack("attn_k"), "wv": stack("attn_v"), "wo": stack("attn_output"), "rms_ffn": stack("ffn_norm"),
               "w1": stack("ffn_gate"), "w2": stack("ffn_down"), "w3": stack("ffn_up"),
               "rms_final": t["output_norm.weight"], "wcls": t["token_embd.weight"]}
    config = {"dim": c.dim, "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads, "n_layers": c.n_layers}
    ids = tokens_of(p, "Once upon a time, Lily saw 北京.")
    with torch.no_grad():
        ours, _ = loaded.model(ids)
    np.testing.assert_allclose(runc_forward(config, weights, ids[0].tolist()), ours[0].double().numpy(), atol=1e-5, rtol=0)


def test_gguf_untied_has_an_output_tensor(run_dir: Path, tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    loaded = load_run(run_dir)
    model = untied_model(loaded.config.vocab_size)
    export_gguf(model, read_spm_model(loaded.tokenizer), tmp_path / "m.gguf")
    tensors = {t.name: t for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert np.array_equal(np.asarray(tensors["output.weight"].data), model.output.weight.detach().numpy())


def test_export_errors(cli, run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = cli("export", "--run", run_dir, "--format", "hf", "-o", tmp_path / "file", expect=2)
    assert "exists and is not a directory" in one_line(result.output)
    result = cli("export", "--run", tmp_path / "none", "-o", tmp_path / "hf", expect=2)
    assert "no such directory" in one_line(result.output)


# --------------------------------------------------------------------------- existing outputs


def test_llama2c_and_gguf_never_overwrite_without_force(cli, run_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = tmp_path / "model.bin", tmp_path / "tokenizer.bin"
    cli("export", "--run", run_dir, "--format", "llama2c", "-o", model, "--checkpoint", "2")
    first = model.read_bytes(), tokenizer.read_bytes()
    out = one_line(cli("export", "--run", run_dir, "--format", "llama2c", "-o", model, expect=2).output)
    assert f"-o {model}: already exists (not overwritten); --force replaces a previous llama2c export" in out
    assert (model.read_bytes(), tokenizer.read_bytes()) == first
    # the tokenizer beside it counts too, alone
    model.unlink()
    out = one_line(cli("export", "--run", run_dir, "--format", "llama2c", "-o", model, expect=2).output)
    assert f"{tokenizer}: already exists" in out and not model.exists()
    # --force replaces a previous export (here: of another checkpoint)
    cli("export", "--run", run_dir, "--format", "llama2c", "-o", model, "--force")
    assert model.read_bytes() != first[0] and read_llama2c(model)[0]["dim"] == load_run(run_dir).config.dim

    gguf_file = tmp_path / "model.gguf"
    cli("export", "--run", run_dir, "--format", "gguf", "-o", gguf_file, "--checkpoint", "2")
    before = gguf_file.read_bytes()
    out = one_line(cli("export", "--run", run_dir, "--format", "gguf", "-o", gguf_file, expect=2).output)
    assert f"-o {gguf_file}: already exists (not overwritten); --force replaces a previous gguf export" in out
    assert gguf_file.read_bytes() == before
    cli("export", "--run", run_dir, "--format", "gguf", "-o", gguf_file, "--force")
    assert gguf_file.read_bytes() != before and gguf_file.read_bytes()[:4] == b"GGUF"


def test_force_replaces_only_a_file_of_the_same_format(cli, run_dir: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a model\n")
    for fmt, what in (("llama2c", "llama2c model.bin"), ("gguf", "GGUF file")):
        out = one_line(cli("export", "--run", run_dir, "--format", fmt, "-o", notes, "--force", expect=2).output)
        assert f"-o {notes}: exists and is not a {what}; not replacing it, even with --force" in out
    # a gguf file is not a llama2c model, nor the other way round
    cli("export", "--run", run_dir, "--format", "gguf", "-o", tmp_path / "m.gguf")
    out = one_line(cli("export", "--run", run_dir, "--format", "llama2c", "-o", tmp_path / "m.gguf", "--force",
                       expect=2).output)
    assert "is not a llama2c model.bin" in out
    # --tokenizer-out pointing at someone's file
    out = one_line(cli("export", "--run", run_dir, "--format", "llama2c", "-o", tmp_path / "model.bin",
                       "--tokenizer-out", notes, "--force", expect=2).output)
    assert f"--tokenizer-out {notes}: exists and is not a llama2c tokenizer.bin" in out
    assert not (tmp_path / "model.bin").exists() and notes.read_text() == "my notes, not a model\n"
    # a directory where a file goes
    (tmp_path / "dir").mkdir()
    out = one_line(cli("export", "--run", run_dir, "--format", "gguf", "-o", tmp_path / "dir", "--force", expect=2).output)
    assert f"-o {tmp_path / 'dir'}: is a directory; --format gguf writes a file" in out
    out = one_line(cli("export", "--run", run_dir, "--format", "gguf", "-o", tmp_path / "m2.gguf", "--tokenizer-out",
                       tmp_path / "t.bin", expect=2).output)
    assert "--tokenizer-out" in out and "only --format llama2c" in out
    # the library functions refuse the same way; an untied model.bin is recognised as well
    loaded = load_run(run_dir)
    spm = read_spm_model(loaded.tokenizer)
    untied = untied_model(loaded.config.vocab_size)
    export_llama2c(untied, spm, tmp_path / "u" / "model.bin")
    with pytest.raises(ValueError, match="already exists"):
        export_llama2c(untied, spm, tmp_path / "u" / "model.bin")
    export_llama2c(untied, spm, tmp_path / "u" / "model.bin", force=True)
    export_hf(untied, spm, loaded.tokenizer, tmp_path / "h")
    with pytest.raises(ValueError, match="holds a previous hf export"):
        export_hf(untied, spm, loaded.tokenizer, tmp_path / "h")


def test_hf_export_into_existing_directories(cli, run_dir: Path, tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()  # empty: fine
    cli("export", "--run", run_dir, "--format", "hf", "-o", hf, "--checkpoint", "2")
    weights = (hf / "model.safetensors").read_bytes()
    out = one_line(cli("export", "--run", run_dir, "--format", "hf", "-o", hf, expect=2).output)
    assert f"-o {hf}: holds a previous hf export" in out and "--force replaces it" in out
    assert (hf / "model.safetensors").read_bytes() == weights
    cli("export", "--run", run_dir, "--format", "hf", "-o", hf, "--force")
    assert (hf / "model.safetensors").read_bytes() != weights
    assert sorted(p.name for p in hf.iterdir()) == sorted(HF_FILES)  # nothing left beside it
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left

    # a directory of someone else's files: refused, even with --force, naming some of them
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt", "photo.jpg"):
        (mine / name).write_text(name)
    for force in ([], ["--force"]):
        out = one_line(cli("export", "--run", run_dir, "--format", "hf", "-o", mine, *force, expect=2).output)
        assert f"-o {mine}: a directory of files a nonllama hf export did not write (a.txt, b.txt, c.txt and 2 more)" in out
        assert "even with --force" in out
    assert sorted(p.name for p in mine.iterdir()) == ["a.txt", "b.txt", "c.txt", "d.txt", "photo.jpg"]
    # a previous export with a file of the user's added: not ours to mix into
    (hf / "README.md").write_text("my model card")
    out = one_line(cli("export", "--run", run_dir, "--format", "hf", "-o", hf, "--force", expect=2).output)
    assert "did not write (README.md)" in out and (hf / "README.md").read_text() == "my model card"
    # a config.json that is not a Llama's is not a previous export either
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    out = one_line(cli("export", "--run", run_dir, "--format", "hf", "-o", other, "--force", expect=2).output)
    assert "did not write (config.json)" in out


def test_hf_export_to_a_file_or_under_one(cli, run_dir: Path, tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    for force in ([], ["--force"]):
        out = one_line(cli("export", "--run", run_dir, "--format", "hf", "-o", file, *force, expect=2).output)
        assert f"-o {file}: exists and is not a directory" in out and "Traceback" not in out
    for fmt, below in (("hf", file / "hf"), ("llama2c", file / "sub" / "model.bin"), ("gguf", file / "m.gguf")):
        out = one_line(cli("export", "--run", run_dir, "--format", fmt, "-o", below, expect=2).output)
        assert f"-o {below}: {file} is a file, not a directory" in out, out
    out = one_line(cli("export", "--run", run_dir, "--format", "llama2c", "-o", tmp_path / "m.bin",
                       "--tokenizer-out", file / "tok.bin", expect=2).output)
    assert f"--tokenizer-out {file / 'tok.bin'}: {file} is a file, not a directory" in out
    assert file.read_text() == "x" and not (tmp_path / "m.bin").exists()
    # the output is judged before the run is even loaded
    out = one_line(cli("export", "--run", tmp_path / "no-run", "--format", "hf", "-o", file, expect=2).output)
    assert "exists and is not a directory" in out
