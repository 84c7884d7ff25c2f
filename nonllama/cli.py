"""The `nonllama` command: one subcommand per stage. Thin: parse options, call the stage, print."""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import shutil
import sys
import tomllib
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nonllama import __version__
from nonllama.pipeline.executors import Executor
from nonllama.pipeline.io import StageError, StageRun
from nonllama.pipeline.records import SourceError

# Typer's rich help lays options out in four columns that a terminal under ~100 columns squeezes
# until names and defaults are cut ("<workdir>/packe…"); click's plain layout wraps the help
# text under one name column instead. Help texts escape "[" for rich markup ("\\["): plain help
# shows them unescaped (_plain_help).
RICH_HELP_COLUMNS = 100
RICH_HELP = shutil.get_terminal_size((80, 24)).columns >= RICH_HELP_COLUMNS

app = typer.Typer(
    name="nonllama",
    rich_markup_mode="rich" if RICH_HELP else None,
    help="From raw text to a small Llama-style model: "
    "download -> normalize -> filter -> dedup -> train-tokenizer -> pack -> train -> generate; "
    "then sft to fine-tune it on conversations and generate --chat to talk to it; "
    "eval scores runs on any text (bits per byte per source).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


# Errors a person can act on: printed as one line, exit code 2. Anything else is a bug of ours:
# one line too, exit code 1, and `--debug` (or NONLLAMA_DEBUG=1) shows the traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (StageError, SourceError, ValueError, OSError)
_ERRNO_HINTS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.ENOTDIR: "a part of this path is a file, not a directory",
    errno.EISDIR: "is a directory, a file was expected",
    errno.ELOOP: "symbolic link loop",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
}
_debug = os.environ.get("NONLLAMA_DEBUG") == "1"


def describe_error(error: BaseException) -> str:
    """One line saying what went wrong and where (the path of an OSError, the option of a bad value)."""
    if isinstance(error, OSError) and error.errno is not None:  # raised by the system, about a path
        what = _ERRNO_HINTS.get(error.errno) or error.strerror or type(error).__name__
        where = [str(f) for f in (error.filename, error.filename2) if f is not None]
        return f"{' -> '.join(where)}: {what}" if where else f"{what} ({error})"
    text = " ".join(str(error).split())  # one line whatever the message held
    return text or type(error).__name__


def report_errors(fn: F) -> F:
    """Run a command; turn what it raises into one red line and an exit code, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.ClickException):
            raise
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: nothing half-written is left; rerun to complete")
            raise typer.Exit(130) from None
        except BaseException as e:  # noqa: BLE001 - the one place every error of a command ends up
            if isinstance(e, SystemExit):
                raise
            if _debug:
                console.print_exception()
            user_error = isinstance(e, USER_ERRORS)
            prefix = "error" if user_error else f"internal error ({type(e).__name__}, please report it)"
            hint = "" if user_error or _debug else "; rerun with --debug for the traceback"
            # soft_wrap: no line breaks inside a path or an option name; the message stays one line
            console.print(f"[bold red]{prefix}:[/] {escape(describe_error(e))}{hint}", highlight=False,
                          soft_wrap=True)
            raise typer.Exit(2 if user_error else 1) from None

    return wrapper  # type: ignore[return-value]


def version_callback(value: bool) -> None:
    if value:
        print(f"nonllama {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an error (also NONLLAMA_DEBUG=1).")
    ] = False,
) -> None:
    """nonllama: raw text in, a small Llama you trained yourself out."""
    global _debug
    _debug = debug or os.environ.get("NONLLAMA_DEBUG") == "1"


# --------------------------------------------------------------------------- shared options

WorkdirOpt = Annotated[Path, typer.Option("--workdir", help="Directory holding every stage's output.")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, help="Processes to spread shards over.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo the stage even if it is up to date.")]
ExecutorOpt = Annotated[str, typer.Option(
    "--executor", help="Where tasks run: local (--workers processes here) or ray (a Ray cluster: --ray-address, "
    "else RAY_ADDRESS, else a Ray instance started here with --workers CPUs; absolute paths only).")]
RayAddressOpt = Annotated[str | None, typer.Option(
    "--ray-address", help="With --executor ray: the cluster's address (e.g. 10.0.0.5:6379) \\[default: RAY_ADDRESS].")]
VerifyInputOpt = Annotated[bool, typer.Option(
    "--verify-input", help="Compare every input part's checksum with its manifest before starting "
    "(always done when the input is under 512 MB; sizes and row counts are always compared).")]


@contextmanager
def executor_for(kind: str, workers: int, ray_address: str | None) -> Iterator[Executor]:
    """The executor a data stage's options ask for, closed (a Ray instance started here stopped) after."""
    from nonllama.pipeline.executors import make_executor

    executor = make_executor(kind, workers=workers, ray_address=ray_address, console=console)
    try:
        yield executor
    finally:
        executor.close()


