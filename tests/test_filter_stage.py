"""`nonllama filter` as a stage: the sample corpus, accounting, stats-only, report, config, bad input."""

from __future__ import annotations

import json

import polars as pl
import pytest
from tiny_runs import one_line

from nonllama.pipeline.io import read_manifest, read_parts
from nonllama.pipeline.sample import BOILERPLATE_LINES


def kinds(frame: pl.DataFrame) -> pl.Series:
    return frame["meta"].str.json_path_match("$.kind")


def test_sample_drops_planted_problems_and_keeps_clean_text(tmp_path, cli):
    work = tmp_path / "work"
    cli("download", "sample", "--workdir", work, "--part-rows", "300")
    cli("normalize", "--workdir", work)
    out = cli("filter", "--workdir", work, "--workers", "2").output
    assert "removed" in out and "sample-zh" in out and "lines removed by line cleaning" in out
    m = read_manifest(work / "filtered")
    kept, rejected = read_parts(work / "filtered"), read_parts(work / "filtered" / "rejected")
    assert kept.height + rejected.height == m["rows_in"] == read_manifest(work / "normalized")["rows_out"]
    assert m["drop_reasons"] == dict(rejected.group_by("drop_reason").len().sort("drop_reason").iter_rows())
    assert sum(sum(r.values()) for r in m["drop_reasons_per_source"].values()) == rejected.height
    kept_kinds = kinds(kept).value_counts()
    all_kinds = pl.concat([kinds(kept), kinds(rejected)]).value_counts()
    count = lambda vc, k: dict(vc.iter_rows()).get(k, 0)  # noqa: E731
    # spam, foreign and near-empty documents go; nearly every clean one (en and zh) stays
    for kind in ("spam", "foreign", "near_empty"):
        assert count(kept_kinds, kind) == 0, kind
    assert count(kept_kinds, "clean") >= 0.97 * count(all_kinds, "clean")
    clean_kept = kept.filter(kinds(kept) == "clean")
    assert clean_kept.filter(pl.col("source") == "sample-zh").height >= 150
    # boilerplate lines are cut from the documents that carried them, and counted
    planted = [line for lang in BOILERPLATE_LINES.values() for lines in lang.values() for line in lines]
    lines = kept.select(pl.col("text").str.split("\n").explode())["text"]
    assert lines.is_in(planted).sum() <= 2
    assert m["stage_counts"]["lines_removed_by_line_cleaning"] > 50
    assert m["chars_out"] < kept.select(pl.col("text").str.len_chars().sum()).item() + 1
    # rejected rows keep their original text and the values that decided
    values = rejected["filter_values"].struct.unnest()
    assert values.height == rejected.height and values["words"].null_count() == 0


def test_stats_only_report_and_rerun(tmp_path, cli):
    work = tmp_path / "work"
    cli("download", "sample", "--workdir", work)
    cli("normalize", "--workdir", work)
    cli("filter", "--workdir", work, "--stats-only", "--report", tmp_path / "report")
    kept = read_parts(work / "filtered")
    assert kept.height == read_manifest(work / "normalized")["rows_out"]
    assert kept["would_drop"].null_count() < kept.height  # some would go
    assert (tmp_path / "report" / "char_repetition_ratio.png").stat().st_size > 1000
    assert len(list((tmp_path / "report").glob("*.png"))) >= 30
    assert "up to date" in cli("filter", "--workdir", work, "--stats-only").output
    assert "up to date" not in cli("filter", "--workdir", work).output


def test_config_file_switches_rules_off(tmp_path, cli):
    work = tmp_path / "work"
    cli("download", "sample", "--workdir", work)
    cli("normalize", "--workdir", work)
    config = tmp_path / "nonllama.toml"
    config.write_text("[filter]\nlanguage = false\nc4_line_cleaning = false\n")
    cli("filter", "--workdir", work, "--config", config)
    m = read_manifest(work / "filtered")
    assert m["config"]["language"] is False and "language" not in m["drop_reasons"]
    assert m["stage_counts"]["lines_removed_by_line_cleaning"] == 0
    cli("filter", "--workdir", work, "--languages", "zh")
    kept = read_parts(work / "filtered")
    assert set(kept["source"]) == {"sample-zh"}


def test_show_config_and_bad_options(tmp_path, cli):
    shown = cli("filter", "--show-config").output
    assert "[filter]" in shown and "char_repetition_max_ratio = 0.106" in shown
    assert 'languages = ["en", "zh"]' in shown and "stop_words = false" in shown
    bad = tmp_path / "bad.toml"
    bad.write_text("[filter]\nshort_line_max_ratio = 0.4\n")
    result = cli("filter", "--config", bad, "--workdir", tmp_path, expect=2)
    assert "short_line_max_ratio" in result.output and "Traceback" not in result.output
    result = cli("filter", "--workdir", tmp_path / "nothing", expect=2)
    assert "nonllama normalize" in result.output


