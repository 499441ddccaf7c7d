"""SentencePiece training and the choice of domain words to add to a BERT vocab."""

from __future__ import annotations

import io
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from finbert2.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# CJK Unified Ideographs, extension A, compatibility ideographs and the supplementary planes.
_CJK_WORD = re.compile(r"^[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]+$")
_SPM_SPACE = "\u2581"  # SentencePiece's word-boundary marker


def is_chinese_word(text: str) -> bool:
    return bool(_CJK_WORD.match(text))


@dataclass
class DomainWord:
    word: str
    frequency: int | None  # corpus count under the SP model; None when ranked by piece score only
    score: float  # the SentencePiece log-probability of the piece


_SENTENCE_END = re.compile(r"(?<=[。！？!?；;\n])")


def split_sentences(documents: Iterable[str], max_chars: int = 2000) -> Iterator[str]:
    """Sentences for SentencePiece, which skips lines longer than its max_sentence_length."""
    for document in documents:
        for sentence in _SENTENCE_END.split(document):
            sentence = sentence.strip()
            for start in range(0, len(sentence), max_chars):
                yield sentence[start:start + max_chars]


def train_sentencepiece(texts: Iterable[str], model_path: str | Path, **trainer_spec) -> spm.SentencePieceProcessor:
    """Train a SentencePiece model on documents (split into sentences) and write ``model_path``.

    ``trainer_spec`` takes SentencePiece's own flag names (vocab_size, model_type, ...).
    """
    model_path = Path(model_path)
    buffer = io.BytesIO()
    max_chars = trainer_spec.get("max_sentence_length", 4192) // 4  # UTF-8 CJK is 3 bytes a character
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=split_sentences(texts, max_chars), model_writer=buffer, **trainer_spec
        )
    except RuntimeError as err:
        # e.g. "Vocabulary size is too high (50000). Please set it to a value <= 8763."
        message = str(err).strip()
        if "Vocabulary size" in message:
            message += " (lower vocab_size, or set hard_vocab_limit False)"
        raise ConfigError(f"sentencepiece: {message}") from None
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_path.write_bytes(buffer.getvalue())
    return load_sentencepiece(model_path)


def load_sentencepiece(model_path: str | Path) -> spm.SentencePieceProcessor:
    model_path = Path(model_path)
    if not model_path.is_file():
        raise DataError(model_path, None, "no such SentencePiece model")
    processor = spm.SentencePieceProcessor()
    try:
        processor.Load(str(model_path))
    except (OSError, RuntimeError) as err:
        raise DataError(model_path, None, f"not a SentencePiece model ({str(err).strip()})") from None
    return processor


def write_vocab_file(processor: spm.SentencePieceProcessor, path: str | Path) -> None:
    """The ``.vocab`` companion SentencePiece's CLI writes: piece and score per line."""
    lines = [f"{processor.IdToPiece(i)}\t{processor.GetScore(i):g}\n" for i in range(processor.GetPieceSize())]
    Path(path).write_text("".join(lines), encoding="utf-8")


def count_pieces(processor: spm.SentencePieceProcessor, texts: Sequence[str], batch_size: int = 2048,
                 num_threads: int = 2) -> Counter:
    """How often each piece (boundary marker stripped) occurs when the corpus is segmented."""
    counts: Counter = Counter()
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start:start + batch_size])
        for pieces in processor.Encode(batch, out_type=str, num_threads=num_threads):
            counts.update(piece.lstrip(_SPM_SPACE) for piece in pieces)
    return counts


def select_domain_words(
    processor: spm.SentencePieceProcessor,
    base_vocab: set[str],
    texts: Sequence[str] | None,
    min_frequency: int = 50,
    min_length: int = 2,
    max_length: int = 8,
    max_words: int | None = None,
    keep: callable | None = None,
    num_threads: int = 2,
) -> list[DomainWord]:
    """Multi-character Chinese pieces of the SP model that the base vocab lacks.

    With ``texts``, a piece must occur ``min_frequency`` times in them (most frequent first);
    without, pieces are ranked by their SentencePiece score. ``keep`` is an extra filter.
    """
    counts = count_pieces(processor, texts, num_threads=num_threads) if texts else None
    candidates: list[DomainWord] = []
    seen: set[str] = set()
    for piece_id in range(processor.GetPieceSize()):
        if processor.IsControl(piece_id) or processor.IsUnknown(piece_id):
            continue
        word = processor.IdToPiece(piece_id).lstrip(_SPM_SPACE)
        if word in seen or word in base_vocab:
            continue
        if not (min_length <= len(word) <= max_length) or not is_chinese_word(word):
            continue
        frequency = counts.get(word, 0) if counts is not None else None
        if frequency is not None and frequency < min_frequency:
            continue
        if keep is not None and not keep(word):
            continue
        seen.add(word)
        candidates.append(DomainWord(word, frequency, processor.GetScore(piece_id)))
    if counts is not None:
        candidates.sort(key=lambda w: (-w.frequency, -w.score, w.word))
    else:
        candidates.sort(key=lambda w: (-w.score, w.word))
    if max_words is not None:
        candidates = candidates[:max_words]
    return candidates


def jieba_single_word_filter(user_dict: str | None = None):
    """A ``keep`` filter: pieces jieba segments as exactly one word."""
    from finbert2.segmentation import new_segmenter

    segmenter = new_segmenter(user_dict)
    return lambda word: segmenter.lcut(word, HMM=False) == [word]
