"""Fin-Retriever: contrastive fine-tuning, hard-negative mining, evaluation, indexing and search.

    sh Fin-retriever/contrastive_finetune.sh configs/retriever/tiny.yaml --output_dir runs/retriever
    finbert2 retrieve mine | train | evaluate | index | search ...
"""

from finbert2.retrieve.encoder import QUERY_INSTRUCTION, DenseEncoder, save_sentence_transformer

__all__ = ["QUERY_INSTRUCTION", "DenseEncoder", "save_sentence_transformer"]
