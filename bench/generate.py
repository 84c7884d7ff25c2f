"""generation speed on CPU: tokens/s of nonllama's decoding against transformers' `generate` (and,
given the binaries, llama2.c's run.c and runq.c).

The same weights everywhere: a `15m` model with random weights (vocabulary 32000, llama2.c's),
its Hugging Face copy as `nonllama export --format hf` writes it (config.json,
model.safetensors), loaded with AutoModelForCausalLM, and with `--run-c` its llama2.c copy as
`nonllama export --format llama2c` writes it (model.bin version 0, and version 2 int8 for runq).
Greedy, a short prompt, 256 new tokens (no EOS stop). Ours, four ways, all through
`Llama.generate`:

- kernel fp32: the C++ decoding step (nonllama/kernels), float32 weights as trained;
- kernel int8: the same with `quantize="int8"` (runq.c's scheme: int8 weights per group of 64,
  int8 activations, int32 sums);
- torch: the torch decoding path (what runs without the kernel: NONLLAMA_KERNELS=0);
- transformers: `generate` of the Hugging Face copy, fp32.

Each is timed `--repeats` times, alternating, after one warm-up; the figures are medians of new
tokens / wall time of the whole call (prompt pass included), on one thread (what `nonllama
generate` uses for a model this small) and on torch's default thread count. The float32 ones
must produce the same tokens (int8: how many of the first tokens agree is printed). Ratios:
ours / transformers at the same thread count (target >= 2), and / run.c, runq.c.

--run-c PATH: llama2.c's run.c built by the user (`make runomp` in a llama2.c checkout builds
`run` and `runq`, OpenMP, -march=native); a `runq` beside it is timed too (or --runq PATH).
Each runs `PATH model.bin -t 0 -n STEPS -z tokenizer.bin -i PROMPT` with OMP_NUM_THREADS set to
the thread count, and its own "achieved tok/s" is read (run.c times every step after the first,
the prompt's included: it has no batched prompt pass). The prompt: run.c stops at BOS (id 1),
and a random model with a tied embedding tends to repeat the last token it reads, which from
BOS alone is BOS; after a few ordinary tokens it runs the whole length.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from nonllama import kernels
from nonllama.export import BYTE, CONTROL, NORMAL, UNKNOWN, SpmModel, export_llama2c, write_hf_model
from nonllama.model import Llama, preset_config

RUNC_PROMPT = "t7 t9 t11"  # three pieces of the vocabulary `spm_model` makes


def spm_model(vocab: int) -> SpmModel:
    """A stand-in SentencePiece vocabulary of `vocab` pieces for the llama2.c export: unk, BOS,
    EOS, the 256 byte pieces at 3.. (where run.c's byte fallback looks), then "▁t0", "▁t1", ..."""
    pieces = [("<unk>", 0.0, UNKNOWN), ("<s>", 0.0, CONTROL), ("</s>", 0.0, CONTROL)]
    pieces += [(f"<0x{b:02X}>", 0.0, BYTE) for b in range(256)]
    pieces.append(("\u2581", -1.0, NORMAL))
    pieces += [(f"\u2581t{i}", -2.0 - i, NORMAL) for i in range(vocab - len(pieces))]
    return SpmModel(pieces, byte_fallback=True)


def time_llama2c(binary: Path, model: Path, tokenizer: Path, steps: int, threads: int) -> tuple[float, bool]:
    """(run.c's achieved tok/s, whether it ran the whole length) for one run. Every piece of
    `spm_model` prints as at least one character, so fewer characters than steps means it
    stopped early (at BOS); its rate is still a rate, over fewer tokens."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([str(binary), str(model), "-t", "0", "-n", str(steps), "-z", str(tokenizer),
                           "-i", RUNC_PROMPT], capture_output=True, text=True, env=env, timeout=600)
    found = re.search(r"achieved tok/s:\s*([\d.]+)", done.stderr + done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"{binary} failed ({done.returncode}): {(done.stderr or done.stdout)[-500:]}")
    return float(found.group(1)), len(done.stdout) >= steps


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="15m")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="also time this many threads [default: torch's]")
    parser.add_argument("--run-c", type=Path, default=None, help="llama2.c's run binary (make runomp) to time too")
    parser.add_argument("--runq", type=Path, default=None, help="llama2.c's runq binary [default: runq beside --run-c]")
    parser.add_argument("--no-transformers", action="store_true", help="skip transformers (ratios against run.c only)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runq = args.runq or (args.run_c.with_name("runq") if args.run_c else None)
    if runq is not None and not runq.is_file():
        if args.runq:
            parser.error(f"--runq {runq}: no such file")
        runq = None
    if args.run_c is not None and not args.run_c.is_file():
        parser.error(f"--run-c {args.run_c}: no such file")

    torch.manual_seed(0)
    config = preset_config(args.preset, vocab_size=args.vocab, max_seq_len=args.prompt_tokens + args.new_tokens)
    model = Llama(config).eval()
    prompt = torch.cat([torch.tensor([[1]]), torch.randint(3, args.vocab, (1, args.prompt_tokens - 1))], dim=1)
    module = kernels.load()
    versions = f"torch {torch.__version__}"
    reference = None
    tmp = tempfile.TemporaryDirectory()
    if not args.no_transformers:
        import transformers

        versions += f", transformers {transformers.__version__}"
        write_hf_model(model, Path(tmp.name) / "hf", pad_token_id=3)
        reference = transformers.AutoModelForCausalLM.from_pretrained(Path(tmp.name) / "hf").eval()
    print(f"preset {args.preset}, vocab {args.vocab}, {model.num_params() / 1e6:.1f}M parameters, greedy, "
          f"prompt {args.prompt_tokens} + {args.new_tokens} new tokens, {versions}, kernel: "
          f"{module.build_info() if module else 'NOT BUILT (' + str(kernels.problem) + ')'}", flush=True)
    llama2c: dict[str, tuple[Path, Path, Path]] = {}
    if args.run_c is not None:
        spm = spm_model(args.vocab)
        out = Path(tmp.name)
        export_llama2c(model, spm, out / "model.bin", out / "tokenizer.bin")
        llama2c["run.c"] = (args.run_c, out / "model.bin", out / "tokenizer.bin")
        if runq is not None:
            export_llama2c(model, spm, out / "model-int8.bin", out / "tokenizer-int8.bin", quantize="int8")
            llama2c["runq.c"] = (runq, out / "model-int8.bin", out / "tokenizer-int8.bin")

    def ours(quantize: str, kernel: bool) -> Callable[[int], torch.Tensor]:
        def run(n: int) -> torch.Tensor:
            previous = os.environ.get(kernels.ENV)
            os.environ[kernels.ENV] = "1" if kernel else "0"
            try:
                return model.generate(prompt, n, temperature=0, quantize=quantize)
            finally:
                if previous is None:
                    del os.environ[kernels.ENV]
                else:
                    os.environ[kernels.ENV] = previous
        return run

    @torch.inference_mode()
    def theirs(n: int) -> torch.Tensor:
        return reference.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                                  eos_token_id=None, pad_token_id=3)

    runners: dict[str, Callable[[int], torch.Tensor]] = {}
    if module is not None:
        runners["kernel fp32"] = ours("none", True)
        runners["kernel int8"] = ours("int8", True)
    runners["torch"] = ours("none", False)
    if reference is not None:
        runners["transformers"] = theirs

    default_threads = torch.get_num_threads()
    same = True
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for run in runners.values():
            run(16)  # warm-up (and the decoders' weights packed once)
        rates: dict[str, list[float]] = {name: [] for name in [*runners, *llama2c]}
        outputs: dict[str, torch.Tensor] = {}
        for _ in range(args.repeats):
            for name, run in runners.items():
                started = time.perf_counter()
                outputs[name] = run(args.new_tokens)
                rates[name].append(args.new_tokens / (time.perf_counter() - started))
            for name, (binary, bin_file, tokenizer) in llama2c.items():
                rate, whole = time_llama2c(binary, bin_file, tokenizer, args.prompt_tokens + args.new_tokens, threads)
                if not whole:
                    print(f"  note: {name} stopped early (at BOS): its rate is over fewer tokens", flush=True)
                rates[name].append(rate)
        median = {name: statistics.median(r) for name, r in rates.items()}
        fp32 = [name for name in ("kernel fp32", "torch", "transformers") if name in outputs]
        agree = all(outputs[name].tolist() == outputs[fp32[0]].tolist() for name in fp32)
        same &= agree
        line = f"{threads} thread(s): " + ", ".join(f"{name} {rate:7.1f}" for name, rate in median.items()) + " tokens/s"
        print(line, flush=True)
        for base in ("transformers", *llama2c):
            if base in median:
                ratios = ", ".join(f"{name} x{median[name] / median[base]:.2f}" for name in runners if name != base)
                target = ""
                if base == "transformers" and "kernel fp32" in median:
                    target = f" (target x2: {'met' if median['kernel fp32'] >= 2 * median[base] else 'not met'})"
                print(f"  against {base}: {ratios}{target}", flush=True)
        if "kernel int8" in outputs:
            new_int8, new_fp32 = outputs["kernel int8"][0, args.prompt_tokens:], outputs[fp32[0]][0, args.prompt_tokens:]
            agreeing = int((new_int8 == new_fp32).int().cumprod(0).sum())
            print(f"  same {args.new_tokens} tokens ({', '.join(fp32)}): {'yes' if agree else 'NO'}; "
                  f"int8's first {agreeing} agree with fp32's", flush=True)
        else:
            print(f"  same {args.new_tokens} tokens ({', '.join(fp32)}): {'yes' if agree else 'NO'}", flush=True)
    torch.set_num_threads(default_threads)
    tmp.cleanup()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
