"""`nonllama generate`: options only; the work is in nonllama.generate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from nonllama.cli import app, console


@app.command()
def generate(
    prompts: Annotated[list[str] | None, typer.Argument(help="Prompts, one sample each ('-': one per line of stdin). None: start from BOS.", show_default=False)] = None,
    run: Annotated[Path | None, typer.Option("--run", help="Run directory of `nonllama train` (e.g. work/runs/15m).")] = None,
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", help="A checkpoint file, or a step of the run \\[default: the latest].")] = None,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="tokenizer.model \\[default: the run's copy].")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="Read prompts from this file, one per line (blank lines skipped).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate at most per sample.")] = 256,
    temperature: Annotated[float | None, typer.Option("--temperature", help="Softmax temperature, >= 0; 0 is greedy \\[default: 1.0].", show_default=False)] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Sample from the k most likely tokens only.")] = None,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling: the smallest set of tokens with this much probability; 1 turns it off.")] = 0.9,
    greedy: Annotated[bool, typer.Option("--greedy", help="Always the most likely token (same as --temperature 0).")] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the sampling \\[default: random, printed].")] = None,
    num_samples: Annotated[int, typer.Option("--num-samples", min=1, help="Samples per prompt.")] = 1,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, or auto (cuda when there is one).")] = "auto",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads \\[default: 1 for a model under 50M parameters, else torch's default].")] = None,
    save: Annotated[Path | None, typer.Option("--save", help="Also write prompts and completions to this JSON file; when it already holds them for the same checkpoint, prompts and settings (--seed given, or greedy), print those instead.")] = None,
) -> None:
    """Continue prompts with a trained model, streaming the text to stdout (summary on stderr)."""
    import torch

    from nonllama.generate import (
        Sampling,
        decode_threads,
        find_checkpoint,
        generate,
        load_run,
        make_generator,
        read_prompts,
        sample_settings,
        save_samples,
        saved_samples,
    )

    sampling = Sampling(max_new_tokens, 1.0 if temperature is None else temperature, top_k, top_p, seed)
    sampling.check()
    if greedy:
        if temperature not in (None, 0):  # two answers to one question: refuse rather than pick one
            raise ValueError(f"--greedy and --temperature {temperature:g}: give one (--greedy is --temperature 0)")
        sampling.temperature = 0.0
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    texts = read_prompts(list(prompts or []), file)
    if save is not None and (seed is not None or sampling.temperature <= 0):
        checkpoint_file = find_checkpoint(run, checkpoint)[1]
        saved = saved_samples(save, checkpoint_file, sample_settings(sampling, seed, num_samples), texts)
        if saved is not None:
            console.print(f"[green]generate[/]: up to date ({save} holds these prompts from {checkpoint_file} "
                          "with these settings); the saved samples:", highlight=False, soft_wrap=True)
            for sample in saved["samples"]:
                print(sample["prompt"] + sample["completion"])
            return
    loaded = load_run(run, checkpoint, tokenizer, device)
    torch.set_num_threads(threads or decode_threads(loaded.model, device))
    generator, seed = make_generator(seed, device)
    console.print(f"[bold]generate[/] {loaded.checkpoint} (step {loaded.step}), context {loaded.config.max_seq_len}, "
                  f"{'greedy' if sampling.temperature <= 0 else f'temperature {sampling.temperature:g}'}"
                  f"{f', top-k {top_k}' if top_k else ''}{f', top-p {top_p:g}' if top_p < 1 and sampling.temperature > 0 else ''}"
                  f"{f', seed {seed}' if sampling.temperature > 0 else ''}, {torch.get_num_threads()} thread(s)",
                  highlight=False, soft_wrap=True)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    total, samples = len(texts) * num_samples, []
    for i, prompt in enumerate(texts):
        for j in range(num_samples):
            if total > 1:
                console.rule(f"prompt {i + 1}/{len(texts)}, sample {j + 1}/{num_samples}", style="dim")
            write(prompt)
            result = generate(loaded.model, loaded.processor, prompt, sampling, generator, on_text=write)
            write("\n")
            samples.append({"prompt": prompt, "completion": result.text, "tokens": len(result.ids), "stop": result.stop})
            stop = {"eos": "EOS", "max_new_tokens": "--max-new-tokens",
                    "context": f"the context limit ({loaded.config.max_seq_len} tokens)"}[result.stop]
            console.print(f"[dim]{len(result.ids)} tokens in {result.prefill_s + result.decode_s:.2f}s, "
                          f"{result.tokens_per_s:.1f} tokens/s (prompt {len(result.prompt_ids)} tokens in "
                          f"{result.prefill_s * 1000:.0f} ms); stopped at {stop}[/]", highlight=False, soft_wrap=True)
    if save is not None:
        save_samples(save, loaded.checkpoint, loaded.step, sample_settings(sampling, seed, num_samples), texts, samples)
        console.print(f"[green]generate[/]: {len(samples)} sample(s) saved to {save}", highlight=False, soft_wrap=True)
