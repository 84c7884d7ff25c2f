"""The Llama model: Hugging Face parity, initialization, the key/value cache."""

from __future__ import annotations

import math

import pytest
import torch

from nonllama.model import Llama, ModelConfig, hf_config, preset_config, to_hf_state_dict


def hf_twin(model: Llama):
    transformers = pytest.importorskip("transformers")
    reference = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config(model.config)))
    missing, unexpected = reference.load_state_dict(to_hf_state_dict(model), strict=False)
    # a tied head is one tensor in both models; nothing else may be left out
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return reference.eval()


@pytest.mark.parametrize(
    "n_kv_heads, tie",
    [(4, False), (2, False), (4, True), (1, True)],
    ids=["mha", "gqa", "mha-tied", "mqa-tied"],
)
def test_logits_match_hugging_face_llama(n_kv_heads: int, tie: bool) -> None:
    torch.manual_seed(0)
    config = ModelConfig(dim=64, n_layers=3, n_heads=4, n_kv_heads=n_kv_heads, vocab_size=97,
                         max_seq_len=64, tie_embeddings=tie, rope_theta=500.0)
    model = Llama(config).eval()
    with torch.no_grad():  # norms start at one; make them matter
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    reference = hf_twin(model)
    assert sum(p.numel() for p in reference.parameters()) == model.num_params()
    tokens = torch.randint(0, config.vocab_size, (2, 33))
    with torch.no_grad():
        ours, _ = model(tokens)
        theirs = reference(tokens).logits
    assert (ours - theirs).abs().max().item() < 1e-5


def test_initialization_scales_residual_projections() -> None:
    torch.manual_seed(0)
    config = ModelConfig(dim=256, n_layers=8, n_heads=4, n_kv_heads=4, vocab_size=1000)
    model = Llama(config)
    residual = 0.02 / math.sqrt(2 * config.n_layers)
    assert model.tok_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.layers[0].attention.wq.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.layers[3].attention.wo.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.layers[7].feed_forward.w2.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.output.weight is model.tok_embeddings.weight


def test_presets_have_llama2c_shapes() -> None:
    # llama2.c's stories15M: 15.2M parameters with its 32000-token vocabulary
    assert preset_config("15m", vocab_size=32000).ffn_dim == 768
    assert Llama(preset_config("15m", vocab_size=32000)).num_params() == pytest.approx(15.2e6, rel=0.01)
    # stories260K: a feed-forward 172 wide (llama2.c's multiple_of 4), 260,032 parameters with
    # its 512-token vocabulary, its context 512 positions
    small = preset_config("260k", vocab_size=512)
    assert (small.dim, small.n_layers, small.n_heads, small.n_kv_heads) == (64, 5, 8, 4)
    assert small.ffn_dim == 172 and small.max_seq_len == 512 and small.tie_embeddings
    assert Llama(small).num_params() == 260_032
    assert Llama(small).layers[0].feed_forward.w1.weight.shape == (172, 64)
    with pytest.raises(ValueError, match="--preset"):
        preset_config("7b")
    with pytest.raises(ValueError, match="--n-kv-heads"):
        Llama(ModelConfig(dim=64, n_heads=4, n_kv_heads=3, vocab_size=10))


def test_cache_gives_the_same_logits_as_a_full_pass() -> None:
    torch.manual_seed(0)
    config = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, max_seq_len=32)
    model = Llama(config).eval()
    tokens = torch.randint(0, 50, (2, 12))
    from nonllama.model import KVCache

    with torch.no_grad():
        full, _ = model(tokens)
        cache = KVCache(config, 2, torch.device("cpu"), torch.float32)
        prefix, _ = model(tokens[:, :7], cache=cache, start=0)
        middle, _ = model(tokens[:, 7:10], cache=cache, start=7)  # several new positions at once
        steps = [model(tokens[:, i:i + 1], cache=cache, start=i)[0] for i in (10, 11)]
    stitched = torch.cat([prefix, middle, *steps], dim=1)
    assert torch.allclose(stitched, full, atol=1e-5)
    greedy = model.generate(tokens[:, :5], max_new_tokens=6, temperature=0)
    # greedy decoding from the cache picks the argmax of a full pass at every position
    with torch.no_grad():
        again, _ = model(greedy[:, :-1])
    assert torch.equal(again[:, 4:].argmax(-1), greedy[:, 5:])
