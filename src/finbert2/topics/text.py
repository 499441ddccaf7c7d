"""Chinese word counting for topic words: jieba with user dictionaries and stopword lists.

BERTopic describes each topic by c-TF-IDF over the words a ``CountVectorizer`` counts. Chinese has
no spaces, so the vectorizer gets a jieba tokenizer that knows financial terms (a user dictionary)
and drops function words (a stopword list). Single characters, numbers and punctuation are
dropped too, so topic words are words, never characters or whole sentences.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import jieba
from sklearn.feature_extraction.text import CountVectorizer

from finbert2.data import iter_lines
from finbert2.segmentation import new_segmenter
from finbert2.errors import DataError

DEFAULT_STOPWORDS = "stopwords_zh.txt"
DEFAULT_USERDICT = "userdict_zh.txt"

# A token that is only digits, punctuation, symbols or spaces (e.g. "2021", "7.5%", "——").
_NOT_A_WORD = re.compile(r"^[\W\d_]+$", re.UNICODE)



def resource_path(name: str) -> Path:
    """A file shipped in ``finbert2/topics/resources``."""
    return Path(str(resources.files("finbert2.topics") / "resources" / name))


def read_word_list(paths: Iterable[str | Path]) -> list[str]:
    """Words from one-a-line files (a jieba user dictionary's frequency/POS columns are kept out)."""
    words: list[str] = []
    for path in paths:
        for _, line in iter_lines(path):
            word = line.strip().split(" ")[0]
            if word:
                words.append(word)
    return words


class JiebaWordTokenizer:
    """A picklable callable: text -> list of words for ``CountVectorizer(tokenizer=...)``.

    It owns a ``jieba.Tokenizer``, so user dictionaries never leak into jieba's global one.
    """

    def __init__(self, userdict_files: Sequence[str | Path] = (), stopword_files: Sequence[str | Path] = (),
                 min_word_length: int = 2, lowercase: bool = True):
        self.userdict_files = [str(p) for p in userdict_files]
        self.stopword_files = [str(p) for p in stopword_files]
        self.min_word_length = min_word_length
        self.lowercase = lowercase
        self.user_words = read_word_list(self.userdict_files)
        self.stopwords = set(read_word_list(self.stopword_files))
        if lowercase:
            self.stopwords |= {w.lower() for w in self.stopwords}
        self._jieba = None

    def _segmenter(self) -> jieba.Tokenizer:
        if self._jieba is None:
            segmenter = new_segmenter()
            segmenter.initialize()
            for word in self.user_words:
                segmenter.add_word(word)
            self._jieba = segmenter
        return self._jieba

    def is_word(self, token: str) -> bool:
        return (len(token) >= self.min_word_length and token not in self.stopwords
                and not _NOT_A_WORD.match(token))

    def __call__(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        return [t for t in (tok.strip() for tok in self._segmenter().lcut(text, HMM=True)) if self.is_word(t)]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_jieba"] = None  # rebuilt on first use
        return state


def build_tokenizer(userdict: Sequence[str] | None, stopwords: Sequence[str] | None,
                    min_word_length: int = 2) -> JiebaWordTokenizer:
    """The word tokenizer over the given files, or the package's small defaults when none are given."""
    userdict_files = list(userdict) if userdict else [resource_path(DEFAULT_USERDICT)]
    stopword_files = list(stopwords) if stopwords else [resource_path(DEFAULT_STOPWORDS)]
    for path in [*userdict_files, *stopword_files]:
        if not Path(path).is_file():
            raise DataError(path, None, "no such file (user dictionary / stopword list)")
    return JiebaWordTokenizer(userdict_files, stopword_files, min_word_length=min_word_length)


def build_vectorizer(tokenizer: JiebaWordTokenizer, min_df: int | float = 1, max_df: int | float = 1.0,
                     vocabulary: dict[str, int] | None = None) -> CountVectorizer:
    """BERTopic's word counter: our tokenizer, no sklearn token pattern, no sklearn lowercasing."""
    return CountVectorizer(tokenizer=tokenizer, token_pattern=None, lowercase=False, min_df=min_df,
                           max_df=max_df, vocabulary=vocabulary)
