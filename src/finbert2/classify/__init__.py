"""Fin-Labeler: fine-tune, evaluate and run FinBERT2 sequence classifiers (``finbert2 classify``)."""
