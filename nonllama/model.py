"""The Llama model, in one file that reads top to bottom.

    tokens -> embedding -> n_layers x [x + attention(rmsnorm(x)); x + swiglu(rmsnorm(x))]
           -> rmsnorm -> output head -> logits

Rotary embeddings, grouped-query attention through `scaled_dot_product_attention` (flash
kernels on GPU), SwiGLU feed-forward, optional tied embeddings. Generation (`Llama.stream`)
runs the prompt in one pass that fills a key/value cache, then one position per token
(`Decoder`, the same computation with the weights laid out for matrix-vector products), each
token drawn by `sample`. Every parameter maps one-to-one onto Hugging Face's
`LlamaForCausalLM` (`to_hf_state_dict`, `hf_config`): rotary embeddings use the same "rotate
half" layout, so no weight has to be permuted on the way.
"""

from __future__ import annotations

import math
import re
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
        if self.n_kv_heads != self.n_heads:
            # query head h reads key/value head h // group, as in Hugging Face's repeat_kv
            group = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        if start == 0:  # a sequence from its beginning: plain causal attention
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # new positions after a cached prefix: each sees the prefix and itself
            positions = torch.arange(k.shape[2], device=x.device)
            mask = positions[None, :] <= (start + torch.arange(seq, device=x.device))[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(batch, seq, -1))


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
                cache: KVCache | None = None, start: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (batch, seq, vocab) for `tokens` (batch, seq) at positions start..;
        with `targets`, also the mean cross-entropy loss."""
        logits = self.output(self.features(tokens, cache, start))
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
               generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """Continue `tokens` (batch, seq): yield each new position's tokens (batch, 1).

        The prompt goes through the model in one pass that fills the key/value cache; after
        that, each new token costs one position (`Decoder.step`). Stops after `max_new_tokens`, at the end of
        the context (max_seq_len positions in all), or once every row has produced `eos_id`.
        """
        batch, length = tokens.shape
        max_new_tokens = min(max_new_tokens, self.config.max_seq_len - length)
        if max_new_tokens <= 0:
            return
        cache = KVCache(self.config, batch, tokens.device, self.rope_cos.dtype)
        decoder = Decoder(self)
        logits = decoder.head(self.features(tokens, cache, 0)[:, -1])  # the last position's only
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
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """`tokens` (batch, seq) followed by what `stream` produces for them."""
        new = list(self.stream(tokens, max_new_tokens, temperature, top_k, top_p, eos_id, generator))
        return torch.cat([tokens, *new], dim=1)


class Decoder:
    """One new position from the key/value cache, computed as `Llama.forward` computes it (up
    to float rounding) but laid out for speed. A decoding step multiplies one vector by every
    weight matrix, which a CPU does 2-3x faster with the matrix stored (in, out) than with
    nn.Linear's (out, in); q, k, v and gate, up are fused into one matrix each, and q and k are
    rotated in one go, which halves the calls. The weights are copied once, when it is made."""

    def __init__(self, model: Llama):
        self.model = model
        with torch.no_grad():
            self.layers = [(
                block.attention_norm,
                torch.cat([block.attention.wq.weight, block.attention.wk.weight, block.attention.wv.weight]).t().contiguous(),
                block.attention.wo.weight.t().contiguous(),
                block.ffn_norm,
                torch.cat([block.feed_forward.w1.weight, block.feed_forward.w3.weight]).t().contiguous(),
                block.feed_forward.w2.weight.t().contiguous(),
            ) for block in model.layers]
            self.output = model.output.weight.t().contiguous()

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the normalised last hidden states (..., dim)."""
        return features @ self.output

    def step(self, tokens: torch.Tensor, cache: KVCache, position: int) -> torch.Tensor:
        """Logits (batch, vocab) after `tokens` (batch, 1) at `position`; the cache holds the
        positions before it and gains this one."""
        c = self.model.config
        batch, heads, kv_heads = tokens.shape[0], c.n_heads, c.n_kv_heads
        x = self.model.tok_embeddings(tokens[:, 0])  # (batch, dim)
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
