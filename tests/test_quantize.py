"""Int8 weight quantization (runq.c's scheme): round-trip error, group sizes, in-place model."""

from __future__ import annotations

import pytest
import torch

from nonllama.model import Llama, ModelConfig
from nonllama.quantize import (
    dequantize_int8,
    fake_quantize_,
    group_size_for,
    model_group_size,
    quantize_int8,
    quantized_matrices,
)


def test_round_trip_error_is_at_most_half_a_scale_per_value() -> None:
    torch.manual_seed(0)
    weight = torch.randn(3, 7, 256) * torch.logspace(-3, 1, 256)  # groups of very different ranges
    q, scales = quantize_int8(weight, 64)
    assert q.dtype == torch.int8 and q.shape == weight.shape
    assert scales.dtype == torch.float32 and scales.shape == (3, 7, 4)
    assert q.abs().max().item() == 127  # each group's largest value maps onto +-127
    back = dequantize_int8(q, scales, 64)
    assert back.dtype == torch.float32
    error = (back - weight).abs().reshape(3, 7, 4, 64)
    # half a step, plus float32 rounding of the division and the product
    assert (error <= scales.unsqueeze(-1) / 2 * (1 + 1e-5) + 1e-12).all()


def test_multiples_of_the_scale_come_back_exactly() -> None:
    scale = 0.25  # a power of two: w / s and q * s are exact in float32
    q = torch.randint(-127, 128, (5, 32), dtype=torch.int8)
    q[:, 0] = 127  # the group's max|w| is 127 * scale, so s = scale exactly
    weight = q.float() * scale
    got_q, got_scales = quantize_int8(weight, 32)
    assert torch.equal(got_q, q)
    assert torch.equal(got_scales, torch.full((5, 1), scale))
    assert torch.equal(dequantize_int8(got_q, got_scales, 32), weight)


def test_a_group_of_zeros_has_scale_zero_and_no_nan() -> None:
    weight = torch.zeros(2, 8)
    weight[1, 4:] = torch.tensor([1.0, -2.0, 0.5, 0.0])
    q, scales = quantize_int8(weight, 4)
    assert torch.equal(scales[0], torch.zeros(2)) and scales[1, 0] == 0
    assert torch.equal(q[0], torch.zeros(8, dtype=torch.int8))
    assert torch.equal(dequantize_int8(q, scales, 4)[0], torch.zeros(8))


def test_rows_must_hold_whole_groups() -> None:
    with pytest.raises(ValueError, match="not a multiple of the group size 64"):
        quantize_int8(torch.ones(4, 96), 64)
    with pytest.raises(ValueError, match="do not match"):
        dequantize_int8(torch.ones(4, 64, dtype=torch.int8), torch.ones(4, 2), 64)


@pytest.mark.parametrize("dim, expected", [(288, 32), (256, 64), (768, 64), (96, 32), (100, 4), (6, 2), (7, 1)])
def test_group_size_halves_until_it_divides(dim: int, expected: int) -> None:
    assert group_size_for(dim) == expected
    assert group_size_for(dim, 16) == min(expected, 16)


def test_model_group_size_divides_dim_and_the_feed_forward_width() -> None:
    # 15m: dim 288, ffn 768 -> 32 (llama2.c's export backs off to 32 too)
    assert model_group_size(ModelConfig(dim=288, n_layers=1, n_heads=6, n_kv_heads=6)) == 32
    # dim 128 divides by 64 but a feed-forward of 96 does not
    assert model_group_size(ModelConfig(dim=128, n_layers=1, n_heads=4, hidden_dim=96)) == 32


def tiny(tie: bool) -> Llama:
    torch.manual_seed(0)
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50,
                         hidden_dim=128, max_seq_len=32, tie_embeddings=tie)
    model = Llama(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_fake_quantize_rounds_the_matrices_and_keeps_norms_and_ties(tie: bool) -> None:
    model = tiny(tie)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    names = [name for name, _ in quantized_matrices(model)]
    assert names[0] == "tok_embeddings.weight" and names[1:3] == ["layers.0.attention.wq.weight",
                                                                  "layers.1.attention.wq.weight"]
    assert ("output.weight" in names) is (not tie)
    assert len(names) == 1 + 7 * 2 + (not tie)

    assert fake_quantize_(model) is model
    assert (model.output.weight is model.tok_embeddings.weight) is tie
    group = model_group_size(model.config)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.equal(p, before[name]), name
            continue
        q, scales = quantize_int8(before[name], group)
        assert torch.equal(p, dequantize_int8(q, scales, group)), name
        assert not torch.equal(p, before[name]), name
    # quantizing again changes (almost) nothing: the values already sit on the int8 grid
    again = {name: p.detach().clone() for name, p in model.named_parameters()}
    fake_quantize_(model)
    for name, p in model.named_parameters():
        assert torch.allclose(p, again[name], rtol=0, atol=1e-7), name
