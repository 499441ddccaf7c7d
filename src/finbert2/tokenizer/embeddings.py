"""Grow a model's embeddings to an extended vocab, each new row the mean of its word's base pieces."""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from finbert2.tokenizer.vocab import word_pieces

logger = logging.getLogger(__name__)


@torch.no_grad()
def resize_embeddings_mean_init(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, base_tokenizer: PreTrainedTokenizerBase
) -> dict[int, list[int]]:
    """Resize ``model`` to ``len(tokenizer)`` and initialise every new row from the base tokenizer.

    Row ``i`` of a new token ``w`` becomes the mean of the rows of ``base_tokenizer``'s pieces of
    ``w`` (for 净利润: the rows of 净, 利, 润), in the input embeddings and, when untied, in the
    output embeddings and their bias. Returns ``{new_id: base_piece_ids}`` for the record.
    """
    old_size = model.get_input_embeddings().weight.shape[0]
    new_size = len(tokenizer)
    if new_size <= old_size:
        return {}
    model.resize_token_embeddings(new_size, mean_resizing=False)
    input_weight = model.get_input_embeddings().weight
    output_layer = model.get_output_embeddings()
    tied = getattr(model.config.get_text_config(), "tie_word_embeddings", False)
    if tied and output_layer is not None and output_layer.weight.data_ptr() != input_weight.data_ptr():
        # the config ties the decoder to the embeddings; resize_token_embeddings' own re-tie was
        # seen to leave a fresh decoder matrix in one full-suite run, so tie explicitly
        output_layer.weight = input_weight
    untied_output = output_layer is not None and output_layer.weight.data_ptr() != input_weight.data_ptr()
    output_bias = getattr(output_layer, "bias", None) if output_layer is not None else None
    if output_bias is not None and output_bias.shape[0] != new_size:
        output_bias = None  # a head that keeps its own bias elsewhere; resize_token_embeddings handled it

    fallback = input_weight[:old_size].mean(dim=0)
    pieces_of: dict[int, list[int]] = {}
    for new_id in range(old_size, new_size):
        word = tokenizer.convert_ids_to_tokens(new_id)
        piece_ids = [i for i in word_pieces(base_tokenizer, word) if i < old_size]
        pieces_of[new_id] = piece_ids
        if not piece_ids:
            logger.warning("new token %r has no base pieces; initialised as the mean embedding", word)
            input_weight[new_id] = fallback
            continue
        index = torch.tensor(piece_ids)
        input_weight[new_id] = input_weight[index].mean(dim=0)
        if untied_output:
            output_layer.weight[new_id] = output_layer.weight[index].mean(dim=0)
        if output_bias is not None:
            output_bias[new_id] = output_bias[index].mean()
    logger.info("resized embeddings %d -> %d, new rows mean-initialised from base pieces", old_size, new_size)
    return pieces_of
