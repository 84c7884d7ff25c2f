"""generation speed on CPU: tokens/s of nonllama's KV-cache decoding against transformers' `generate`.

The same weights in both: a `15m` model with random weights (vocabulary 32000, llama2.c's), and
its Hugging Face copy as `nonllama export --format hf` writes it (config.json, model.safetensors),
loaded with AutoModelForCausalLM. Greedy, a short prompt, 256 new tokens (no EOS stop), fp32.
Each side is timed `--repeats` times, alternating, after one warm-up; the figures are medians of
new tokens / wall time of the whole call (prompt pass included), on one thread (what `nonllama
generate` uses for a model this small) and on torch's default thread count. Both must produce
the same tokens. Ratio: nonllama / transformers at the same thread count (target >= 2).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from nonllama.export import write_hf_model
from nonllama.model import Llama, preset_config


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="15m")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="also time this many threads [default: torch's]")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    torch.manual_seed(0)
    config = preset_config(args.preset, vocab_size=args.vocab, max_seq_len=args.prompt_tokens + args.new_tokens)
    model = Llama(config).eval()
    prompt = torch.cat([torch.tensor([[1]]), torch.randint(3, args.vocab, (1, args.prompt_tokens - 1))], dim=1)
    print(f"preset {args.preset}, vocab {args.vocab}, {model.num_params() / 1e6:.1f}M parameters, greedy, "
          f"prompt {args.prompt_tokens} + {args.new_tokens} new tokens, "
          f"torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        write_hf_model(model, Path(tmp), pad_token_id=3)
        reference = transformers.AutoModelForCausalLM.from_pretrained(tmp).eval()

    def ours(n: int) -> torch.Tensor:
        return model.generate(prompt, n, temperature=0)

    @torch.inference_mode()
    def theirs(n: int) -> torch.Tensor:
        return reference.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                                  eos_token_id=None, pad_token_id=3)

    default_threads = torch.get_num_threads()
    same = True
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        ours(16), theirs(16)  # warm-up
        rates: dict[str, list[float]] = {"nonllama": [], "transformers": []}
        outputs = {}
        for _ in range(args.repeats):
            for name, run in (("nonllama", ours), ("transformers", theirs)):
                started = time.perf_counter()
                outputs[name] = run(args.new_tokens)
                rates[name].append(args.new_tokens / (time.perf_counter() - started))
        mine, hf = (statistics.median(rates[k]) for k in ("nonllama", "transformers"))
        agree = outputs["nonllama"].tolist() == outputs["transformers"].tolist()
        same &= agree
        print(f"{threads} thread(s): nonllama {mine:7.1f} tokens/s, transformers {hf:7.1f} tokens/s, "
              f"x{mine / hf:.2f} (target x2: {'met' if mine >= 2 * hf else 'not met'}), "
              f"same {args.new_tokens} tokens: {'yes' if agree else 'NO'}", flush=True)
    torch.set_num_threads(default_threads)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
