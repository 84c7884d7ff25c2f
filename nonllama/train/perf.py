"""How fast training runs, and the choices made for speed: the precision `--dtype auto` picks,
whether `--compile` (auto) pays for itself, and model FLOPs utilization (MFU).

MFU = tokens/s x FLOPs per token / (processes x the peak FLOP/s of one device in the training
dtype). FLOPs per token follow nanoGPT's (and llama2.c's) estimate_mfu, from PaLM's appendix B:
6 N for the matrix multiplications of forward and backward, plus 12 x n_layers x dim x seq_len
for attention's scores and weighted sums. N counts every parameter that multiplies: all of them
with tied embeddings (the shared matrix is the output head, counted once, as nanoGPT counts
it), all but the input embedding without (a lookup is no multiplication). The peak: --peak-flops
when given; on a GPU, the dense (no sparsity) figure of its datasheet from GPU_PEAKS; on a CPU,
measured once at the start by timing a large matrix product in the training dtype on the
training's threads.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nonllama.model import ModelConfig

# Dense peak TFLOP/s of NVIDIA GPUs from their datasheets (the sparsity figures halved):
# (name pattern, 16-bit (bf16/fp16 tensor cores, fp32 accumulate), tf32, fp32). float32 runs on a
# GPU use TF32 matmuls (`train` turns them on), so their peak is the tf32 column where the GPU
# has one. First match wins: the more specific names come first.
GPU_PEAKS: list[tuple[str, float, float | None, float]] = [
    (r"H100 NVL", 835.0, 417.5, 60.0),
    (r"H100 PCIe", 756.0, 378.0, 51.0),
    (r"H100", 989.5, 494.5, 67.0),  # SXM
    (r"H200 NVL", 835.0, 417.5, 60.0),
    (r"\bH200\b", 989.5, 494.5, 67.0),  # SXM
    (r"A100", 312.0, 156.0, 19.5),
    (r"L40S", 362.0, 183.0, 91.6),
    (r"\bL4\b", 121.0, 60.0, 30.3),
    (r"\bA10\b", 125.0, 62.5, 31.2),
    (r"RTX 4090", 165.2, 82.6, 82.6),
    (r"V100S", 130.0, None, 16.4),
    (r"V100.*PCI", 112.0, None, 14.0),
    (r"V100", 125.0, None, 15.7),  # SXM2
    (r"\bT4\b", 65.0, None, 8.1),
]

# torch.compile, measured on this project's 2-core AVX-512 CPU (README, "Training speed"): a
# first compile (empty inductor cache) costs 25-35 s for the tiny preset, 40-90 s for 2m and
# 15m (5-15 s once the cache holds it), and makes a step 1.25x faster in bf16, 1.08x in fp32
# (15m and 2m). The pessimistic ends, so that `--compile auto` compiles only where it surely
# wins: with them it pays after ~7 minutes of bf16 steps, ~20 of fp32. On a GPU compiling costs
# about as much and gains more (kernels fused, fewer launches): the CPU's figures understate it.
COMPILE_SECONDS = 90.0
COMPILE_SPEEDUP = {torch.bfloat16: 1.25, torch.float16: 1.25, torch.float32: 1.08}
COMPILE_DECIDE_AFTER = 2  # eager steps timed before `--compile auto` decides (the first is slow)


@dataclass(frozen=True)
class Peak:
    flops: float  # FLOP/s of one device (or one process's CPU threads)
    source: str  # where the figure comes from, for the log line


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively, so that bf16 autocast trains faster
    than float32: a CUDA GPU of compute capability 8.0 or more (Ampere on; older ones only
    emulate it), or a CPU with AVX-512 BF16 or AMX (the flags of /proc/cpuinfo; Linux x86)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    flags = next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(flags.split())


def flops_per_token(config: ModelConfig, seq_len: int) -> int:
    """Training FLOPs (forward and backward) per token: 6 N + 12 n_layers dim seq_len (see the
    module's docstring for N)."""
    d, kv = config.dim, config.n_kv_heads * config.head_dim
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * config.ffn_dim + 2 * d  # attention, feed-forward, norms
    n = config.n_layers * per_layer + d + config.vocab_size * d  # + the final norm and the head
    return 6 * n + 12 * config.n_layers * config.dim * seq_len


def gpu_peak(name: str, dtype: torch.dtype) -> float | None:
    """The dense peak FLOP/s of the GPU called `name` (torch.cuda.get_device_name) in `dtype`,
    or None for a GPU GPU_PEAKS does not list."""
    for pattern, half, tf32, fp32 in GPU_PEAKS:
        if re.search(pattern, name):
            if dtype in (torch.bfloat16, torch.float16):
                return half * 1e12
            return (tf32 or fp32) * 1e12
    return None


@functools.lru_cache(maxsize=8)
def measure_cpu_peak(dtype: torch.dtype, threads: int, budget_s: float = 0.3) -> float:
    """FLOP/s of the fastest of the square matrix products in `dtype` on `threads` threads that
    fit in about `budget_s` seconds (1024 x 1024, or smaller where `dtype` is slow, as float16
    is on most CPUs); measured once per process and setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best, end, n = 0.0, time.perf_counter() + budget_s, 128
        while True:
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            a @ b  # the first call sets the kernel up
            started = time.perf_counter()
            a @ b
            seconds = time.perf_counter() - started
            best = max(best, 2 * n**3 / seconds)
            if n >= 1024 or time.perf_counter() + 16 * seconds > end:  # the next size takes 8x as long
                break
            n *= 2
        while time.perf_counter() + seconds < end:
            started = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - started))
        return best
    finally:
        torch.set_num_threads(before)


def device_peak(device: torch.device, dtype: torch.dtype, given: float | None) -> Peak | None:
    """The peak MFU is measured against: --peak-flops, the GPU's datasheet, or measured on CPU;
    None on a GPU GPU_PEAKS does not know (then MFU is not logged)."""
    if given is not None:
        return Peak(given, "--peak-flops")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        flops = gpu_peak(name, dtype)
        return Peak(flops, f"{name} datasheet, dense") if flops is not None else None
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return Peak(measure_cpu_peak(dtype, threads), f"measured: a {str(dtype).removeprefix('torch.')} "
                                                      f"matrix product on {threads} thread(s)")
    return None


def compile_pays(remaining_steps: int, step_seconds: float, dtype: torch.dtype) -> bool:
    """`--compile auto`: whether torch.compile saves more time over the steps left than it
    costs, at the pessimistic COMPILE_SPEEDUP and COMPILE_SECONDS, from an eager step's time."""
    return remaining_steps * step_seconds * (1 - 1 / COMPILE_SPEEDUP[dtype]) > COMPILE_SECONDS
