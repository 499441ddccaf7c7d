"""Tokenizers: load a base vocab, build a BERT one from scratch, extend any fast tokenizer with domain words.

For a BERT WordPiece base, new words are appended as added tokens (``normalized=False``) of a standard fast BERT tokenizer.
The tokenizers library matches added tokens leftmost-longest on the raw text before BERT's
normalizer puts spaces around every Chinese character, so ``净利润`` stays one token while every
base token keeps its id and tokenization elsewhere is unchanged. The saved folder holds only
standard files, so ``AutoTokenizer.from_pretrained(folder)`` loads it with no custom code. A
unigram (SentencePiece) base such as e5's XLM-R vocabulary gets the words as new pieces of its
model instead (``extend_vocabulary``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, normalizers, pre_tokenizers
from transformers import AutoTokenizer, BertTokenizer, PreTrainedTokenizerBase

from finbert2.data.readers import iter_raw_lines
from finbert2.errors import DataError

logger = logging.getLogger(__name__)

BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SPM_WORD_START = "\u2581"  # SentencePiece's word-start marker


def read_vocab_txt(path: str | Path) -> list[str]:
    """A BERT ``vocab.txt``: one token a line, the line number is the id."""
    path = Path(path)
    # Every line is a token, even a whitespace-like one (bert-base-chinese has U+2028 at id 343).
    tokens = [token for _, token in iter_raw_lines(path)]
    if not tokens:
        raise DataError(path, None, "file is empty")
    for index, token in enumerate(tokens):
        if token == "":
            raise DataError(path, index + 1, "empty line in vocab (ids would shift)")
    duplicates = len(tokens) - len(set(tokens))
    if duplicates:
        raise DataError(path, None, f"{duplicates} duplicate tokens in vocab")
    missing = [t for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]") if t not in tokens]
    if missing:
        raise DataError(path, None, f"vocab lacks special tokens {missing}")
    return tokens


def bert_tokenizer_from_vocab(tokens: Sequence[str], do_lower_case: bool = True,
                              model_max_length: int = 512) -> BertTokenizer:
    """A standard fast BERT tokenizer over an ordered token list (ids = positions)."""
    vocab = {token: index for index, token in enumerate(tokens)}
    # transformers 5 ignores vocab_file=; vocab= builds the WordPiece model directly.
    return BertTokenizer(vocab=vocab, do_lower_case=do_lower_case, model_max_length=model_max_length)


def load_base_tokenizer(name_or_path: str, do_lower_case: bool = True, model_max_length: int = 512):
    """A vocab.txt file, a tokenizer folder or a hub id."""
    path = Path(name_or_path)
    if path.is_file():
        return bert_tokenizer_from_vocab(read_vocab_txt(path), do_lower_case, model_max_length)
    if path.is_dir() and not (path / "tokenizer.json").exists() and (path / "vocab.txt").exists():
        return bert_tokenizer_from_vocab(read_vocab_txt(path / "vocab.txt"), do_lower_case, model_max_length)
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise DataError(name_or_path, None, f"cannot load a tokenizer ({str(err).splitlines()[0]})") from None


def train_scratch_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
                            do_lower_case: bool = True, model_max_length: int = 512) -> BertTokenizer:
    """A small BERT WordPiece vocab built from the corpus: every character it holds, then its frequent words.

    BERT's normalizer and pre-tokenizer split the text, so Chinese characters come one per token
    as in bert-base-chinese and the words are Latin/digit runs; multi-character Chinese words
    come afterwards as added domain words, exactly as when extending a published vocab. Every
    character gets a word-start and a ``##`` continuation entry, so no text maps to [UNK]; the
    rest of the budget goes to whole words seen ``min_frequency`` times or more, by count.
    Ties are broken by the text itself: the same corpus always gives the same vocab, which the
    tokenizers library's WordPieceTrainer does not (its merges follow hash-map order,
    huggingface/tokenizers#1794).
    """
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=do_lower_case
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    word_counts: Counter[str] = Counter()
    for text in texts:
        word_counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    alphabet = {char for word in word_counts for char in word[:1]}
    continuations = {f"##{char}" for word in word_counts for char in word[1:]}
    tokens = list(BERT_SPECIAL_TOKENS) + sorted(alphabet) + sorted(continuations)
    if len(tokens) > vocab_size:
        logger.warning("scratch vocab: the corpus has %d characters, more than vocab_size %d; keeping them all",
                       len(tokens), vocab_size)
    frequent_words = sorted((w for w, n in word_counts.items() if len(w) > 1 and n >= min_frequency),
                            key=lambda w: (-word_counts[w], w))
    tokens += frequent_words[: max(0, vocab_size - len(tokens))]
    return bert_tokenizer_from_vocab(tokens, do_lower_case, model_max_length)


def extend_tokenizer(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> int:
    """Append ``words`` as new tokens (ids after the current last); returns how many were added."""
    existing = tokenizer.get_vocab()
    new_words = [w for w in dict.fromkeys(words) if w not in existing]
    added = tokenizer.add_tokens([AddedToken(w, normalized=False, single_word=False) for w in new_words])
    return added


def backend_model_type(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The tokenizers-library model type of a fast tokenizer: WordPiece, Unigram, BPE (None if slow)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str())["model"]["type"] if backend is not None else None


def word_pieces(tokenizer: PreTrainedTokenizerBase, word: str) -> list[int]:
    """The ids ``tokenizer`` splits ``word`` into, without a lone SentencePiece word-start marker
    (``▁``: a word inside a Chinese sentence carries none)."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    return [i for i in ids if tokenizer.convert_ids_to_tokens(i) != SPM_WORD_START]


