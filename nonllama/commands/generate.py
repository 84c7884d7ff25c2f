"""`nonllama generate`: options only; the work is in nonllama.generate."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

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
    num_samples: Annotated[int, typer.Option("--num-samples", min=1, help="Samples per prompt, decoded together as the rows of one batch (each printed when it and those before it are done).")] = 1,
    quantize: Annotated[str, typer.Option("--quantize", help="Decoder weights: none (float32, as trained) or int8 (llama2.c's runq.c scheme: groups of 64 with a float scale each; ~4x fewer bytes read per token, faster on CPU).")] = "none",
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, or auto (cuda when there is one).")] = "auto",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads \\[default: 1 for a model under 50M parameters, else torch's default].")] = None,
    save: Annotated[Path | None, typer.Option("--save", help="Also write prompts and completions to this JSON file; when it already holds them for the same checkpoint, prompts and settings (--seed given, or greedy), print those instead.")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Talk to a run trained with `nonllama sft`: one message per line, the reply streamed, history kept (/reset, /exit).")] = False,
    system: Annotated[str | None, typer.Option("--system", help="--chat: the system message that starts the conversation (with --input: of each conversation without one).")] = None,
    input_file: Annotated[Path | None, typer.Option("--input", help='--chat without a terminal: a JSON-lines file, one {"messages": [...]} per line, each ending with a user message.')] = None,
    output_file: Annotated[Path | None, typer.Option("--output", help="--chat --input: where the conversations go, each with the reply appended (JSON lines).")] = None,
) -> None:
    """Continue prompts with a trained model, streaming the text to stdout (summary on stderr).
    With --chat, talk to it (or answer the conversations of --input)."""
    import torch

    from nonllama.generate import (
        Sampling,
        decode_threads,
        encode_prompt,
        find_checkpoint,
        generate,
        generate_rows,
        load_run,
        make_generator,
        read_prompts,
        sample_settings,
        save_samples,
        saved_samples,
    )

    sampling = Sampling(max_new_tokens, 1.0 if temperature is None else temperature, top_k, top_p, seed, quantize)
    sampling.check()
    if greedy:
        if temperature not in (None, 0):  # two answers to one question: refuse rather than pick one
            raise ValueError(f"--greedy and --temperature {temperature:g}: give one (--greedy is --temperature 0)")
        sampling.temperature = 0.0
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if chat or system is not None or input_file is not None or output_file is not None:
        _chat(run, checkpoint, tokenizer, device, threads, sampling, seed, prompts=list(prompts or []), file=file,
              save=save, num_samples=num_samples, chat=chat, system=system, input_file=input_file,
              output_file=output_file)
        return
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
                  f"{f', seed {seed}' if sampling.temperature > 0 else ''}"
                  f"{f', {quantize} weights' if quantize != 'none' else ''}, {torch.get_num_threads()} thread(s)",
                  highlight=False, soft_wrap=True)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def stopped(result) -> str:
        return {"eos": "EOS", "max_new_tokens": "--max-new-tokens",
                "context": f"the context limit ({loaded.config.max_seq_len} tokens)"}[result.stop]

    samples = []
    for i, prompt in enumerate(texts):
        if num_samples == 1:  # streamed as it comes
            if len(texts) > 1:
                console.rule(f"prompt {i + 1}/{len(texts)}, sample 1/1", style="dim")
            write(prompt)
            result = generate(loaded.model, loaded.processor, prompt, sampling, generator, on_text=write)
            write("\n")
            samples.append({"prompt": prompt, "completion": result.text, "tokens": len(result.ids), "stop": result.stop})
            console.print(f"[dim]{len(result.ids)} tokens in {result.prefill_s + result.decode_s:.2f}s, "
                          f"{result.tokens_per_s:.1f} tokens/s (prompt {len(result.prompt_ids)} tokens in "
                          f"{result.prefill_s * 1000:.0f} ms); stopped at {stopped(result)}[/]", highlight=False,
                          soft_wrap=True)
            continue
        # the samples of a prompt are the rows of one batch; each is printed once it and the
        # samples before it are done, so the output reads in order while later rows go on
        def show(row: int, r, i=i, prompt=prompt) -> None:
            console.rule(f"prompt {i + 1}/{len(texts)}, sample {row + 1}/{num_samples}", style="dim")
            write(prompt + r.text + "\n")
            console.print(f"[dim]{len(r.ids)} tokens; stopped at {stopped(r)}[/]", highlight=False, soft_wrap=True)

        prompt_ids = encode_prompt(loaded.processor, prompt, loaded.config.max_seq_len)
        results = generate_rows(loaded.model, loaded.processor, prompt_ids, sampling, num_samples, generator,
                                on_done=_in_order(show))
        samples += [{"prompt": prompt, "completion": r.text, "tokens": len(r.ids), "stop": r.stop} for r in results]
        tokens = sum(len(r.ids) for r in results)
        seconds = max(r.prefill_s + r.decode_s for r in results)
        console.print(f"[dim]{num_samples} samples in one batch: {tokens} tokens in {seconds:.2f}s, "
                      f"{tokens / seconds if seconds > 0 else 0:.1f} tokens/s (prompt {len(prompt_ids)} tokens in "
                      f"{results[0].prefill_s * 1000:.0f} ms)[/]", highlight=False, soft_wrap=True)
    if save is not None:
        save_samples(save, loaded.checkpoint, loaded.step, sample_settings(sampling, seed, num_samples), texts, samples)
        console.print(f"[green]generate[/]: {len(samples)} sample(s) saved to {save}", highlight=False, soft_wrap=True)


def _in_order(show: Callable[[int, Any], None]) -> Callable[[int, Any], None]:
    """An `on_done` for generate_rows that calls show(row, generation) row after row, each as
    soon as it and the rows before it are done."""
    done: dict[int, Any] = {}
    shown = 0

    def on_done(row: int, result: Any) -> None:
        nonlocal shown
        done[row] = result
        while shown in done:
            show(shown, done.pop(shown))
            shown += 1

    return on_done


def _chat(run: Path | None, checkpoint: str | None, tokenizer: Path | None, device: str, threads: int | None,
          sampling, seed: int | None, *, prompts: list[str], file: Path | None, save: Path | None, num_samples: int,
          chat: bool, system: str | None, input_file: Path | None, output_file: Path | None) -> None:
    """`generate --chat`: the interactive loop on stdin, or --input to --output."""
    import torch

    from nonllama.chat import chat_ids
    from nonllama.generate import (
        CHAT_HELP,
        ChatSession,
        decode_threads,
        load_run,
        make_generator,
        read_conversations,
        reply_to_conversations,
    )
    from nonllama.pipeline.io import atomic_write_text

    if not chat:
        given = "--system" if system is not None else "--input" if input_file is not None else "--output"
        raise ValueError(f"{given} goes with --chat (talking to a run trained with `nonllama sft`)")
    for given, what in ((prompts, "prompts"), (file, "--file"), (save, "--save"), (num_samples != 1, "--num-samples")):
        if given:
            raise ValueError(f"--chat and {what}: --chat reads its messages from stdin (or --input), one reply each")
    if (input_file is None) != (output_file is None):
        raise ValueError("--input and --output go together: the conversations to reply to, and where the replies go"
                         if input_file is not None else "--output needs --input (the conversations to reply to)")
    if input_file is not None and output_file is not None and output_file.resolve() == input_file.resolve():
        raise ValueError(f"--output {output_file}: the same file as --input; write the replies elsewhere")
    if system is not None and not system.strip():
        raise ValueError("--system: empty; leave it out for no system message")
    rows = read_conversations(input_file, system) if input_file is not None else None  # checked before loading

    loaded = load_run(run, checkpoint, tokenizer, device)
    where = f"--tokenizer {tokenizer}" if tokenizer is not None else f"--run {loaded.run} (its {loaded.tokenizer.name})"
    ids = chat_ids(loaded.processor, where)
    torch.set_num_threads(threads or decode_threads(loaded.model, device))
    generator, seed = make_generator(seed, device)
    console.print(f"[bold]chat[/] {loaded.checkpoint} (step {loaded.step}), context {loaded.config.max_seq_len}, "
                  f"{'greedy' if sampling.temperature <= 0 else f'temperature {sampling.temperature:g}'}"
                  f"{f', seed {seed}' if sampling.temperature > 0 else ''}", highlight=False, soft_wrap=True)

    def note(text: str) -> None:
        console.print(f"[dim]{escape(text)}[/]", highlight=False, soft_wrap=True)

    if rows is not None and output_file is not None:
        def on_reply(i: int, result, dropped: int) -> None:
            cut = f"; dropped its oldest {dropped} turn(s) to fit the context" if dropped else ""
            note(f"conversation {i + 1}/{len(rows)}: {len(result.ids)} tokens, stopped at {result.stop}{cut}")

        replies = reply_to_conversations(loaded.model, loaded.processor, ids, rows, sampling, generator, on_reply)
        atomic_write_text(output_file, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in replies))
        console.print(f"[green]chat[/]: {len(replies)} replies written to {output_file}", highlight=False,
                      soft_wrap=True)
        return

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    note(CHAT_HELP)
    ChatSession(loaded.model, loaded.processor, ids, sampling, generator, system, write, note).run(sys.stdin)
