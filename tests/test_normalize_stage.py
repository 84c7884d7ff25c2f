"""`nonllama normalize` as a stage: accounting, removed rows, config, workers, CLI."""

from __future__ import annotations

import polars as pl

from nonllama.pipeline.io import read_manifest, read_parts


def test_sample_funnel_accounts_for_every_document(tmp_path, cli):
    work = tmp_path / "work"
    cli("download", "sample", "--workdir", work, "--part-rows", "200")
    cli("normalize", "--workdir", work, "--workers", "2")
    raw, m = read_manifest(work / "raw"), read_manifest(work / "normalized")
    assert m["rows_in"] == raw["rows_out"]
    assert m["rows_out"] + m["rows_removed"] == m["rows_in"]
    kept, removed = read_parts(work / "normalized"), read_parts(work / "normalized" / "removed")
    assert kept.height + removed.height == m["rows_in"]
    assert set(removed["drop_reason"]) == {"empty_after_normalize"}
    assert m["drop_reasons"] == {"empty_after_normalize": removed.height}
    # removed rows keep their original text; kept rows have the pass-through columns
    assert removed["text"].str.strip_chars().str.len_chars().max() <= 10
    assert kept.columns[:4] == ["id", "text", "source", "meta"]
    # planted problems are repaired: no control, zero-width or mojibake characters survive
    assert kept["text"].str.contains(r"[\x00-\x08\x1b\u200b\ufeff]|â€").sum() == 0
    assert kept["text"].str.contains("１９|ＡＢ").sum() == 0


def test_workers_give_identical_output(tmp_path, cli):
    work = tmp_path / "work"
    cli("download", "sample", "--workdir", work, "--part-rows", "150")
    cli("normalize", "--workdir", work, "-o", tmp_path / "one", "--workers", "1")
    cli("normalize", "--workdir", work, "-o", tmp_path / "two", "--workers", "2")
    assert read_manifest(tmp_path / "one")["parts"] == read_manifest(tmp_path / "two")["parts"]
    assert len(read_manifest(tmp_path / "one")["parts"]) == 5


def test_config_file_switches_rules_and_reruns(tmp_path, cli):
    work = tmp_path / "work"
    cli("download", "sample", "--workdir", work)
    cli("normalize", "--workdir", work)
    assert "up to date" in cli("normalize", "--workdir", work).output
    config = tmp_path / "nonllama.toml"
    config.write_text("[normalize]\nremove_invisible = false\n")
    rerun = cli("normalize", "--workdir", work, "--config", config)
    assert "up to date" not in rerun.output
    assert read_manifest(work / "normalized")["config"]["remove_invisible"] is False
    kept = read_parts(work / "normalized")
    assert kept["text"].str.contains("\u200b").sum() > 0


def test_show_config_and_bad_config(tmp_path, cli):
    shown = cli("normalize", "--show-config").output
    assert "[normalize]" in shown and "max_line_chars = 20000" in shown
    bad = tmp_path / "bad.toml"
    bad.write_text("[normalize]\nremove_invisble = false\n")
    result = cli("normalize", "--config", bad, "--workdir", tmp_path, expect=2)
    assert "remove_invisble" in result.output and "Traceback" not in result.output


def test_missing_input_says_what_to_run(tmp_path, cli):
    result = cli("normalize", "--workdir", tmp_path / "nothing", expect=2)
    assert "nonllama download" in result.output


def test_peoples_daily_through_the_stage(tmp_path, cli, corpora):
    work = tmp_path / "work"
    cli("download", corpora / "peoples_daily_1998", "--workdir", work, "--split-on", r"\n", "--max-docs", "2000")
    cli("normalize", "--workdir", work)
    kept = read_parts(work / "normalized")
    assert kept.height >= 1990
    assert kept["text"].str.contains("[０-９]").sum() == 0  # full-width digits became ASCII
    assert kept["text"].str.count_matches("，").sum() > 1000  # Chinese commas stay full-width
    assert kept.filter(pl.col("text").str.contains(r"\p{Han},")).height == 0
