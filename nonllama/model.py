"""The Llama model, in one file that reads top to bottom.

    tokens -> embedding -> n_layers x [x + attention(rmsnorm(x)); x + swiglu(rmsnorm(x))]
           -> rmsnorm -> output head -> logits

Rotary embeddings, grouped-query attention through `scaled_dot_product_attention` (flash
kernels on GPU), SwiGLU feed-forward, optional tied embeddings. Generation (`Llama.stream`)
runs the prompt in one pass that fills a key/value cache, then one position per token
(`Decoder`, the same computation with the weights laid out for matrix-vector products: on CPU
one call of a C++ step, nonllama/kernels; optionally with int8 weights), each token drawn by
`sample`. Every parameter maps one-to-one onto Hugging Face's
`LlamaForCausalLM` (`to_hf_state_dict`, `hf_config`): rotary embeddings use the same "rotate
half" layout, so no weight has to be permuted on the way.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 288
    n_layers: int = 6
    n_heads: int = 6
    n_kv_heads: int = 6  # < n_heads: grouped-query attention
    vocab_size: int = 32000
    hidden_dim: int | None = None  # feed-forward width; None: llama2.c's 2/3 * 4 * dim rounded up
    multiple_of: int = 32
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048  # longest sequence the rotary table and the key/value cache cover
    tie_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def check(self) -> None:
        """Raise ValueError, naming the option, for shapes the model cannot take."""
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ValueError(f"--dim {self.dim} is not divisible by --n-heads {self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head size --dim/--n-heads = {self.head_dim} must be even (rotary embeddings)")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"--n-heads {self.n_heads} is not a multiple of --n-kv-heads {self.n_kv_heads}")


# The TinyStories models of llama2.c (their vocabulary comes from the tokenizer, their
# max_seq_len from --seq-len in training), plus a tiny one for tests.
PRESETS: dict[str, dict] = {
    "tiny": dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2),
    # stories260K: feed-forward 172 wide (multiple_of 4), 260,032 parameters with its 512 tokens
    "260k": dict(dim=64, n_layers=5, n_heads=8, n_kv_heads=4, multiple_of=4, max_seq_len=512),
    # not llama2.c's: the size `make all` trains on real text in ~15 minutes on 2 CPU cores
    "2m": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4),
    "15m": dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6),
    "42m": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=8),
    "110m": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12),
}


def preset_config(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"--preset {name!r}: unknown; choose one of {', '.join(PRESETS)}")
    return replace(ModelConfig(**PRESETS[name]), **overrides)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in float32 whatever the autocast dtype: the mean of squares underflows in bf16
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.type_as(x)


def rotary_table(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every (position, frequency), each (max_seq_len, head_dim), the sin of the
    first half negated (see `apply_rotary`)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.int64).float(), inv_freq)
    return torch.cat((angles, angles), dim=-1).cos(), torch.cat((-angles.sin(), angles.sin()), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + head_dim/2) of x (batch, heads, seq, head_dim) by position angles:
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin). A roll swaps the halves and the table's
    sign does the rest: the numbers of Hugging Face's rotate_half, in a quarter of the ops."""
    return (x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin).type_as(x)


