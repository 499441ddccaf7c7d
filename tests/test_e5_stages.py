"""multilingual-e5-small (a unigram/XLM-R vocabulary) through the stages: tokenizer extension, whole-word
masking by offsets, MLM and RetroMAE continued from it, prompts and pooling carried along, topics' prompt."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

from conftest import DEMO_DIR, small_retrieval_eval
from finbert2.pretrain.whole_word_masking import JiebaWordSegmenter, WholeWordMaskCollator, token_word_ids

CORPUS = DEMO_DIR / "corpus.jsonl"


@pytest.fixture(scope="module")
def e5_domain_tokenizer(e5_pruned_dir, tmp_path_factory):
    """The tokenizer stage over e5's vocab: demo-corpus domain words appended as unigram pieces."""
    from finbert2.run import RunArguments
    from finbert2.tokenizer.args import TokenizerArguments
    from finbert2.tokenizer.cli import run

    out = tmp_path_factory.mktemp("e5tok") / "tokenizer"
    metrics = run(TokenizerArguments(output_dir=str(out), train_data=[str(CORPUS)], base_tokenizer=str(e5_pruned_dir),
                                     vocab_size=4000, hard_vocab_limit=False, min_word_frequency=10,
                                     max_added_words=300), RunArguments())
    return out, metrics


def test_unigram_base_is_extended_with_whole_pieces(e5_domain_tokenizer, e5_pruned_dir):
    out, metrics = e5_domain_tokenizer
    base, extended = AutoTokenizer.from_pretrained(e5_pruned_dir), AutoTokenizer.from_pretrained(out)
    assert metrics["added_tokens"] > 100 and len(extended) == len(base) + metrics["added_tokens"]
    assert json.loads((out / "tokenizer_extension.json").read_text())["method"] == "unigram pieces"
    base_vocab, new_vocab = base.get_vocab(), extended.get_vocab()
    assert all(new_vocab[token] == i for token, i in base_vocab.items())  # every base id unchanged
    words = [line.split("\t")[0] for line in (out / "domain_words.tsv").read_text().splitlines()[1:]]
    for word in words[:20]:
        pieces = extended.tokenize(f"公司{word}表现")
        assert word in pieces and "\u2581" not in pieces[1:]  # one token, no spurious word-start marker after it
    plain = "Apple Inc. reported revenue of 5.2 billion USD; 市值"  # no domain word: tokenised as the base does
    assert not any(word in plain for word in words)
    assert extended(plain)["input_ids"] == base(plain)["input_ids"]
    assert metrics["tokens_per_char"] < metrics["base_tokens_per_char"]


