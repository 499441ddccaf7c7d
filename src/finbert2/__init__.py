"""FinBERT2 toolkit: rebuild and use the Chinese financial BERT suite (KDD 2025)."""

__version__ = "0.1.0"
