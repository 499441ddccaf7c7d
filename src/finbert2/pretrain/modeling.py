"""The pretraining models: BERT MLM with the loss on masked positions only, and RetroMAE.

Both subclass ``BertForMaskedLM`` and change only its public ``forward``, so the Trainer saves and
resumes them like any transformers model, and the encoder they train is exactly a BERT: the run's
final folder is written by ``save_encoder`` as a plain ``BertForMaskedLM``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM
from transformers.utils import ModelOutput

from finbert2.losses import linear_cross_entropy
from finbert2.pretrain.whole_word_masking import IGNORE_INDEX


def masked_lm_loss(model: BertForMaskedLM, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the MLM head at the labelled positions only.

    The head (dense + LayerNorm + a vocabulary-sized projection) runs on the gathered masked
    positions, ~15% of the tokens, instead of all of them: the same loss as full logits, a
    fraction of the compute. The projection and the softmax are fused (``linear_cross_entropy``):
    no full-vocabulary float32 logits are materialised.
    """
    selected = labels != IGNORE_INDEX
    targets = labels[selected]
    if targets.numel() == 0:  # no masked token in the batch: a zero loss that keeps the graph
        return hidden.sum() * 0.0
    head = model.cls.predictions
    decoder = head.decoder
    return linear_cross_entropy(head.transform(hidden[selected]), decoder.weight, decoder.bias, targets)


@dataclass
class MaskedLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    num_masked: torch.Tensor | None = None


class BertForMaskedPositionsLM(BertForMaskedLM):
    """``BertForMaskedLM`` whose training forward computes vocabulary logits at masked positions only."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, labels=None):
        if labels is None:  # plain inference: the parent's full logits
            return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids, position_ids=position_ids)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           position_ids=position_ids).last_hidden_state
        return MaskedLMOutput(loss=masked_lm_loss(self, hidden, labels),
                              num_masked=(labels != IGNORE_INDEX).sum())


class EnhancedDecoderLayer(nn.Module):
    """RetroMAE's one-layer enhanced decoder: a post-LN transformer layer whose queries come from one
    stream (sentence embedding + positions) and keys/values from another (token embeddings with the
    sentence embedding at position 0), under a per-position visibility mask."""

    def __init__(self, config: BertConfig):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attention_output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(hidden, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.attention_dropout = config.attention_probs_dropout_prob

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        return x.view(batch, length, self.num_heads, hidden // self.num_heads).transpose(1, 2)

    def forward(self, query_stream: torch.Tensor, content_stream: torch.Tensor,
                visible: torch.Tensor) -> torch.Tensor:
        """``visible[b, i, j]``: query position ``i`` of row ``b`` may attend to content position ``j``."""
        attended = F.scaled_dot_product_attention(
            self._heads(self.query(query_stream)), self._heads(self.key(content_stream)),
            self._heads(self.value(content_stream)), attn_mask=visible[:, None],
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        attended = attended.transpose(1, 2).reshape(query_stream.shape)
        hidden = self.attention_norm(query_stream + self.dropout(self.attention_output(attended)))
        return self.output_norm(hidden + self.dropout(self.output(F.gelu(self.intermediate(hidden)))))


@dataclass
class RetroMAEOutput(ModelOutput):
    loss: torch.Tensor | None = None
    encoder_mlm_loss: torch.Tensor | None = None
    decoder_loss: torch.Tensor | None = None


class RetroMAEForPretraining(BertForMaskedLM):
    """BERT encoder + MLM head (shared with the decoder) + one enhanced decoder layer.

    loss = encoder MLM loss (masked input, masked positions) + decoder loss (every non-special
    token reconstructed from the sentence embedding and the visible original tokens).
    """

    sentence_pooling = "cls"  # how the encoder's sentence embedding is read: cls (RetroMAE) or mean (e5)

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.retromae_decoder = EnhancedDecoderLayer(config)
        self.post_init()

    def decode(self, sentence_embedding: torch.Tensor, decoder_input_ids: torch.Tensor,
               decoder_visible: torch.Tensor) -> torch.Tensor:
        """The decoder's hidden states for every position, from the sentence embedding
        ``(batch, hidden)`` and the visible original tokens.

        As in the RetroMAE authors' code: the query stream is the sentence embedding plus each
        position's embedding (no token type, no LayerNorm); the content stream is the original
        tokens through the embedding layer, with position 0 replaced by the sentence embedding.
        (FlagEmbedding's copy passes the query stream through the whole embedding layer instead;
        its position-only line is left commented out there.)
        """
        sentence = sentence_embedding[:, None]
        length = decoder_input_ids.shape[1]
        positions = torch.arange(length, device=decoder_input_ids.device)
        query_stream = sentence + self.bert.embeddings.position_embeddings(positions)[None]
        content = self.bert.embeddings(input_ids=decoder_input_ids)
        content_stream = torch.cat([sentence, content[:, 1:]], dim=1)
        return self.retromae_decoder(query_stream, content_stream, decoder_visible)

    def sentence_embedding(self, encoded: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from finbert2.retrieve.encoder import pool

        return pool(encoded, attention_mask, self.sentence_pooling)

    def forward(self, input_ids=None, attention_mask=None, labels=None, decoder_input_ids=None,
                decoder_labels=None, decoder_visible=None):
        encoded = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        encoder_loss = masked_lm_loss(self, encoded, labels)
        decoded = self.decode(self.sentence_embedding(encoded, attention_mask), decoder_input_ids, decoder_visible)
        decoder_loss = masked_lm_loss(self, decoded, decoder_labels)
        return RetroMAEOutput(loss=encoder_loss + decoder_loss, encoder_mlm_loss=encoder_loss.detach(),
                              decoder_loss=decoder_loss.detach())


def save_encoder(model: BertForMaskedLM, tokenizer, output_dir: str | Path) -> None:
    """Save the encoder and MLM head as a plain ``BertForMaskedLM`` folder (safetensors) with its tokenizer.

    ``AutoModel`` and ``AutoModelForMaskedLM`` load it with no custom code; RetroMAE's decoder
    layer is left out (it only serves pretraining).
    """
    plain = BertForMaskedLM(model.config)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("retromae_decoder.")}
    missing, unexpected = plain.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}]
    if missing or unexpected:
        raise RuntimeError(f"encoder export mismatch: missing {missing}, unexpected {unexpected}")
    plain.config.architectures = ["BertForMaskedLM"]
    plain.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
