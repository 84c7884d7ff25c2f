"""Stage configs through the CLI: for download, normalize, filter, dedup and train-tokenizer, the
effective config is the dataclass defaults < the stage's TOML table (--config) < the options given;
--show-config prints it (as TOML that --config reads back); an unknown key or a bad value is refused
in one line naming it; the help shows the dataclass's defaults."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import pytest

from nonllama.pipeline.dedup import DedupConfig
from nonllama.pipeline.download import DownloadConfig
from nonllama.pipeline.filter import FilterConfig
from nonllama.pipeline.io import read_manifest
from nonllama.pipeline.normalize import NormalizeConfig
from nonllama.pipeline.tokenizer import TokenizerConfig

# command, its table, (a TOML line, the option that overrides it), and what --show-config then says
CASES = {
    "download": ("download", ('part_rows = 200', ["--part-rows", "300"]), ("part_rows = 200", "part_rows = 300")),
    "filter": ("filter", ('languages = ["en"]', ["--languages", "zh,ja"]),
               ('languages = ["en"]', 'languages = ["zh", "ja"]')),
    "dedup": ("dedup", ("threshold = 0.7", ["--threshold", "0.9"]), ("threshold = 0.7", "threshold = 0.9")),
    "train-tokenizer": ("train-tokenizer", ("vocab_size = 3000", ["--vocab-size", "4000"]),
                        ("vocab_size = 3000", "vocab_size = 4000")),
}
# a second pair each: a boolean switched by the table and switched back by the --no-... option
SWITCHES = {
    "download": ("strict = true", "--no-strict", "strict = false"),
    "filter": ("stats_only = true", "--no-stats-only", "stats_only = false"),
    "dedup": ("paragraphs = true", "--no-paragraphs", "paragraphs = false"),
}
COMMANDS = ["download", "normalize", "filter", "dedup", "train-tokenizer"]
TABLES = {"download": "download", "normalize": "normalize", "filter": "filter", "dedup": "dedup",
          "train-tokenizer": "train-tokenizer"}


def one_line_error(result) -> str:
    out = result.output.strip()
    assert result.exit_code == 2, out
    assert "\n" not in out and out.startswith("error:") and "Traceback" not in out, out
    return out


def write(tmp_path, table: str, body: str):
    path = tmp_path / "nonllama.toml"
    path.write_text(f"[{table}]\n{body}\n", encoding="utf-8")
    return path


def shown(cli, command: str, *args) -> dict:
    """--show-config's output, parsed as TOML: the table of the command."""
    out = cli(command, *args, "--show-config").stdout
    data = tomllib.loads(out)
    assert list(data) == [TABLES[command]], out
    return data[TABLES[command]]


@pytest.mark.parametrize("command", list(CASES))
def test_the_table_sets_a_value_and_the_option_overrides_it(tmp_path, cli, command):
    table, (line, option), (from_table, from_option) = CASES[command]
    config = write(tmp_path, table, line)
    out = cli(command, "--config", config, "--show-config").stdout
    assert from_table in out.splitlines(), out
    out = cli(command, "--config", config, *option, "--show-config").stdout
    assert from_option in out.splitlines(), out
    if command in SWITCHES:
        line, option, back = SWITCHES[command]
        config = write(tmp_path, table, line)
        assert line in cli(command, "--config", config, "--show-config").stdout.splitlines()
        assert back in cli(command, "--config", config, option, "--show-config").stdout.splitlines()


def test_normalize_reads_its_table(tmp_path, cli):
    # normalize has no rule options: the table is how its rules are switched
    config = write(tmp_path, "normalize", "max_line_chars = 500\nnfkc = false")
    values = shown(cli, "normalize", "--config", config)
    assert values["max_line_chars"] == 500 and values["nfkc"] is False and values["whitespace"] is True


@pytest.mark.parametrize("command, cls", [("download", DownloadConfig), ("normalize", NormalizeConfig),
                                          ("filter", FilterConfig), ("dedup", DedupConfig),
                                          ("train-tokenizer", TokenizerConfig)])
def test_show_config_is_the_dataclass_defaults_and_reads_back(tmp_path, cli, command, cls):
    from dataclasses import asdict

    defaults = asdict(cls(sources=[]) if cls is DownloadConfig else cls())
    values = shown(cli, command)
    # TOML has no null: a value that is not set is a comment, and --config leaves it unset
    assert values == {k: v for k, v in defaults.items() if v is not None}
    out = cli(command, "--show-config").stdout
    assert all(f"# {k}: not set" in out for k, v in defaults.items() if v is None)
    config = tmp_path / "shown.toml"
    config.write_text(out, encoding="utf-8")
    assert cli(command, "--config", config, "--show-config").stdout == out