def test_bad_documents_get_decisions_end_to_end(tmp_path, cli):
    docs = [
        {"text": "😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍"},
        {"text": "\n\n\n\n\n\n\n\n"},
        {"text": "broken \ud800 surrogate \udfff in the middle of a sentence about the weather today."},
        {"text": "The quick brown fox jumps over the lazy dog. " * 230_000},  # 10 MB
        {"text": "The little fox lived at the edge of a quiet forest and told her cubs stories every night."},
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in docs) + "\n", encoding="utf-8")
    work = tmp_path / "work"
    cli("download", path, "--workdir", work)
    cli("normalize", "--workdir", work)
    cli("filter", "--workdir", work)
    # upstream decisions first: download quarantines the lone surrogates, normalize empties the
    # newline-only document; the filter decides on whatever reaches it (unit tests feed it each)
    assert "surrogate" in (work / "raw" / "quarantine.jsonl").read_text()
    m = read_manifest(work / "filtered")
    assert m["rows_out"] + m["rows_removed"] == m["rows_in"] == read_manifest(work / "normalized")["rows_out"]
    kept = read_parts(work / "filtered")
    assert any(t.startswith("The little fox") for t in kept["text"])
    assert not any(t.startswith("The quick brown fox") for t in kept["text"])


def test_peoples_daily_and_tinystories_keep_most(tmp_path, cli, corpora):
    for name, source, split in (
        ("pd", corpora / "peoples_daily_1998", r"\n"),
        ("ts", corpora / "tinystories_en", "blank-line"),
    ):
        work = tmp_path / name
        cli("download", source, "--workdir", work, "--split-on", split, "--max-docs", "3000")
        cli("normalize", "--workdir", work)
        cli("filter", "--workdir", work)
        m = read_manifest(work / "filtered")
        assert m["chars_out"] >= 0.8 * m["chars_in"], (name, m["drop_reasons"])
        assert m["rows_out"] >= 0.55 * m["rows_in"], (name, m["drop_reasons"])


BAD_CONFIGS = [
    # (the [filter] table, what the one-line error must say)
    ("special_chars_max = 5", "'special_chars_max' (did you mean 'special_chars_max_ratio'?)"),
    ("special_chars_max_ratio = 5", "'special_chars_max_ratio' = 5.0: must be a number in [0, 1]"),
    ("special_chars_max_ratio = -1", "'special_chars_max_ratio' = -1.0: must be a number in [0, 1]"),
    ("word_count_min = -1", "'word_count_min' = -1: must be an integer >= 0"),
    ("word_count_min = 500\nword_count_max = 100", "'word_count_min' = 500 is above 'word_count_max' = 100"),
    ("gopher_min_mean_word_length = 12.0", "'gopher_min_mean_word_length' = 12 is above 'gopher_max_mean_word_length' = 10"),
    ("language_min_score = 1.5", "'language_min_score' = 1.5: must be a number in [0, 1]"),
    ("stop_words_min_ratio = 2", "'stop_words_min_ratio' = 2.0: must be a number in [0, 1]"),
    ("gopher_max_dup_ngram_char_frac = [0.15, 0.14, 1.3, 0.12, 0.11, 0.1]", "its 7-gram threshold 1.3 must be a number in [0, 1]"),
    ("gopher_max_top_ngram_char_frac = [0.2, nan, 0.16]", "its 3-gram threshold nan must be a number in [0, 1]"),
    ("char_repetition_n = 0", "'char_repetition_n' = 0: must be an integer in [1, 100]"),
    ("char_repetition_n = 1000", "'char_repetition_n' = 1000: must be an integer in [1, 100]"),
    ("word_repetition_n = 200", "'word_repetition_n' = 200: must be an integer in [1, 50]"),
    ("short_lines_chars = 5000", "'short_lines_chars' = 5000: must be an integer in [1, 1000]"),
    ("language_max_chars = 0", "'language_max_chars' = 0: must be an integer >= 1"),
    ('languages = ["english"]', "'english' is not a language code of fastText lid.176"),
    ('languages = ["en", "xx"]', "'xx' is not a language code of fastText lid.176"),
    ('languages = ["EN"]', "(did you mean 'en'?)"),
    ('languages = ["yue"]', "'yue': the filter reports Chinese written in Han characters as zh"),
    ("languages = []", "'languages': empty list"),
]