def stage_dirs(workdir: Path, stage: str, input_dir: Path | None, output_dir: Path | None) -> tuple[Path | None, Path]:
    """-i/-o default to the directories of the stage it reads and of `stage` under --workdir
    (the funnel's order and directory names: nonllama.pipeline.stages)."""
    from nonllama.pipeline import stages

    reads = stages.stage(stage).reads
    return (
        input_dir if input_dir is not None else (stages.directory(workdir, reads) if reads else None),
        output_dir if output_dir is not None else stages.directory(workdir, stage),
    )


def load_stage_config(path: Path | None, section: str) -> dict:
    """The `[section]` table of a TOML config file (or the whole file if it has no sections)."""
    if path is None:
        return {}
    if not path.exists():
        raise StageError(f"--config {path}: no such file")
    if not path.is_file():
        raise StageError(f"--config {path}: not a file (a TOML file was expected)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise StageError(f"--config {path}: not a valid TOML file ({e})") from None
    if section in data and isinstance(data[section], dict):
        return data[section]
    for other in {section.replace("-", "_"), section.replace("_", "-")} - {section}:
        if isinstance(data.get(other), dict):  # [train_tokenizer] for [train-tokenizer]: say so, do not ignore it
            raise StageError(f"--config {path}: its table [{other}] is read as [{section}]: rename it")
    if any(isinstance(v, dict) for v in data.values()):
        return {}  # a pipeline-wide file without a table for this stage
    return data


# --------------------------------------------------------------------------- stage configs
#
# Each data stage has one config dataclass, the single source of its defaults. Its command's
# options default to None ("not given") and show the dataclass's default in their help
# (`config_opt`); the effective config is the dataclass defaults < the stage's TOML table
# (`--config FILE`) < the options given (`resolve_config`); `--show-config` prints it as a TOML
# table (`show_config`), which `--config` reads back.

C = TypeVar("C")
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def config_opt(*names: str, help: str, default: Any = None, **kwargs: Any) -> Any:
    """A Typer option of a stage config: None when not given; `default` (the dataclass's, or a
    phrase such as "optimal for --threshold") shown in the help. `kwargs` go to typer.Option."""
    if isinstance(default, bool) and "/" in names[0]:  # --exact/--no-exact: name the default's flag
        on, off = names[0].split("/", 1)
        default = on if default else off
    elif isinstance(default, list | tuple):
        default = ",".join(map(str, default)) or "none"
    shown = f" \\[default: {default}]" if default is not None else ""  # \[: not rich markup
    return typer.Option(*names, help=help + shown, show_default=False, **kwargs)


def _convert(hint: Any, value: Any) -> tuple[bool, Any]:
    """(whether a TOML value fits a field's type, the value as the field holds it)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is not type(None):
                ok, converted = _convert(arg, value)
                if ok:
                    return True, converted
        return False, value
    if origin in (list, tuple):
        if not isinstance(value, list):
            return False, value
        items = [_convert(args[0] if args else Any, v) for v in value]
        if not all(ok for ok, _ in items):
            return False, value
        return True, origin(v for _, v in items)
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:  # nan and inf are numbers: the dataclass's validation says where they are not allowed
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    return True, value  # a type this check does not know: the dataclass's validation judges it


def _expected(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in args if a is not type(None))
    if origin in (list, tuple):
        item = _expected(args[0]) if args else "values"
        return "a list of " + {"an integer": "integers", "a number": "numbers", "a string": "strings",
                               "true or false": "true/false values"}.get(item, item)
    return _EXPECTED.get(hint, getattr(hint, "__name__", str(hint)))


def _did_you_mean(key: str, value: Any, valid: dict[str, Any]) -> str:
    """' (did you mean 'x'?)' for the closest key holding the same kind of value, or ''."""
    import difflib

    ok_kind = [name for name, hint in valid.items() if _convert(hint, value)[0]]
    close = difflib.get_close_matches(key, ok_kind or list(valid), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def config_table(cls: type, section: str, table: dict, convert: dict[str, Callable[[Any], Any]] | None = None) -> dict:
    """The values of a stage's TOML table, checked against the fields of its config dataclass
    `cls`: an unknown key or a value of the wrong type is a ValueError naming it.

    `convert`: per key, a function applied to the TOML value first (`sample_bytes = "500M"`).
    """
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation this cannot resolve: the dataclass checks its values
        hints = {}
    valid = {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in table if k not in valid]
    if unknown:
        named = ", ".join(f"{k!r}" + _did_you_mean(str(k), table[k], valid) for k in unknown)
        raise ValueError(f"unknown {section} config key{'s' if len(unknown) > 1 else ''} {named}; "
                         f"`nonllama {section} --show-config` lists every key")
    values = {}
    for key, value in table.items():
        if convert and key in convert:
            value = convert[key](value)
        ok, value = _convert(valid[key], value)
        if not ok:
            raise ValueError(f"{section} config {key!r} = {toml_value(value)}: expected {_expected(valid[key])}")
        values[key] = value
    return values


def resolve_config(cls: type[C], section: str, config_file: Path | None, given: dict[str, Any], *,
                   convert: dict[str, Callable[[Any], Any]] | None = None,
                   required: dict[str, Any] | None = None) -> C:
    """A stage's effective config: the dataclass `cls`'s defaults < the `[section]` table of
    `config_file` (`config_table`) < the options `given` (None: not given), then validated by the
    dataclass (its `validate()`, and whatever its constructor checks).

    `required`: values for the fields without a default, used when neither the table nor the
    options give them.
    """
    table = config_table(cls, section, load_stage_config(config_file, section), convert)
    options = {k: v for k, v in given.items() if v is not None}
    config = cls(**{**(required or {}), **table, **options})
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def show_config(section: str, config: Any) -> None:
    """--show-config: the effective config, as the TOML table `--config` reads."""
    print_config(section, dataclasses.asdict(config))


def print_notices(run: StageRun, stage: str) -> None:
    for notice in run.notices:
        console.print(f"[yellow]{stage}[/]: {notice}", highlight=False, soft_wrap=True)


def print_summary(run: StageRun, stage: str) -> None:
    m = run.manifest
    print_notices(run, stage)
    if run.up_to_date:
        console.print(f"[green]{stage}[/]: up to date ({run.output_dir}); --force to redo")
        return
    table = Table(title=f"{stage} -> {run.output_dir}", title_justify="left")
    table.add_column("source")
    table.add_column("docs in", justify="right")
    table.add_column("docs kept", justify="right")
    table.add_column("chars in", justify="right")
    table.add_column("chars kept", justify="right")
    for source, v in m.get("per_source", {}).items():
        table.add_row(
            source,
            f"{v.get('rows_in', 0):,}",
            f"{v.get('rows_out', 0):,}",
            f"{v.get('chars_in', 0):,}",
            f"{v.get('chars_out', 0):,}",
        )
    table.add_row(
        "[bold]total",
        f"[bold]{m['rows_in']:,}",
        f"[bold]{m['rows_out']:,}",
        f"[bold]{m['chars_in']:,}",
        f"[bold]{m['chars_out']:,}",
    )
    console.print(table)
    if m.get("drop_reasons"):
        by_source = m.get("drop_reasons_per_source", {})
        shown_sources = list(by_source) if 1 < len(by_source) <= 8 else []
        reasons = Table(title="removed", title_justify="left")
        reasons.add_column("reason")
        reasons.add_column("docs", justify="right")
        reasons.add_column("share of input", justify="right")
        for source in shown_sources:
            reasons.add_column(source, justify="right")
        for reason, n in m["drop_reasons"].items():
            per_source = [f"{by_source[s].get(reason, 0):,}" for s in shown_sources]
            reasons.add_row(reason, f"{n:,}", f"{n / max(m['rows_in'], 1):.2%}", *per_source)
        console.print(reasons)
    for key, value in m.get("stage_counts", {}).items():
        console.print(f"{key.replace('_', ' ')}: {value:,}")
    where = f" (see {run.output_dir / m['side_dir']})" if m.get("side_dir") else ""
    if m.get("quarantine") and m.get("quarantined"):
        where = f" (see {run.output_dir / m['quarantine']})"
    for entry in m.get("skipped_files", []):  # "path: why"
        console.print(f"[yellow]skipped[/] {entry}", highlight=False, soft_wrap=True)
    console.print(
        f"[green]{stage}[/]: {m['rows_out']:,} of {m['rows_in']:,} documents kept, "
        f"{m['rows_removed']:,} removed{where}, {m['wall_time_s']:.1f}s"
    )


def toml_value(value: Any) -> str:
    """A value as TOML writes it (a string quoted and escaped)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
        return '"' + "".join(
            escapes.get(ch) or (f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch) for ch in value
        ) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def print_config(section: str, values: dict) -> None:
    """Print a stage's effective config as a TOML table (what --show-config shows). TOML has no
    null: a value that is not set is a comment."""
    print(f"[{section}]")
    for key, value in values.items():
        print(f"# {key}: not set" if value is None else f"{key} = {toml_value(value)}")


def _register_commands() -> None:
    """Each stage's command lives in nonllama/commands/<stage>.py; importing it registers it."""
    import importlib
    import pkgutil

    import nonllama.commands

    for module in sorted(pkgutil.iter_modules(nonllama.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"nonllama.commands.{module.name}")
    for command in app.registered_commands:  # one error handler for every command
        if not RICH_HELP:
            _plain_help(command.callback)
        command.callback = report_errors(command.callback)


def _plain_help(callback: Callable[..., Any]) -> None:
    """Unescape "\\[" in the help of a command's options and arguments, for click's plain help."""
    # the annotations are strings (PEP 563) that every evaluation turns into new objects: keep
    # the evaluated ones, edited, for Typer to read
    hints = typing.get_type_hints(callback, include_extras=True)
    for hint in hints.values():
        for info in getattr(hint, "__metadata__", ()):
            if isinstance(getattr(info, "help", None), str):
                info.help = info.help.replace("\\[", "[")
    callback.__annotations__.update(hints)


_register_commands()


def run() -> None:  # pragma: no cover - console script entry for `python -m nonllama`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