BAD_KEYS = {
    "download": ("part_row = 3", "unknown download config key 'part_row' (did you mean 'part_rows'?)"),
    "normalize": ("remove_invisble = false", "unknown normalize config key 'remove_invisble' (did you mean 'remove_invisible'?)"),
    "filter": ("special_chars_max = 5", "unknown filter config key 'special_chars_max' (did you mean 'special_chars_max_ratio'?)"),
    "dedup": ("treshold = 0.5", "unknown dedup config key 'treshold' (did you mean 'threshold'?)"),
    "train-tokenizer": ("vocabsize = 3000", "unknown train-tokenizer config key 'vocabsize' (did you mean 'vocab_size'?)"),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_key_is_refused_naming_it(tmp_path, cli, command):
    line, message = BAD_KEYS[command]
    config = write(tmp_path, TABLES[command], line)
    for args in (["--show-config"], ["--workdir", tmp_path / "work"]):
        out = one_line_error(cli(command, "--config", config, *args, expect=None))
        assert message in out and f"`nonllama {command} --show-config` lists every key" in out, out
    assert not (tmp_path / "work").exists()


BAD_VALUES = [
    # (command, the TOML line, what the one-line error says)
    ("download", 'part_rows = "many"', "download config 'part_rows' = \"many\": expected an integer"),
    ("download", "strict = 1", "download config 'strict' = 1: expected true or false"),
    ("download", 'sources = "sample"', "download config 'sources' = \"sample\": expected a list of strings"),
    ("download", "max_docs = 2.5", "download config 'max_docs' = 2.5: expected an integer"),
    ("normalize", "max_line_chars = 0", "normalize config: 'max_line_chars' must be >= 1, got 0"),
    ("normalize", "nfkc = 1", "normalize config 'nfkc' = 1: expected true or false"),
    ("filter", "special_chars_max_ratio = 5", "filter config 'special_chars_max_ratio' = 5.0: must be a number in [0, 1]"),
    ("filter", 'languages = "en"', "filter config 'languages' = \"en\": expected a list of strings"),
    ("dedup", "threshold = 1.5", "--threshold 1.5: must be in (0, 1]"),
    ("dedup", 'num_perm = "many"', "dedup config 'num_perm' = \"many\": expected an integer"),
    ("dedup", "bands = 100\nrows = 2", "--bands 100 x --rows 2 = 200 exceeds --num-perm 128"),
    ("train-tokenizer", 'model_type = "wordpiece"', "--model-type 'wordpiece': choose one of bpe, unigram"),
    ("train-tokenizer", "vocab_size = 100", "--vocab-size 100: must be more than the 265 fixed pieces"),
    ("train-tokenizer", 'sample_bytes = "lots"', "--sample-bytes 'lots': expected a size like 500M, 1G or 250000"),
    ("train-tokenizer", "user_symbols = [1, 2]", "train-tokenizer config 'user_symbols' = [1, 2]: expected a list of strings"),
]


@pytest.mark.parametrize("command, line, message", BAD_VALUES, ids=[f"{c}-{line.split(' =')[0]}" for c, line, _ in BAD_VALUES])
def test_an_invalid_value_is_one_line_naming_it(tmp_path, cli, command, line, message):
    config = write(tmp_path, TABLES[command], line)
    for args in (["--show-config"], ["--workdir", tmp_path / "work"]):
        out = one_line_error(cli(command, "--config", config, *args, expect=None))
        assert message in out, out
    assert not (tmp_path / "work").exists()  # judged before any input is looked for


def test_bad_option_values_are_judged_by_the_dataclass_too(tmp_path, cli):
    assert "--threshold 0: must be in (0, 1]" in one_line_error(cli("dedup", "--threshold", "0", expect=None))
    assert "--model-type 'wordpiece'" in one_line_error(cli("train-tokenizer", "--model-type", "wordpiece", expect=None))
    assert "--threads 0: must be at least 1" in one_line_error(cli("train-tokenizer", "--threads", "0", expect=None))


def test_sample_bytes_takes_a_size_in_the_table_and_the_option(tmp_path, cli):
    config = write(tmp_path, "train-tokenizer", 'sample_bytes = "500M"')
    assert shown(cli, "train-tokenizer", "--config", config)["sample_bytes"] == 500_000_000
    assert shown(cli, "train-tokenizer", "--config", config, "--sample-bytes", "2K")["sample_bytes"] == 2000
    config = write(tmp_path, "train-tokenizer", "sample_bytes = 12345\nuser_symbols = [\"<a>\"]")
    values = shown(cli, "train-tokenizer", "--config", config, "--user-symbols", "<b>,<c>")
    assert values["sample_bytes"] == 12345 and values["user_symbols"] == ["<b>", "<c>"]


def test_the_train_tokenizer_table_is_named_like_the_command(tmp_path, cli):
    config = write(tmp_path, "train_tokenizer", "vocab_size = 3000")
    out = one_line_error(cli("train-tokenizer", "--config", config, "--show-config", expect=None))
    assert "[train_tokenizer] is read as [train-tokenizer]: rename it" in out


def test_a_pipeline_file_gives_each_stage_its_table(tmp_path, cli):
    config = tmp_path / "pipeline.toml"
    config.write_text('[download]\npart_rows = 120\n[dedup]\nthreshold = 0.75\n[train-tokenizer]\nseed = 5\n'
                      '[train]\nlr = 0.002\n', encoding="utf-8")
    assert shown(cli, "download", "--config", config)["part_rows"] == 120
    assert shown(cli, "dedup", "--config", config)["threshold"] == 0.75
    assert shown(cli, "train-tokenizer", "--config", config)["seed"] == 5
    assert shown(cli, "normalize", "--config", config) == shown(cli, "normalize")  # no table: the defaults


def test_the_effective_config_reaches_the_stage(tmp_path, cli):
    config = write(tmp_path, "download", 'sources = ["sample"]\npart_rows = 200')
    cli("download", "--config", config, "--workdir", tmp_path / "a")
    m = read_manifest(tmp_path / "a" / "raw")
    assert m["config"]["sources"] == ["sample"] and m["config"]["part_rows"] == 200 and len(m["parts"]) == 4
    cli("download", "sample", "--config", config, "--part-rows", "400", "--workdir", tmp_path / "b")
    assert read_manifest(tmp_path / "b" / "raw")["config"]["part_rows"] == 400
    out = one_line_error(cli("download", "--workdir", tmp_path / "c", expect=None))
    assert "no SOURCES" in out
    config = write(tmp_path, "normalize", "nfkc = false")
    cli("normalize", "--workdir", tmp_path / "a", "--config", config)
    assert read_manifest(tmp_path / "a" / "normalized")["config"]["nfkc"] is False


@pytest.mark.parametrize("command, option, default", [
    ("download", "--part-rows", "[default: 50000]"),
    ("download", "--strict", "[default: --no-strict]"),
    ("filter", "--languages", "[default: en,zh]"),
    ("filter", "--stats-only", "[default: --no-stats-only]"),
    ("dedup", "--threshold", "[default: 0.8]"),
    ("dedup", "--exact", "[default: --exact]"),
    ("dedup", "--paragraph-max-docs", "[default: 5]"),
    ("train-tokenizer", "--vocab-size", "[default: 16000]"),
    ("train-tokenizer", "--sample-bytes", "[default: 1G]"),
    ("train-tokenizer", "--threads", "[default: 8]"),
])
def test_help_shows_the_dataclass_defaults(cli, monkeypatch, command, option, default):
    monkeypatch.setenv("COLUMNS", "300")  # one option a line
    lines = [line for line in cli(command, "--help").stdout.splitlines() if f" {option} " in line]
    assert lines and default in lines[0], lines


# Every command's --help, rendered in a fresh process (the layout is chosen at import, from the
# terminal's width): in 80 columns click's plain layout, in 120 Typer's rich panels; in both
# nothing is cut short ("…"), no rich escape ("\[") shows, and no line is wider than the terminal.
HELP_SCRIPT = """
import sys
from typer.testing import CliRunner
from nonllama.cli import app
runner = CliRunner()
for command in sys.argv[1:]:
    result = runner.invoke(app, [command, "--help"])
    print(f"=== {command} exit {result.exit_code}")
    print(result.output)
"""
ALL_COMMANDS = ["download", "normalize", "filter", "dedup", "train-tokenizer", "pack", "train", "generate",
                "report", "export", "eval", "sft"]


@pytest.mark.parametrize("columns", [80, 120])
def test_help_is_whole_and_fits_the_terminal(columns: int) -> None:
    env = {**os.environ, "COLUMNS": str(columns), "TERMINAL_WIDTH": str(columns)}
    done = subprocess.run([sys.executable, "-c", HELP_SCRIPT, *ALL_COMMANDS], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    sections = done.stdout.split("=== ")[1:]
    assert [s.split(" ", 1)[0] for s in sections] == ALL_COMMANDS
    for section in sections:
        name, output = section.split("\n", 1)
        assert name.endswith("exit 0"), section[:500]
        assert "--help" in output and "Usage" in output
        assert "…" not in output, f"{name}: something cut short\n{output}"
        assert "\\[" not in output, f"{name}: a rich escape shows\n{output}"
        wide = [line for line in output.splitlines() if len(line) > columns]
        assert not wide, f"{name}: lines wider than {columns} columns: {wide[:3]}"
        assert ("╭" in output) == (columns >= 100), f"{name}: layout for {columns} columns"
    # the stage defaults are shown whole (they were cut to "<workdir>/packe…" in 80 columns)
    assert "<workdir>/packed" in done.stdout
