"""Chinese whole-word masking: word boundaries, masking shares, whole words, specials, redrawn masks."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import AutoTokenizer

from conftest import DEMO_DIR
from finbert2.data import read_corpus
from finbert2.data import split_heldout
from finbert2.pretrain.data import line_by_line_examples, packed_examples
from finbert2.pretrain.whole_word_masking import (
    IGNORE_INDEX,
    JiebaWordSegmenter,
    WholeWordMaskCollator,
    premask,
    token_word_ids,
)

DEMO_TOKENIZER = DEMO_DIR / "tokenizer"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(DEMO_TOKENIZER)


@pytest.fixture(scope="module")
def segmenter():
    return JiebaWordSegmenter()


@pytest.fixture(scope="module")
def examples(tokenizer, segmenter):
    documents = read_corpus(DEMO_DIR / "corpus.jsonl")[:400]
    return line_by_line_examples(documents, tokenizer, segmenter, max_seq_length=128)


def test_word_ids_follow_jieba_and_offsets(tokenizer, segmenter):
    text = "公司净利润同比增长25.3%，董事会决定分红。"
    words = [w for w, _, _ in segmenter._jieba.tokenize(text)]  # jieba's own segmentation for the check
    owner = segmenter.char_to_word(text)
    # Every character maps to the jieba word that covers it.
    rebuilt: dict[int, str] = {}
    for char, index in zip(text, owner):
        rebuilt[index] = rebuilt.get(index, "") + char
    assert [rebuilt[i] for i in sorted(rebuilt)] == words
    encoded = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    word_ids = token_word_ids(owner, encoded["offset_mapping"], encoded["special_tokens_mask"])
    assert word_ids[0] == -1 and word_ids[-1] == -1  # [CLS], [SEP]
    for token_id, (start, end), word in zip(encoded["input_ids"][1:-1], encoded["offset_mapping"][1:-1], word_ids[1:-1]):
        assert word == owner[start]
    # Two tokens share a word id exactly when they start inside the same jieba word.
    assert len(set(word_ids[1:-1])) < len(word_ids) - 2  # some word spans several tokens here


def test_user_dictionary_changes_boundaries(tmp_path):
    text = "盛川保险转债上涨"
    plain = JiebaWordSegmenter().char_to_word(text)
    user_dict = tmp_path / "dict.txt"
    user_dict.write_text("盛川保险转债 100 n\n", encoding="utf-8")
    with_dict = JiebaWordSegmenter(user_dict).char_to_word(text)
    assert with_dict[:6] == [0] * 6 and len(set(plain[:6])) > 1


def test_missing_user_dictionary_is_a_data_error(tmp_path):
    from finbert2.errors import DataError

    with pytest.raises(DataError, match="no such jieba user dictionary"):
        JiebaWordSegmenter(tmp_path / "missing.txt")


def _mask_statistics(collator, examples, repeats):
    """Counts over many masked sequences, measured per word."""
    words_total = words_masked = 0
    actions = Counter()
    special_ids = set(collator.tokenizer.all_special_ids)
    for _ in range(repeats):
        for example in examples:
            ids = torch.tensor(example["input_ids"])
            word_ids = torch.tensor(example["word_ids"])
            masked, labels = collator.mask_sequence(example["input_ids"], example["word_ids"])
            is_target = labels != IGNORE_INDEX
            # Special tokens are never targets and never changed.
            assert not bool(is_target[word_ids < 0].any())
            assert torch.equal(masked[word_ids < 0], ids[word_ids < 0])
            # Labels hold the original token where set; untouched tokens stay as they were.
            assert torch.equal(labels[is_target], ids[is_target])
            assert torch.equal(masked[~is_target], ids[~is_target])
            for word in torch.unique(word_ids[word_ids >= 0]).tolist():
                in_word = word_ids == word
                target = is_target[in_word]
                words_total += 1
                # Whole words: a word with one target token has all its tokens as targets.
                assert bool(target.all()) or not bool(target.any())
                if not bool(target.any()):
                    continue
                words_masked += 1
                new = masked[in_word]
                if bool((new == collator.tokenizer.mask_token_id).all()):
                    actions["mask"] += 1
                elif torch.equal(new, ids[in_word]):
                    actions["keep"] += 1
                else:
                    actions["random"] += 1
                    assert not (set(new.tolist()) & special_ids)  # random tokens are ordinary tokens
    return words_total, words_masked, actions


def test_masking_shares_whole_words_and_specials(tokenizer, examples):
    torch.manual_seed(0)
    collator = WholeWordMaskCollator(tokenizer)
    words_total, words_masked, actions = _mask_statistics(collator, examples, repeats=3)
    assert words_total > 20000
    assert abs(words_masked / words_total - 0.15) < 0.005
    chosen = sum(actions.values())
    # A random replacement can draw the original token for a one-token word: counted as "keep",
    # a bias of about 0.1 / vocab size, far inside the tolerance.
    assert abs(actions["mask"] / chosen - 0.8) < 0.02
    assert abs(actions["random"] / chosen - 0.1) < 0.015
    assert abs(actions["keep"] / chosen - 0.1) < 0.015


def test_other_probabilities_are_honoured(tokenizer, examples):
    torch.manual_seed(1)
    collator = WholeWordMaskCollator(tokenizer, mlm_probability=0.3, mask_replace_prob=1.0, random_replace_prob=0.0)
    words_total, words_masked, actions = _mask_statistics(collator, examples[:200], repeats=2)
    assert abs(words_masked / words_total - 0.3) < 0.01
    assert actions["random"] == 0 and actions["keep"] == 0


def test_masks_are_redrawn_per_batch_and_fixed_by_seed(tokenizer, examples):
    collator = WholeWordMaskCollator(tokenizer)
    batch = examples[:8]
    torch.manual_seed(7)
    first = collator(batch)
    second = collator(batch)
    torch.manual_seed(7)
    again = collator(batch)
    assert not torch.equal(first["labels"], second["labels"])  # a new epoch sees new masks
    assert torch.equal(first["labels"], again["labels"]) and torch.equal(first["input_ids"], again["input_ids"])


def test_batch_padding(tokenizer, examples):
    collator = WholeWordMaskCollator(tokenizer, pad_to_multiple_of=8)
    batch = collator(examples[:5])
    lengths = [len(e["input_ids"]) for e in examples[:5]]
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] >= max(lengths)
    for row, n in enumerate(lengths):
        assert batch["attention_mask"][row].sum() == n
        assert bool((batch["input_ids"][row, n:] == tokenizer.pad_token_id).all())
        assert bool((batch["labels"][row, n:] == IGNORE_INDEX).all())


def test_premasked_examples_are_only_padded(tokenizer, examples):
    collator = WholeWordMaskCollator(tokenizer)
    fixed = premask(examples[:6], collator, seed=3)
    again = premask(examples[:6], collator, seed=3)
    assert all(torch.equal(a["labels"], b["labels"]) and torch.equal(a["input_ids"], b["input_ids"])
               for a, b in zip(fixed, again))
    assert any((e["labels"] != IGNORE_INDEX).any() for e in fixed)
    batch = collator(fixed)
    for row, example in enumerate(fixed):
        n = len(example["input_ids"])
        assert torch.equal(batch["input_ids"][row, :n], example["input_ids"])
        assert torch.equal(batch["labels"][row, :n], example["labels"])


def test_training_masks_change_per_epoch_and_repeat_per_seed(tokenizer, examples):
    from finbert2.pretrain.data import EpochMaskedDataset, PretrainDataset

    collator = WholeWordMaskCollator(tokenizer)
    dataset = EpochMaskedDataset(PretrainDataset(examples[:20]), collator.mask_example, seed=11)
    epoch0 = [dataset[i]["labels"] for i in range(20)]
    torch.manual_seed(123)  # the global RNG plays no part
    assert all(torch.equal(a, dataset[i]["labels"]) for i, a in enumerate(epoch0))
    dataset.set_epoch(1)
    epoch1 = [dataset[i]["labels"] for i in range(20)]
    assert sum(not torch.equal(a, b) for a, b in zip(epoch0, epoch1)) >= 18
    other_seed = EpochMaskedDataset(PretrainDataset(examples[:20]), collator.mask_example, seed=12)
    assert sum(not torch.equal(a, other_seed[i]["labels"]) for i, a in enumerate(epoch0)) >= 18


def test_packed_examples(tokenizer, segmenter):
    documents = read_corpus(DEMO_DIR / "corpus.jsonl")[:50]
    packed = packed_examples(documents, tokenizer, segmenter, max_seq_length=64)
    assert all(len(e["input_ids"]) == 64 for e in packed[:-1]) and len(packed[-1]["input_ids"]) <= 64
    for example in packed:
        assert example["input_ids"][0] == tokenizer.cls_token_id and example["input_ids"][-1] == tokenizer.sep_token_id
        # [SEP] between documents and the ends are special (never masked); the rest are word tokens.
        for token, word in zip(example["input_ids"], example["word_ids"]):
            assert (word < 0) == (token in {tokenizer.cls_token_id, tokenizer.sep_token_id})
    # Every document's tokens appear once, in order: the stream is the documents joined by [SEP].
    stream = [t for e in packed for t in e["input_ids"][1:-1]]
    expected = []
    for doc in documents:
        expected += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    assert stream == expected[:-1]
    # Word ids differ between documents, so masking never joins two documents' words.
    lines = line_by_line_examples(documents[:2], tokenizer, segmenter, max_seq_length=512)
    assert max(lines[0]["word_ids"]) < min(w for w in lines[1]["word_ids"] if w >= 0)


def test_example_limit_stops_early_with_the_same_first_examples(tokenizer, segmenter, monkeypatch):
    """--max_train_samples / --max_eval_samples: the first N examples of the full build, with the corpus's
    tail left untokenized (a quick run on a large corpus does not wait for all of it)."""
    import finbert2.pretrain.data as data

    documents = read_corpus(DEMO_DIR / "corpus.jsonl")[:400]
    full_packed = packed_examples(documents, tokenizer, segmenter, max_seq_length=64)
    full_lines = line_by_line_examples(documents, tokenizer, segmenter, max_seq_length=64)
    monkeypatch.setattr(data, "TOKENIZE_BATCH", 16)
    seen = []
    tokenize = data._tokenize_with_words
    monkeypatch.setattr(data, "_tokenize_with_words",
                        lambda docs, *a: (seen.append(x) or x for x in tokenize(docs, *a)))
    assert data.packed_examples(documents, tokenizer, segmenter, max_seq_length=64, limit=5) == full_packed[:5]
    assert 0 < len(seen) < len(documents) // 2
    seen.clear()
    assert data.line_by_line_examples(documents, tokenizer, segmenter, max_seq_length=64, limit=7) == full_lines[:7]
    assert len(seen) == 7
    everything = data.packed_examples(documents, tokenizer, segmenter, max_seq_length=64, limit=10**6)
    assert everything == full_packed


def test_heldout_split_is_seeded_and_disjoint():
    documents = [f"doc {i}" for i in range(100)]
    train, held = split_heldout(documents, 5, seed=1)
    assert len(held) == 5 and not set(train) & set(held) and len(train) + len(held) == 100
    assert split_heldout(documents, 5, seed=1) == (train, held)