class KVCache:
    """Keys and values of the positions seen so far, one pair of tensors per layer."""

    def __init__(self, config: ModelConfig, batch_size: int, device: torch.device, dtype: torch.dtype):
        shape = (batch_size, config.n_kv_heads, config.max_seq_len, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v at positions start.. and return every key and value up to there."""
        end = start + k.shape[2]
        self.keys[layer].narrow(2, start, k.shape[2]).copy_(k)
        self.values[layer].narrow(2, start, k.shape[2]).copy_(v)
        return self.keys[layer].narrow(2, 0, end), self.values[layer].narrow(2, 0, end)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, start: int = 0) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.wq(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, start, k, v)
        if seq == 1:
            # one new position (decoding): its query may see every cached key, so no mask; the
            # `group` query heads that share a key/value head are laid along the query axis,
            # which spares copying the keys and values for every head
            group = self.n_heads // self.n_kv_heads
            out = F.scaled_dot_product_attention(q.view(batch, self.n_kv_heads, group, self.head_dim), k, v)
            return self.wo(out.reshape(batch, 1, -1))
        if start == 0:  # a sequence from its beginning: plain causal attention
            out = _grouped_attention(q, k, v, is_causal=True)
        else:  # new positions after a cached prefix: each sees the prefix and itself
            positions = torch.arange(k.shape[2], device=x.device)
            mask = positions[None, :] <= (start + torch.arange(seq, device=x.device))[:, None]
            out = _grouped_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(batch, seq, -1))


# scaled_dot_product_attention's enable_gqa came with torch 2.5
_SDPA_GQA = torch.__version__ >= (2, 5)


def _grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """scaled_dot_product_attention of q (batch, n_heads, seq, head_dim) over k, v with n_kv_heads
    heads: query head h reads key/value head h // group, as in Hugging Face's repeat_kv. SDPA
    shares the key/value heads itself (enable_gqa) where torch has it, on CPU, and on CUDA in
    16-bit, where flash attention does it; float32 on CUDA would fall back to the slow math
    kernel, so there (and before torch 2.5) the keys and values are repeated for every head."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        if _SDPA_GQA and (q.device.type != "cuda" or q.dtype in (torch.float16, torch.bfloat16)):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kwargs)
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.w2 = nn.Linear(config.ffn_dim, config.dim, bias=False)
        self.w3 = nn.Linear(config.dim, config.ffn_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, start: int = 0) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, cache, start)
        return x + self.feed_forward(self.ffn_norm(x))


# The loss goes chunk by chunk (`chunked_cross_entropy`) when the float32 logits of a batch
# would take more than this: 16 x 256 tokens of a 32,000-token vocabulary take 500 MiB.
CHUNKED_LOSS_BYTES = 256 * 2**20
CHUNK_LOGITS_BYTES = 32 * 2**20  # the float32 logits of one chunk
MAX_COMPILED_CHUNKS = 4


