"""``finbert2 retrieve index --index URI`` and ``retrieve search --index URI`` on a Milvus Lite file: the same
top documents as the folder index from the same corpus and model, the importer's ``retrieve index
--from_folder`` spelling, one-line errors, and builds that never leave a half-written index under its name."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from finbert2.cli import main as cli_main  # noqa: E402
from serve_support import REPO_ROOT, make_retriever  # noqa: E402

DEMO = REPO_ROOT / "data" / "demo"
SOURCES = ["新华社", "公司公告", "路透"]
# Mean pooling: an untrained tiny BERT's CLS vectors are all alike (cosines equal to 1e-6), so any two
# engines' float rounding reorders them; mean-pooled ones differ by 1e-5 and more between neighbours.
E5_PROMPTS = {"query": "query: ", "document": "passage: "}
RUNS = itertools.count()


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_tokenizer_dir):
    """120 demo documents indexed twice with one tiny retriever: a folder and a Milvus Lite file."""
    root = tmp_path_factory.mktemp("milvus-cli")
    retriever = make_retriever(tiny_tokenizer_dir, root / "retriever", prompts=E5_PROMPTS)
    lines = (DEMO / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:120]
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"demo-{i}", "text": json.loads(line)["text"],
                                          "source": SOURCES[i % 3]}, ensure_ascii=False) + "\n"
                              for i, line in enumerate(lines)), encoding="utf-8")
    queries = root / "queries.jsonl"
    queries.write_text("".join(json.dumps({"id": f"q{i}", "text": json.loads(line)["query"]}, ensure_ascii=False)
                               + "\n" for i, line in enumerate(
                                   (DEMO / "retrieval" / "queries.jsonl").read_text(encoding="utf-8").splitlines()[:6])),
                       encoding="utf-8")
    common = ["--model_name_or_path", str(retriever), "--corpus", str(corpus), "--max_length", "128"]
    assert cli_main(["retrieve", "index", *common, "--output_dir", str(root / "folder")]) == 0
    uri = str(root / "index.db")
    assert cli_main(["retrieve", "index", *common, "--index", uri, "--insert_batch_size", "50"]) == 0
    return {"root": root, "common": common, "corpus": corpus, "folder": root / "folder", "uri": uri, "queries": queries}


def search(tmp_path, *args) -> dict[str, list[dict]]:
    out = tmp_path / f"hits-{next(RUNS)}.jsonl"
    assert cli_main(["retrieve", "search", *args, "--top_k", "10", "--output_file", str(out)]) == 0
    return {row["query_id"]: row["results"] for row in map(json.loads, out.read_text(encoding="utf-8").splitlines())}


@pytest.fixture(scope="module")
def folder_store(built, tmp_path_factory):
    """``search(query, mode, filters)``: the service's folder store's top 10 ids over a copy of the folder index."""
    from finbert2.retrieve.index import encoder_from_config
    from finbert2.serve.store import DocumentIndex

    copy = tmp_path_factory.mktemp("folder-copy") / "index"
    shutil.copytree(built["folder"], copy)
    config = json.loads((copy / "index_config.json").read_text(encoding="utf-8"))
    encoder = encoder_from_config(config, 64)
    store = DocumentIndex(copy, encoder.dimension, config)

    def search(query: str, mode: str, filters=None) -> list[str]:
        return [h["id"] for h in store.search(encoder.encode_queries([query])[0], query, 10, mode, filters, 60)]
    return search


def test_milvus_index_answers_as_the_folder_index(built, folder_store, tmp_path):
    folder = search(tmp_path, "--index_dir", str(built["folder"]), "--queries_file", str(built["queries"]))
    milvus = search(tmp_path, "--index", built["uri"], "--queries_file", str(built["queries"]))
    assert folder.keys() == milvus.keys() and len(folder) == 6
    for qid in folder:
        assert [h["id"] for h in milvus[qid]] == [h["id"] for h in folder[qid]], qid
        assert [h["score"] for h in milvus[qid]] == pytest.approx([h["score"] for h in folder[qid]], abs=1e-5)
        assert [h["rank"] for h in milvus[qid]] == list(range(1, 11))
        assert milvus[qid][0]["text"] == folder[qid][0]["text"]
        assert milvus[qid][0]["record"]["source"] == folder[qid][0]["record"]["source"]
    # BM25, hybrid and a filter rank as the service's folder store does over the same folder
    query_text = {json.loads(line)["id"]: json.loads(line)["text"]
                  for line in built["queries"].read_text(encoding="utf-8").splitlines()}
    for mode, filters in (("bm25", None), ("hybrid", None), ("hybrid", {"source": ["路透", "新华社"]})):
        args = ["--index", built["uri"], "--queries_file", str(built["queries"]), "--mode", mode]
        got = search(tmp_path, *args, *(["--filter", json.dumps(filters, ensure_ascii=False)] if filters else []))
        for qid, text in query_text.items():
            expected = folder_store(text, mode, filters)
            assert [h["id"] for h in got[qid]] == expected, (mode, filters, qid)
            assert expected, (mode, qid)


def test_from_folder_is_the_importer(built, tmp_path, capsys):
    uri = str(tmp_path / "imported.db")
    assert cli_main(["retrieve", "index", "--from_folder", str(built["folder"]), "--index", uri]) == 0
    assert "imported 120 documents (120 windows)" in capsys.readouterr().out
    imported = search(tmp_path, "--index", uri, "--queries_file", str(built["queries"]))
    folder = search(tmp_path, "--index_dir", str(built["folder"]), "--queries_file", str(built["queries"]))
    assert {q: [h["id"] for h in hits] for q, hits in imported.items()} == \
        {q: [h["id"] for h in hits] for q, hits in folder.items()}
    # An existing index is refused, not merged into; --overwrite_index replaces it.
    assert cli_main(["retrieve", "import", "--from_folder", str(built["folder"]), "--index", uri]) == 2
    assert "exists; pass --overwrite_index True" in capsys.readouterr().err
    assert cli_main(["retrieve", "import", "--from_folder", str(built["folder"]), "--index", uri,
                     "--overwrite_index", "True"]) == 0


def one_line_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1, err
    return err[0]


def test_bad_uris_and_missing_files_are_one_line_errors(built, tmp_path, capsys):
    common = built["common"]
    cases = [
        (["retrieve", "index", *common, "--index", str(tmp_path / "index.txt")], "expected a Milvus Lite file"),
        (["retrieve", "index", *common, "--index", "http://127.0.0.1:1"], "--index http://127.0.0.1:1"),
        (["retrieve", "index", *common, "--index", str(tmp_path / "absent" / "x.db")], "not exist"),
        (["retrieve", "index", *common, "--index", str(tmp_path / "研报索引.db")], "Milvus Lite takes file names"),
        (["retrieve", "index", *common, "--index", str(tmp_path / ("x" * 33 + ".db"))], "under 36 characters"),
        (["retrieve", "index", *common], "give --output_dir FOLDER or --index URI"),
        (["retrieve", "index", "--model_name_or_path", common[1], "--corpus", str(tmp_path / "absent.jsonl"),
          "--index", str(tmp_path / "y.db")], "absent.jsonl"),
        (["retrieve", "search", "--index", str(tmp_path / "absent.db"), "--query", "利润"], "no such Milvus Lite file"),
        (["retrieve", "search", "--index", built["uri"], "--index_collection", "other", "--query", "利润"],
         "no collection 'other'"),
        (["retrieve", "search", "--index_dir", str(built["folder"]), "--query", "利润", "--mode", "bm25"],
         "need a Milvus --index"),
        (["retrieve", "search", "--index", built["uri"], "--query", "利润", "--filter", "[1]"], "--filter"),
    ]
    for argv, expected in cases:
        assert cli_main(argv) == 2, argv
        assert expected in one_line_error(capsys), argv
    assert not (tmp_path / "y.db").exists()  # the corpus is read before the engine is opened


def test_a_failed_build_leaves_no_index_and_keeps_the_old_one(built, tmp_path, monkeypatch, capsys):
    from finbert2.retrieve.encoder import DenseEncoder
    from finbert2.serve.milvus_store import COLLECTION, MilvusIndex, connect

    before = search(tmp_path, "--index", built["uri"], "--queries_file", str(built["queries"]))
    encode = DenseEncoder.encode_passages
    calls = []

    def fail_on_second_batch(self, texts, *args, **kwargs):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return encode(self, texts, *args, **kwargs)

    monkeypatch.setattr(DenseEncoder, "encode_passages", fail_on_second_batch)
    replace = ["retrieve", "index", *built["common"], "--index", built["uri"], "--insert_batch_size", "30",
               "--overwrite_index", "True"]
    assert cli_main(replace) == 130 and calls == [30, 30]
    assert search(tmp_path, "--index", built["uri"], "--queries_file", str(built["queries"])) == before
    small = tmp_path / "small.jsonl"
    small.write_text("".join(built["corpus"].read_text(encoding="utf-8").splitlines(keepends=True)[:20]),
                     encoding="utf-8")
    fresh, calls[:] = str(tmp_path / "fresh.db"), []
    common = [*built["common"][:2], "--corpus", str(small), *built["common"][4:], "--index", fresh]
    assert cli_main(["retrieve", "index", *common, "--insert_batch_size", "10"]) == 130
    client = connect(fresh)
    assert client.list_collections() == []  # nothing that looks like an index
    capsys.readouterr()
    assert cli_main(["retrieve", "search", "--index", fresh, "--query", "利润"]) == 2
    assert "no collection 'finbert2_windows'" in one_line_error(capsys)
    monkeypatch.setattr(DenseEncoder, "encode_passages", encode)
    # A killed build leaves its `__building` collection (never the index's name); the next build drops it.
    MilvusIndex(fresh, 8, {}, collection=COLLECTION + "__building")
    assert client.list_collections() == [COLLECTION + "__building"]
    assert cli_main(["retrieve", "index", *common]) == 0
    assert client.list_collections() == [COLLECTION]
    # Milvus Lite fills a new index under its own name behind a marker: one killed there is refused by
    # readers, and the next build drops both (no --overwrite_index needed: it is no index).
    client.drop_collection(COLLECTION)
    MilvusIndex(fresh, 8, {}, collection=COLLECTION + "__incomplete")
    MilvusIndex(fresh, 8, {}, building=True)
    capsys.readouterr()
    assert cli_main(["retrieve", "search", "--index", fresh, "--query", "利润"]) == 2
    assert "a bulk write cut short" in one_line_error(capsys)
    assert cli_main(["retrieve", "index", *common]) == 0
    assert client.list_collections() == [COLLECTION]
    hits = search(tmp_path, "--index", fresh, "--query", "利润", "--mode", "bm25")
    assert hits["q0"] and all(int(h["id"].split("-")[1]) < 20 for h in hits["q0"])