def test_whole_word_masking_on_unigram_tokens(e5_pruned_dir):
    tokenizer = AutoTokenizer.from_pretrained(e5_pruned_dir)
    segmenter = JiebaWordSegmenter()
    text = "央行 降准0.5个百分点，公司净利润同比增长"
    owner = segmenter.char_to_word(text)
    encoded = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    words = token_word_ids(owner, encoded["offset_mapping"], encoded["special_tokens_mask"])
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert words[0] == -1 and words[-1] == -1
    for i, token in enumerate(tokens[1:-1], start=1):
        if token == "\u2581":  # a lone word-start marker belongs to the word it starts
            assert words[i] == words[i + 1]
    collator = WholeWordMaskCollator(tokenizer, mlm_probability=0.5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        _, labels = collator.mask_sequence(encoded["input_ids"], words, generator)
        chosen = labels != -100
        for word in set(words) - {-1}:
            members = [chosen[i].item() for i, w in enumerate(words) if w == word]
            assert all(members) or not any(members)  # a word is masked whole or not at all


@pytest.mark.slow
def test_mlm_then_retromae_continue_from_e5(e5_domain_tokenizer, e5_pruned_dir, tmp_path):
    """Continued pretraining the FinBERT2 way from e5: the extended vocab's rows grown (mean of pieces),
    the held-out MLM loss falls, and both outputs keep e5's prompts and pooling for later stages; the MLM
    run merged with e5 on validation retrieval is at least as good there as either."""
    from finbert2.data import read_retrieval_eval
    from finbert2.merge import merge_with_start
    from finbert2.pretrain import mlm, retromae
    from finbert2.retrieve.encoder import DenseEncoder, saved_sentence_settings
    from finbert2.retrieve.evaluate import dense_evaluation

    tok_dir, _ = e5_domain_tokenizer
    common = ["--train_data", str(CORPUS), "--max_seq_length", "64", "--max_train_samples", "64",
              "--max_eval_samples", "32", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
              "--learning_rate", "1e-4", "--logging_steps", "2", "--eval_strategy", "no", "--report_to", "none",
              "--use_cpu", "True", "--seed", "3", "--disable_tqdm", "True", "--save_steps", "100"]
    mlm_dir = tmp_path / "mlm"
    assert mlm.main(["--model_name_or_path", str(e5_pruned_dir), "--tokenizer_name", str(tok_dir),
                     "--output_dir", str(mlm_dir), "--max_steps", "8", *common]) == 0
    metrics = json.loads((mlm_dir / "metrics.json").read_text())
    assert metrics["eval_loss"] < metrics["initial_eval_loss"] - 1.0  # the new head learns fast
    assert metrics["collapsed"] is False
    model = AutoModelForMaskedLM.from_pretrained(mlm_dir)
    assert model.get_input_embeddings().weight.shape[0] == len(AutoTokenizer.from_pretrained(tok_dir))
    settings = saved_sentence_settings(str(mlm_dir))
    assert settings["pooling"] == "mean" and settings["prompts"]["document"] == "passage: "

    # the run merged with its start, alpha chosen on validation retrieval (issue 31): never below the better end
    merged_dir = tmp_path / "merged"
    merged = merge_with_start(mlm_dir, e5_pruned_dir, merged_dir, "auto", alpha_grid=[0.5], max_length=128,
                              eval_retrieval_data=str(small_retrieval_eval(tmp_path / "eval")))
    assert [p["alpha"] for p in merged["alpha_curve"]] == [0.0, 0.5, 1.0]
    assert merged["ndcg_at_10"] == max(p["ndcg_at_10"] for p in merged["alpha_curve"])
    assert merged["ndcg_at_10"] >= max(merged["model_a_ndcg_at_10"], merged["model_b_ndcg_at_10"])
    assert json.loads((merged_dir / "metrics.json").read_text())["alpha_curve"] == merged["alpha_curve"]
    assert (merged_dir / "alpha_curve.png").stat().st_size > 0
    rows = [AutoConfig.from_pretrained(folder).vocab_size for folder in (e5_pruned_dir, mlm_dir)]
    assert rows[1] > rows[0]  # the domain words' rows, from the run
    assert merged["grown_rows"] == {"bert.embeddings.word_embeddings.weight": {"from": "A", "rows": rows}}
    assert "cls.predictions.transform.dense.weight" in merged["carried_tensors"]
    # the folder written is the model scored (its saved pooling and prompts read back)
    rescored = dense_evaluation(DenseEncoder.from_pretrained(str(merged_dir), max_length=128, batch_size=32),
                                read_retrieval_eval(tmp_path / "eval"))[0]["ndcg_at_10"]
    assert rescored == pytest.approx(merged["ndcg_at_10"], abs=1e-6)

    rm_dir = tmp_path / "retromae"
    assert retromae.main(["--model_name_or_path", str(mlm_dir), "--output_dir", str(rm_dir), "--max_steps", "4",
                          "--mlm_probability", "0.3", *common]) == 0
    record = json.loads((rm_dir / "run_config.json").read_text())["arguments"]
    assert record["sentence_pooling"] == "mean"  # from the folder it continued
    assert saved_sentence_settings(str(rm_dir))["pooling"] == "mean"
    state = AutoModelForMaskedLM.from_pretrained(rm_dir).state_dict()
    assert "cls.predictions.transform.dense.weight" in state  # the MLM head survives the ST files


def test_topics_take_the_clustering_prompt(e5_pruned_dir):
    from sentence_transformers import SentenceTransformer

    from finbert2.errors import ConfigError
    from finbert2.topics.embeddings import topic_prompt

    model = SentenceTransformer(str(e5_pruned_dir), device="cpu")
    assert topic_prompt(model) == "query: " and topic_prompt(model, "document") == "passage: "
    with pytest.raises(ConfigError, match="no prompt 'summary'"):
        topic_prompt(model, "summary")
