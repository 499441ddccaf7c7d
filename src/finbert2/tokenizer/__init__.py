"""Tokenizer stage: SentencePiece unigram training and a BERT WordPiece vocab extended with domain words."""

from finbert2.tokenizer.embeddings import resize_embeddings_mean_init
from finbert2.tokenizer.vocab import extend_tokenizer, load_base_tokenizer, tokens_per_char

__all__ = ["extend_tokenizer", "load_base_tokenizer", "resize_embeddings_mean_init", "tokens_per_char"]
