"""Symmetric int8 weight-only quantization, the scheme of llama2.c's runq.c (export version 2).

Why: decoding one token reads every weight once and does two flops per weight read, so on a CPU
it is memory-bound; int8 weights are 4x smaller than float32 (a float32 scale per group of 64
adds 1/16, per group of 32 1/8), so the file, the memory mapped at run time and the bytes moved
per token all shrink 3.5-3.8x, and the matrix-vector products become int8 dot products.

The scheme (runq.c's `quantize`, export.py's `quantize_q80`): cut each matrix's rows into
groups of `group_size` consecutive values; per group s = max|w| / 127 and q = round(w / s), an
int8 in [-127, 127]; w is read back as q * s, off by at most s / 2 per value. Only the
matrices are quantized (token embedding, attention wq wk wv wo, feed-forward w1 w2 w3 and an
untied output head); the RMSNorm weights stay float32. runq.c uses one group size for every
matrix and its matmul walks rows in whole groups, so the group must divide both `dim` and
the feed-forward width: `model_group_size` halves 64 until it divides both (llama2.c's
export.py halves it until it divides dim, and checks only that whole matrices hold whole groups).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from nonllama.model import Llama, ModelConfig

Q_MAX = 127.0


def group_size_for(dim: int, group_size: int = 64) -> int:
    """The largest of group_size, group_size/2, group_size/4, ... that divides `dim` (llama2.c's
    export.py backs off the same way); 1 at worst."""
    if dim < 1 or group_size < 1:
        raise ValueError(f"need positive sizes, got dim={dim}, group_size={group_size}")
    while group_size > 1 and dim % group_size:
        group_size //= 2
    return group_size


def model_group_size(config: ModelConfig, group_size: int = 64) -> int:
    """The one group size runq.c can use for this model: it divides `dim` (the rows of the
    embedding and of wq wk wv w1 w3, the output head's) and the feed-forward width (w2's rows)."""
    return group_size_for(math.gcd(config.dim, config.ffn_dim), group_size)


def _grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    n = x.shape[-1] if x.dim() else 1
    if x.dim() == 0 or n % group_size:
        raise ValueError(f"last dimension {n} of a {tuple(x.shape)} tensor is not a multiple of "
                         f"the group size {group_size}")
    return x.reshape(*x.shape[:-1], n // group_size, group_size)


def quantize_int8(weight: torch.Tensor, group_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scales): q int8 with weight's shape, scales float32 of shape (..., n // group_size)
    for groups of `group_size` consecutive values along the last dimension n. A group of zeros
    gets scale 0 and q 0 (runq.c would divide by zero there)."""
    groups = _grouped(weight.detach().float(), group_size)
    scales = groups.abs().amax(dim=-1) / Q_MAX
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(groups / safe.unsqueeze(-1)).clamp_(-Q_MAX, Q_MAX).to(torch.int8)
    return q.reshape(weight.shape), scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, group_size: int = 64) -> torch.Tensor:
    """float32 q * scale, each value times its group's scale."""
    groups = _grouped(q, group_size).float()
    if scales.shape != groups.shape[:-1]:
        raise ValueError(f"scales {tuple(scales.shape)} do not match {tuple(q.shape)} in groups of {group_size}")
    return (groups * scales.float().unsqueeze(-1)).reshape(q.shape)


def quantized_matrices(model: Llama) -> list[tuple[str, torch.Tensor]]:
    """(state-dict name, weight) of every matrix runq.c quantizes, in the order of its file:
    token embedding, then wq, wk, wv, wo, w1, w2, w3 of every layer (grouped by kind), then the
    output head when it is not tied to the embedding."""
    named: list[tuple[str, torch.Tensor]] = [("tok_embeddings.weight", model.tok_embeddings.weight)]
    for part, kinds in (("attention", ("wq", "wk", "wv", "wo")), ("feed_forward", ("w1", "w2", "w3"))):
        for kind in kinds:
            for i, block in enumerate(model.layers):
                named.append((f"layers.{i}.{part}.{kind}.weight", getattr(getattr(block, part), kind).weight))
    if model.output.weight is not model.tok_embeddings.weight:
        named.append(("output.weight", model.output.weight))
    return named


@torch.no_grad()
def fake_quantize_(model: Llama, group_size: int = 64) -> Llama:
    """In place: every matrix of `quantized_matrices` replaced by its int8 round trip, with
    runq.c's group size for this model (`model_group_size`); norms untouched, a tied output
    head stays the embedding's tensor. The model then computes what the int8 weights hold
    (the activations stay float: runq.c also quantizes those, see export's tests)."""
    size = model_group_size(model.config, group_size)
    for _, weight in quantized_matrices(model):
        q, scales = quantize_int8(weight, size)
        weight.copy_(dequantize_int8(q, scales, size).to(weight.dtype))
    return model
