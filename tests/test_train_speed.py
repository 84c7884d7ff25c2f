"""Training speed: --dtype auto and bf16 autocast, --compile (on, auto), the chunked loss,
grouped-query attention through SDPA, FLOPs per token, MFU and the peaks it divides by."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_runs import TINY, one_thread, write_corpus  # noqa: F401 - one_thread: a fixture

from nonllama import model as model_module
from nonllama.model import Llama, ModelConfig, chunked_cross_entropy, preset_config
from nonllama.train import perf
from nonllama.train.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    write_corpus(tmp_path / "packed")
    return tmp_path


def train_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


def test_flops_per_token_by_hand() -> None:
    # 15m, 32,000 tokens: per block q, k, v, o 4 x 288 x 288 = 331,776, the feed-forward
    # 3 x 288 x 768 = 663,552, two norms 576: 995,904; six blocks 5,975,424; the final norm 288
    # and the (tied) head 32,000 x 288 = 9,216,000: N = 15,191,712, every parameter
    config = preset_config("15m", vocab_size=32000, max_seq_len=256)
    assert Llama(config).num_params() == 15_191_712
    attention = 12 * 6 * 288 * 256  # 5,308,416
    assert perf.flops_per_token(config, 256) == 6 * 15_191_712 + attention == 96_458_688
    # untied: the input embedding is a lookup, left out; the head counts as before
    untied = preset_config("15m", vocab_size=32000, max_seq_len=256, tie_embeddings=False)
    assert Llama(untied).num_params() - 32000 * 288 == 15_191_712
    assert perf.flops_per_token(untied, 256) == 96_458_688
    # grouped-query attention: k and v are 288 x 96 (2 of 6 heads of 48)
    grouped = preset_config("15m", vocab_size=32000, n_kv_heads=2)
    assert perf.flops_per_token(grouped, 256) == 6 * Llama(grouped).num_params() + attention


def test_gpu_peaks_and_native_bf16(monkeypatch) -> None:
    bf16, fp32 = torch.bfloat16, torch.float32
    assert perf.gpu_peak("NVIDIA H100 80GB HBM3", bf16) == 989.5e12
    assert perf.gpu_peak("NVIDIA H100 PCIe", bf16) == 756e12
    assert perf.gpu_peak("NVIDIA H200", fp32) == 494.5e12  # TF32
    assert perf.gpu_peak("NVIDIA A100-SXM4-80GB", fp32) == 156e12
    assert perf.gpu_peak("NVIDIA A10", torch.float16) == 125e12
    assert perf.gpu_peak("NVIDIA A10G", bf16) is None  # not an A10, and not listed
    assert perf.gpu_peak("Tesla V100-SXM2-16GB", fp32) == 15.7e12  # no TF32
    assert perf.gpu_peak("NVIDIA GeForce RTX 4090", bf16) == 165.2e12
    assert perf.gpu_peak("NVIDIA L4", bf16) == 121e12
    assert perf.device_peak(torch.device("cpu"), fp32, 5e12) == perf.Peak(5e12, "--peak-flops")

    from nonllama.train.loop import resolve_dtype

    cpu = torch.device("cpu")
    monkeypatch.setattr(perf, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert resolve_dtype("auto", cpu) == bf16 and resolve_dtype("fp32", cpu) == fp32
    monkeypatch.setattr(perf, "_cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert resolve_dtype("auto", cpu) == bf16
    monkeypatch.setattr(perf, "_cpu_flags", lambda: frozenset({"avx2"}))
    assert resolve_dtype("auto", cpu) == fp32
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve_dtype("auto", cuda) == bf16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))  # V100: emulated only
    assert resolve_dtype("auto", cuda) == fp32


def test_the_cpu_peak_is_measured_quickly() -> None:
    import time

    perf.measure_cpu_peak.cache_clear()
    started = time.perf_counter()
    peak = perf.measure_cpu_peak(torch.float32, 1)
    assert time.perf_counter() - started < 1.0 and peak > 1e8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_chunked_cross_entropy_matches_the_plain_loss(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    features = torch.randn(2, 150, 48, requires_grad=True)
    weight = (0.1 * torch.randn(1000, 48)).requires_grad_()
    targets = torch.randint(0, 1000, (2, 150))
    targets[:, ::7] = -100  # ignored targets count for nothing

    def loss_and_grads(loss_fn):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_fn()
        (3 * loss).backward()  # a scaled loss, as gradient accumulation and the grad scaler give
        grads = features.grad.clone(), weight.grad.clone()
        features.grad = weight.grad = None
        return loss.detach(), grads

    plain, (plain_f, plain_w) = loss_and_grads(
        lambda: F.cross_entropy(F.linear(features, weight).float().view(-1, 1000), targets.view(-1)))
    chunked, (chunked_f, chunked_w) = loss_and_grads(lambda: chunked_cross_entropy(features, weight, targets, 64))
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: each chunk's products rounded on their own
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-6)
    assert (chunked_f - plain_f).abs().max() <= tolerance * plain_f.abs().max()
    assert (chunked_w - plain_w).abs().max() <= tolerance * plain_w.abs().max()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):  # the loss alone
        assert chunked_cross_entropy(features, weight, targets, 64).item() == pytest.approx(plain.item(), rel=1e-6)


def test_the_model_chunks_its_loss_above_the_threshold(monkeypatch) -> None:
    torch.manual_seed(0)
    model = Llama(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, max_seq_len=64))
    tokens = torch.randint(0, 300, (4, 33))
    logits, plain = model(tokens[:, :-1], tokens[:, 1:])
    assert logits.shape == (4, 32, 300)
    plain.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    # 4 x 32 positions x 300 logits x 4 bytes = 153,600 bytes
    monkeypatch.setattr(model_module, "CHUNKED_LOSS_BYTES", 100_000)
    monkeypatch.setattr(model_module, "CHUNK_LOGITS_BYTES", 40 * 300 * 4)  # chunks of 40 rows: 4 chunks, the last short
    logits, chunked = model(tokens[:, :-1], tokens[:, 1:])
    assert logits is None and chunked.item() == pytest.approx(plain.item(), rel=1e-6)
    chunked.backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[name], rtol=1e-4, atol=1e-7), name


def test_grouped_query_attention_through_sdpa_equals_repeated_heads(monkeypatch) -> None:
    torch.manual_seed(0)
    model = Llama(ModelConfig(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=50, max_seq_len=32)).eval()
    tokens = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        monkeypatch.setattr(model_module, "_SDPA_GQA", True)
        grouped, _ = model(tokens)
        monkeypatch.setattr(model_module, "_SDPA_GQA", False)
        repeated, _ = model(tokens)
    assert torch.allclose(grouped, repeated, atol=1e-5)


def test_bf16_autocast_trains_as_fp32_does(cli, workdir: Path) -> None:
    common = ["--workdir", workdir, *TINY, "--max-steps", "8", "--eval-every", "4"]
    cli("train", *common, "--out", workdir / "fp32", "--dtype", "fp32")
    out = cli("train", *common, "--out", workdir / "bf16", "--dtype", "bf16").output
    assert "bfloat16" in out
    fp32, bf16 = train_records(workdir / "fp32"), train_records(workdir / "bf16")
    for a, b in zip(fp32, bf16, strict=True):
        assert math.isfinite(b["loss"]) and math.isfinite(b["grad_norm"])
        assert abs(a["loss"] - b["loss"]) < 0.02 * a["loss"], (a, b)
    assert bf16[-1]["loss"] < bf16[0]["loss"] - 0.3  # it learns


def test_compile_gives_the_eager_losses(cli, workdir: Path, monkeypatch) -> None:
    """--compile from the first step, and --compile auto deciding to compile after two steps,
    train as eager does, to float rounding (a first compile takes ~25 s on 2 cores)."""
    from nonllama.train import loop

    common = ["--workdir", workdir, *TINY, "--max-steps", "4", "--eval-every", "2"]
    cli("train", *common, "--out", workdir / "eager", "--no-compile")
    out = cli("train", *common, "--out", workdir / "compiled", "--compile").output
    assert "compile on" in out
    monkeypatch.setattr(loop, "compile_pays", lambda remaining, seconds, dtype: True)
    out = cli("train", *common, "--out", workdir / "auto").output
    assert "compile auto" in out and "compiling the model (--compile auto: 2 steps left" in out
    eager = train_records(workdir / "eager")
    for run in ("compiled", "auto"):
        for a, b in zip(eager, train_records(workdir / run), strict=True):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)


def test_compile_auto_leaves_short_runs_eager(cli, workdir: Path, monkeypatch) -> None:
    from nonllama.train import loop

    def no_compile(self) -> None:
        raise AssertionError("a tiny run compiled")

    monkeypatch.setattr(loop.TrainingSteps, "compile", no_compile)
    cli("train", "--workdir", workdir, *TINY, "--max-steps", "20", "--eval-every", "100")
    # 15m on 2 cores, bf16: ~2.4 s a step; compiling pays within a 1000-step run, not within 100
    bf16, fp32 = torch.bfloat16, torch.float32
    assert perf.compile_pays(1000, 2.4, bf16) and not perf.compile_pays(100, 2.4, bf16)
    assert not perf.compile_pays(300, 2.4, fp32)  # fp32 gains less from it
    assert not perf.compile_pays(150, 0.01, fp32)  # the longest tiny run of the tests


def test_mfu_is_logged_against_the_peak(workdir: Path) -> None:
    from rich.console import Console

    from nonllama.train.loop import train
    from nonllama.train.metrics import last_metrics, read_metrics, speed_metrics

    common = dict(data=str(workdir / "packed"), preset="tiny", seq_len=32, batch_size=8, max_steps=3,
                  eval_every=100, dtype="fp32")
    console = Console(file=io.StringIO(), width=200)
    train(TrainConfig(**common, out=str(workdir / "given"), peak_flops=2e9), console=console)
    assert "MFU against 0.002 TFLOP/s per cpu (--peak-flops)" in console.file.getvalue()
    flops = perf.flops_per_token(preset_config("tiny", vocab_size=64), 32)
    for r in train_records(workdir / "given"):
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * flops / 2e9)
    train(TrainConfig(**common, out=str(workdir / "measured")), console=console)
    assert "(measured: a float32 matrix product on 1 thread(s))" in console.file.getvalue()
    records = read_metrics(workdir / "measured")
    assert all(0 < r["mfu"] < 1 for r in records if r["split"] == "train")
    assert "MFU (last step)" in dict(last_metrics(records)) and "MFU (median of steps)" in dict(speed_metrics(records))
    assert (workdir / "measured" / "loss.png").stat().st_size > 0