@pytest.mark.parametrize("table, message", BAD_CONFIGS, ids=[t.split(" =")[0] for t, _ in BAD_CONFIGS])
def test_out_of_range_config_is_refused_before_any_data_is_read(tmp_path, cli, table, message):
    # the workdir has no input at all: the config must be judged first, and alone
    config = tmp_path / "nonllama.toml"
    config.write_text(f"[filter]\n{table}\n")
    for args in (["--workdir", tmp_path / "work"], ["--show-config"]):
        result = cli("filter", "--config", config, *args, expect=2)
        out = one_line(result.output)
        assert message in out and "filter config" in out, out
        assert "Traceback" not in out and "nonllama normalize" not in out


def test_bad_languages_option_names_the_option(tmp_path, cli):
    out = one_line(cli("filter", "--languages", "en,english", "--workdir", tmp_path, expect=2).output)
    assert "--languages en,english: 'english' is not a language code of fastText lid.176" in out
    shown = cli("filter", "--languages", "en,fr,ja", "--show-config").output
    assert 'languages = ["en", "fr", "ja"]' in shown


def test_bad_config_leaves_a_real_input_unread_and_no_output(tmp_path, cli):
    work = tmp_path / "work"
    cli("download", "sample", "--workdir", work, "--part-rows", "300")
    cli("normalize", "--workdir", work)
    config = tmp_path / "nonllama.toml"
    config.write_text("[filter]\nspecial_chars_max_ratio = 5\n")
    cli("filter", "--workdir", work, "--config", config, expect=2)
    assert not (work / "filtered").exists()
    # in range, the edges included, the same stage runs: a ratio of 1 drops nothing for it
    config.write_text("[filter]\nspecial_chars_max_ratio = 1\nword_count_min = 0\nlanguages = [\"en\", \"zh\", \"min\"]\n")
    cli("filter", "--workdir", work, "--config", config)
    m = read_manifest(work / "filtered")
    assert m["rows_out"] > 0 and "special_chars" not in m["drop_reasons"]


# --------------------------------------------------------------------------- data files


def test_a_changed_word_list_makes_the_filter_rerun(tmp_path, cli, monkeypatch):
    import shutil

    from nonllama.pipeline import filter_rules

    work = tmp_path / "work"
    cli("download", "sample", "--workdir", work)
    cli("normalize", "--workdir", work)
    cli("filter", "--workdir", work)
    m = read_manifest(work / "filtered")
    assert set(m["dependencies"]) == {"flagged_words_en.txt", "flagged_words_zh.txt", "stopwords_en.txt",
                                      "stopwords_zh.txt", "lid.176.ftz"}
    assert "up to date" in cli("filter", "--workdir", work).output
    # the same lists elsewhere (another install): the same digests, still up to date
    data = tmp_path / "data"
    shutil.copytree(filter_rules.data_path("stopwords_en").parent, data)
    monkeypatch.setattr(filter_rules, "data_path", lambda name: data / f"{name}.txt")
    assert "up to date" in cli("filter", "--workdir", work).output
    # one word more on a list: the stage reruns, and the new list decides
    flagged = data / "flagged_words_en.txt"
    flagged.write_text(flagged.read_text(encoding="utf-8") + "the\n", encoding="utf-8")
    assert "up to date" not in cli("filter", "--workdir", work).output
    rerun = read_manifest(work / "filtered")
    assert rerun["dependencies"]["flagged_words_en.txt"] != m["dependencies"]["flagged_words_en.txt"]
    assert rerun["dependencies"]["lid.176.ftz"] == m["dependencies"]["lid.176.ftz"]
    assert rerun["drop_reasons"]["flagged_words"] > m["drop_reasons"].get("flagged_words", 0) + 50
    assert "up to date" in cli("filter", "--workdir", work).output


def test_dependencies_are_the_files_the_rules_read(tmp_path, monkeypatch):
    import shutil

    from nonllama.pipeline import filter_rules
    from nonllama.pipeline.filter import FilterConfig, dependencies

    everything = dependencies(FilterConfig())
    assert len(everything) == 5 and all(len(v) == 64 for v in everything.values())
    assert dependencies(FilterConfig(language=False)).keys() == everything.keys() - {"lid.176.ftz"}
    assert dependencies(FilterConfig(language=False, flagged_words=False)) == {}
    assert dependencies(FilterConfig(language=False, flagged_words=False, stop_words=True)).keys() == \
        everything.keys() - {"lid.176.ftz"}
    assert dependencies(FilterConfig(language=False, flagged_words=False, stats_only=True)) == everything
    # the language model: a copy has the same digest; a changed file another
    model = tmp_path / "lid.176.ftz"
    shutil.copyfile(filter_rules.language_model_path(), model)
    monkeypatch.setattr(filter_rules, "language_model_path", lambda: model)
    assert dependencies(FilterConfig()) == everything
    with open(model, "ab") as f:
        f.write(b"\0")
    assert dependencies(FilterConfig())["lid.176.ftz"] != everything["lid.176.ftz"]