def chunked_cross_entropy(features: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk_rows: int | None = None) -> torch.Tensor:
    """F.cross_entropy(F.linear(features, weight).float(), targets): the mean over the targets
    that are not -100, the same value and gradients (to float rounding, in the autocast dtype
    too), without the logits of the whole batch: `chunk_rows` positions at a time (by default
    as many as CHUNK_LOGITS_BYTES of float32 logits hold), each chunk's gradients computed in
    the forward pass while its logits are at hand (as Liger's fused linear cross-entropy does),
    so the backward pass recomputes nothing and memory holds one chunk's logits at a time."""
    features, targets = features.reshape(-1, features.shape[-1]), targets.reshape(-1)
    rows = chunk_rows or max(1, CHUNK_LOGITS_BYTES // (4 * weight.shape[0]))
    compiling = getattr(torch.compiler, "is_compiling", None)  # torch 2.4 on
    if compiling is not None and compiling():
        # torch.compile unrolls the loop: a few larger chunks compile in half the time of many
        rows = max(rows, -(-features.shape[0] // MAX_COMPILED_CHUNKS))
    return _ChunkedHeadLoss.apply(features, weight, targets, rows)


class _ChunkedHeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                rows: int) -> torch.Tensor:
        want_features, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss = torch.zeros((), dtype=torch.float32, device=features.device)
        grad_features = torch.empty_like(features) if want_features else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        for i in range(0, features.shape[0], rows):
            h, y = features[i:i + rows], targets[i:i + rows]
            logits = F.linear(h, weight)  # under autocast in its dtype, as the output head computes it
            logits32 = logits.float()
            counted = y != -100
            y = torch.where(counted, y, 0)  # an ignored row: any target, its loss and gradient zeroed
            lse = torch.logsumexp(logits32, dim=-1)
            loss += ((lse - logits32.gather(1, y[:, None]).squeeze(1)) * counted).sum()
            if want_features or want_weight:
                # d(loss)/d(logits) = softmax - one-hot of the target, zero for ignored rows
                grad = torch.exp(logits32.sub_(lse[:, None]))
                grad.scatter_add_(1, y[:, None], torch.full_like(grad[:, :1], -1.0))
                grad = (grad * counted[:, None]).to(logits.dtype)
                if want_features:
                    grad_features[i:i + rows] = grad @ weight
                if want_weight:
                    grad_weight += grad.t() @ h
        count = (targets != -100).sum()
        ctx.save_for_backward(grad_features, grad_weight, count)
        ctx.weight_dtype = weight.dtype
        return loss / count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_features, grad_weight, count = ctx.saved_tensors
        scale = grad_loss / count
        return (None if grad_features is None else grad_features * scale.to(grad_features.dtype),
                None if grad_weight is None else (grad_weight * scale).to(ctx.weight_dtype), None, None)


class Llama(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.check()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rotary_table(config.head_dim, config.max_seq_len, config.rope_theta)
        # buffers follow .to(device) but are not parameters, and stay out of the state dict
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """normal(0.02); the projections that write into the residual stream (attention wo,
        feed-forward w2) shrunk by 1/sqrt(2 * n_layers) so the stream's variance does not
        grow with depth (GPT-2)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for block in self.layers:
            nn.init.normal_(block.attention.wo.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.feed_forward.w2.weight, mean=0.0, std=residual_std)

    def features(self, tokens: torch.Tensor, cache: KVCache | None = None, start: int = 0) -> torch.Tensor:
        """The last block's output, normalised (batch, seq, dim): what the output head reads."""
        seq = tokens.shape[1]
        if start + seq > self.config.max_seq_len:
            raise ValueError(f"sequence of {start + seq} tokens is longer than max_seq_len {self.config.max_seq_len}")
        x = self.tok_embeddings(tokens)
        cos, sin = self.rope_cos[start:start + seq], self.rope_sin[start:start + seq]
        for block in self.layers:
            x = block(x, cos, sin, cache, start)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, start: int = 0) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (batch, seq, vocab) for `tokens` (batch, seq) at positions start..;
        with `targets`, also the mean cross-entropy loss over the targets that are not -100.
        When the float32 logits of the whole batch would take more than CHUNKED_LOSS_BYTES,
        the loss comes from `chunked_cross_entropy`, which never holds them all, and the
        logits returned are None."""
        features = self.features(tokens, cache, start)
        if targets is not None and tokens.numel() * self.config.vocab_size * 4 > CHUNKED_LOSS_BYTES:
            return None, chunked_cross_entropy(features, self.output.weight, targets)
        logits = self.output(features)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def configure_optimizer(self, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95),
                            fused: bool = False) -> torch.optim.AdamW:
        """AdamW; weight decay on matrices (linear and embedding weights), none on norms."""
        params = [p for p in self.parameters() if p.requires_grad]  # a tied weight appears once
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.inference_mode()
    def stream(self, tokens: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
               generator: torch.Generator | None = None, quantize: str = "none") -> Iterator[torch.Tensor]:
        """Continue `tokens` (batch, seq): yield each new position's tokens (batch, 1).

        The prompt goes through the model in one pass that fills the key/value cache (once for
        all rows when every row holds the same prompt: several samples of one prompt); after
        that, each new token costs one position (`Decoder.step`, with int8 weights when
        `quantize` is "int8"). Stops after `max_new_tokens`, at the end of the context
        (max_seq_len positions in all), or once every row has produced `eos_id`.
        """
        batch, length = tokens.shape
        max_new_tokens = min(max_new_tokens, self.config.max_seq_len - length)
        if max_new_tokens <= 0:
            return
        decoder = Decoder.cached(self, quantize)
        cache = KVCache(self.config, batch, tokens.device, self.rope_cos.dtype)
        if batch > 1 and bool((tokens == tokens[:1]).all()):
            first = KVCache(self.config, 1, tokens.device, self.rope_cos.dtype)
            features = self.features(tokens[:1], first, 0)[:, -1].expand(batch, -1)
            for rows, row in zip([*cache.keys, *cache.values], [*first.keys, *first.values], strict=True):
                rows[:, :, :length] = row[:, :, :length]
        else:
            features = self.features(tokens, cache, 0)[:, -1]
        logits = decoder.head(features)  # the last position's only
        finished = torch.zeros(batch, 1, dtype=torch.bool, device=tokens.device)
        for i in range(max_new_tokens):
            next_token = sample(logits, temperature, top_k, top_p, generator)
            yield next_token
            if eos_id is not None:
                finished |= next_token == eos_id
                if bool(finished.all()):
                    return
            if i + 1 < max_new_tokens:
                logits = decoder.step(next_token, cache, length + i)

    def generate(self, tokens: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                 generator: torch.Generator | None = None, quantize: str = "none") -> torch.Tensor:
        """`tokens` (batch, seq) followed by what `stream` produces for them."""
        new = list(self.stream(tokens, max_new_tokens, temperature, top_k, top_p, eos_id, generator, quantize))
        return torch.cat([tokens, *new], dim=1)


QUANTIZE = ("none", "int8")  # Decoder's weight formats: float32 as trained, int8 per group of 64


class Decoder:
    """One new position from the key/value cache, computed as `Llama.forward` computes it (up
    to float rounding) but laid out for speed; the weights are copied once, when it is made.

    On CPU (float32) the whole step is one call of the C++ kernel of nonllama/kernels (built on
    first use): weights packed in tiles of 16 rows for matrix-vector products, attention over
    the cache's tensors, OpenMP over torch.get_num_threads() threads. Elsewhere (CUDA, another
    dtype, NONLLAMA_KERNELS=0, a failed build) it runs in torch, with the matrices stored (in,
    out), which a CPU multiplies by one vector 2-3x faster than nn.Linear's (out, in), q, k, v
    and gate, up fused into one matrix each, and q and k rotated in one go.

    quantize="int8": the matrices and the embedding as llama2.c's runq.c holds them
    (nonllama.quantize: symmetric int8 per group of `model_group_size` input values, one
    float32 scale per group; the token embedding is read as dequantized rows, the norms stay
    float32). The kernel also quantizes each matrix's input vector per group and sums the
    products in int32, as runq.c does; the torch path multiplies by the dequantized weights.
    """

    def __init__(self, model: Llama, quantize: str | None = "none"):
        quantize = quantize or "none"
        if quantize not in QUANTIZE:
            raise ValueError(f"quantize {quantize!r}: choose one of {', '.join(QUANTIZE)}")
        self.model, self.quantize = model, quantize
        self.group_size: int | None = None
        with torch.no_grad():
            matrices = self._matrices()
            weight = model.tok_embeddings.weight
            self.kernel = None  # the C++ step, when it applies
            if weight.device.type == "cpu" and weight.dtype == torch.float32 and model.rope_cos.dtype == torch.float32:
                from nonllama import kernels

                module = kernels.load()
                if module is not None:
                    self.kernel = self._kernel_model(module, matrices)
            if self.kernel is None:
                self._torch_weights(matrices)

    def _matrices(self) -> dict[str, list]:
        """Per matrix kind, per layer: (weight, quantized (q, scales) or None); "head" and
        "embedding" a single pair each (the same quantization when tied)."""
        from nonllama.quantize import model_group_size, quantize_int8

        model = self.model
        if self.quantize == "int8":
            self.group_size = model_group_size(model.config)

        def entry(weight: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
            weight = weight.detach()
            return weight, (quantize_int8(weight, self.group_size) if self.group_size else None)

        def fused(*weights: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
            parts = [entry(w) for w in weights]  # per row groups: quantizing the parts is quantizing the whole
            quantized = None
            if self.group_size:
                quantized = (torch.cat([p[1][0] for p in parts]), torch.cat([p[1][1] for p in parts]))
            return torch.cat([p[0] for p in parts]), quantized

        out: dict[str, list] = {"qkv": [], "o": [], "gate_up": [], "down": []}
        for block in model.layers:
            a, f = block.attention, block.feed_forward
            out["qkv"].append(fused(a.wq.weight, a.wk.weight, a.wv.weight))
            out["o"].append(entry(a.wo.weight))
            out["gate_up"].append((entry(f.w1.weight), entry(f.w3.weight)))
            out["down"].append(entry(f.w2.weight))
        out["embedding"] = entry(model.tok_embeddings.weight)
        tied = model.output.weight is model.tok_embeddings.weight
        out["head"] = out["embedding"] if tied else entry(model.output.weight)
        return out

    def _kernel_model(self, module, matrices: dict[str, list]):
        c, tile = self.model.config, module.TILE

        def pack(pair):
            weight, quantized = pair
            return module.pack_int8(*quantized, self.group_size) if quantized else module.pack_f32(weight)

        def alternate(gate, up):  # the gate's and up's tiles of 16 rows alternating, for SwiGLU as tiles finish
            def tiles(t: torch.Tensor) -> torch.Tensor:
                padded = torch.zeros((-(-t.shape[0] // tile) * tile, *t.shape[1:]), dtype=t.dtype)
                padded[:t.shape[0]] = t
                return padded.view(-1, tile, *t.shape[1:])

            def both(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                return torch.stack([tiles(a), tiles(b)], dim=1).reshape(-1, *a.shape[1:])

            quantized = None
            if gate[1] is not None:
                quantized = (both(gate[1][0], up[1][0]), both(gate[1][1], up[1][1]))
            return both(gate[0], up[0]), quantized

        mats = []
        for qkv, o, gate_up, down in zip(matrices["qkv"], matrices["o"], matrices["gate_up"], matrices["down"],
                                         strict=True):
            mats += [pack(qkv), pack(o), pack(alternate(*gate_up)), pack(down)]
        mats.append(pack(matrices["head"]))
        embedding, quantized = matrices["embedding"]
        if quantized:
            embedding, scales, group = quantized[0], quantized[1], self.group_size
        else:
            scales, group = torch.empty(0), 1
        model = self.model
        return module.Model(c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.norm_eps,
                            [b.attention_norm.weight.detach() for b in model.layers],
                            [b.ffn_norm.weight.detach() for b in model.layers], model.norm.weight.detach(),
                            mats, embedding, scales, group, model.rope_cos, model.rope_sin)

    def _torch_weights(self, matrices: dict[str, list]) -> None:
        from nonllama.quantize import dequantize_int8

        def weight(pair) -> torch.Tensor:  # (out, in), as the kernel would compute with it
            w, quantized = pair
            return dequantize_int8(*quantized, self.group_size).to(w.dtype) if quantized else w

        self.layers = [(
            block.attention_norm,
            weight(qkv).t().contiguous(),
            weight(o).t().contiguous(),
            block.ffn_norm,
            torch.cat([weight(gate_up[0]), weight(gate_up[1])]).t().contiguous(),
            weight(down).t().contiguous(),
        ) for block, qkv, o, gate_up, down in zip(self.model.layers, matrices["qkv"], matrices["o"],
                                                  matrices["gate_up"], matrices["down"], strict=True)]
        self.embedding = weight(matrices["embedding"])
        self.output = weight(matrices["head"]).t().contiguous()

    _last: tuple | None = None  # (weakref to a model, the state of its weights, {variant: decoder}): `cached`'s memory

    @classmethod
    def cached(cls, model: Llama, quantize: str = "none") -> Decoder:
        """A Decoder of `model`, reused while its weights stay the same tensors, unmodified. One
        model is remembered (the last one asked for), with a decoder per `quantize` and per
        NONLLAMA_KERNELS setting."""
        from nonllama import kernels

        try:
            state = (model.rope_cos.device, model.rope_cos.dtype,
                     tuple((id(p), p.data_ptr(), p._version) for p in model.parameters()))
        except RuntimeError:  # inference tensors keep no version: no way to tell, build a new one
            return cls(model, quantize)
        variant = (quantize or "none", kernels.enabled())
        last = cls._last
        if last is None or last[0]() is not model or last[1] != state:
            last = cls._last = (weakref.ref(model), state, {})
        if variant not in last[2]:
            last[2][variant] = cls(model, quantize)
        return last[2][variant]

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the normalised last hidden states (batch, dim)."""
        if self.kernel is not None:
            return self.kernel.head(features)
        return features @ self.output

    def step(self, tokens: torch.Tensor, cache: KVCache, position: int) -> torch.Tensor:
        """Logits (batch, vocab) after `tokens` (batch, 1) at `position`; the cache holds the
        positions before it and gains this one."""
        if self.kernel is not None:
            return self.kernel.step(tokens, position, cache.keys, cache.values)
        c = self.model.config
        batch, heads, kv_heads = tokens.shape[0], c.n_heads, c.n_kv_heads
        x = F.embedding(tokens[:, 0], self.embedding)  # (batch, dim)
        cos, sin = self.model.rope_cos[position], self.model.rope_sin[position]
        for layer, (attention_norm, wqkv, wo, ffn_norm, w13, w2) in enumerate(self.layers):
            qkv = (_rms_norm(x, attention_norm) @ wqkv).view(batch, heads + 2 * kv_heads, c.head_dim)
            qk = apply_rotary(qkv[:, :heads + kv_heads], cos, sin)
            # as in Attention.forward for one position: the query heads of a group along the
            # query axis, every cached key visible
            q = qk[:, :heads].view(batch, kv_heads, heads // kv_heads, c.head_dim)
            keys, values = cache.update(layer, position, qk[:, heads:, None], qkv[:, heads + kv_heads:, None])
            x = x + F.scaled_dot_product_attention(q, keys, values).reshape(batch, -1) @ wo
            gate, up = (_rms_norm(x, ffn_norm) @ w13).split(c.ffn_dim, dim=-1)
            x = x + (F.silu(gate) * up) @ w2
        return self.head(_rms_norm(x, self.model.norm))


def _rms_norm(x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
    """norm(x), in one op where torch has it (2.4 on; the same numbers in float32)."""
    return F.rms_norm(x, x.shape[-1:], norm.weight, norm.eps) if hasattr(F, "rms_norm") else norm(x)


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of `logits` (batch, vocab), as (batch, 1).

    temperature <= 0: the argmax (greedy). Otherwise from softmax(logits / temperature),
    restricted to the `top_k` most likely tokens and to the smallest set of most likely
    tokens whose probabilities add up to `top_p` (nucleus sampling), when given.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the more likely ones already reach top_p (the first always stays)
        outside = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(outside, float("-inf")))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)


# --------------------------------------------------------------------------- Hugging Face names

_HF_NAMES = [  # ours -> LlamaForCausalLM's
    (r"tok_embeddings\.weight", "model.embed_tokens.weight"),
    (r"layers\.(\d+)\.attention\.w([qkv])\.weight", r"model.layers.\1.self_attn.\2_proj.weight"),
    (r"layers\.(\d+)\.attention\.wo\.weight", r"model.layers.\1.self_attn.o_proj.weight"),
    (r"layers\.(\d+)\.feed_forward\.w1\.weight", r"model.layers.\1.mlp.gate_proj.weight"),
    (r"layers\.(\d+)\.feed_forward\.w2\.weight", r"model.layers.\1.mlp.down_proj.weight"),
    (r"layers\.(\d+)\.feed_forward\.w3\.weight", r"model.layers.\1.mlp.up_proj.weight"),
    (r"layers\.(\d+)\.attention_norm\.weight", r"model.layers.\1.input_layernorm.weight"),
    (r"layers\.(\d+)\.ffn_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
]


def hf_name(name: str) -> str:
    for pattern, replacement in _HF_NAMES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    raise KeyError(f"no Hugging Face name for parameter {name!r}")


def to_hf_state_dict(model: Llama) -> dict[str, torch.Tensor]:
    """The model's weights under LlamaForCausalLM's names (the tied head omitted when tied)."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("output.weight", None)
    return {hf_name(k): v for k, v in state.items()}


def hf_config(config: ModelConfig) -> dict:
    """Keyword arguments for transformers.LlamaConfig describing the same model."""
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.dim,
        intermediate_size=config.ffn_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_embeddings,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def config_to_dict(config: ModelConfig) -> dict:
    return asdict(config)