def is_one_token(tokenizer: PreTrainedTokenizerBase, word: str) -> bool:
    """``word`` is already a single token of ``tokenizer`` (nothing to add)."""
    return len(word_pieces(tokenizer, word)) == 1


def extend_vocabulary(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> tuple[PreTrainedTokenizerBase, int]:
    """Append ``words`` to any fast tokenizer's vocabulary; returns ``(tokenizer, number added)``.

    Every base token keeps its id; new ids follow the last. A WordPiece (BERT) tokenizer gets them
    as added tokens (``extend_tokenizer``, in place): BERT's pre-tokenizer splits Chinese into
    characters, so a multi-character piece could never be produced otherwise. A unigram
    (SentencePiece, e.g. XLM-R/e5) tokenizer gets them as new pieces of its own model, with the
    score of its most probable ordinary piece: the unigram segmentation then prefers the whole
    word wherever it occurs and handles the ``▁`` word-start marker exactly as for its own pieces
    (as added tokens, every word would be followed by a spurious ``▁`` token). Text without a
    domain word tokenizes exactly as before.
    """
    if backend_model_type(tokenizer) != "Unigram":
        return tokenizer, extend_tokenizer(tokenizer, words)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    existing = {piece for piece, _ in vocab} | set(tokenizer.get_vocab())
    new_words = [w for w in dict.fromkeys(words) if w not in existing]
    if not new_words:
        return tokenizer, 0
    score = max(score for piece, score in vocab if score < 0)  # special pieces score 0
    vocab.extend([word, score] for word in new_words)
    if len(tokenizer) != len(vocab) - len(new_words):
        raise ValueError("tokenizer has tokens outside its unigram model; cannot append pieces after them")
    # Rebuilt through the public save/load path: the saved tokenizer.json is replaced by the extended one.
    with tempfile.TemporaryDirectory(prefix="finbert2-tokenizer-") as tmp:
        tokenizer.save_pretrained(tmp)
        Path(tmp, "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        extended = AutoTokenizer.from_pretrained(tmp)
    if len(extended) != len(vocab):
        raise ValueError(f"extended tokenizer has {len(extended)} tokens, expected {len(vocab)}")
    return extended, len(new_words)


def tokens_per_char(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 512) -> float:
    """Tokens (no special tokens) per non-whitespace character over ``texts``."""
    total_tokens = 0
    total_chars = 0
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start:start + batch_size])
        encoded = tokenizer(batch, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        total_tokens += sum(len(ids) for ids in encoded)
        total_chars += sum(len("".join(text.split())) for text in batch)
    if total_chars == 0:
        raise ValueError("no characters to measure tokens per character on")
    return total_tokens / total_chars


def write_vocab_txt(tokenizer: PreTrainedTokenizerBase, path: str | Path) -> None:
    """All tokens in id order, so tools that read vocab.txt see the extended vocab too (WordPiece only)."""
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError("token ids are not contiguous; refusing to write a vocab.txt that would shift ids")
    Path(path).write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
