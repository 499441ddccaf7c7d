"""RetroMAE pretraining: a whole-word-masked encoder and a one-layer enhanced decoder.

    sh FinBERT2/pretrain/run_retromae.sh configs/retromae/tiny.yaml --model_name_or_path runs/mlm --output_dir runs/retromae
    torchrun --nproc_per_node 2 -m finbert2.pretrain.retromae configs/retromae/tiny.yaml --use_cpu True --output_dir OUT

The encoder sees its input with ``mlm_probability`` (0.3) of the words masked and predicts them;
its last-layer [CLS] is the sentence embedding. The decoder reconstructs every token of the
original input from that embedding plus, per position, a random half of the other tokens.
The output folder is the encoder as a plain BERT (``AutoModel`` / ``AutoModelForMaskedLM``), which
the classifier and retriever stages start from.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import TrainingArguments

from finbert2.precision import PrecisionTrainingArguments

from finbert2.config import parse_args
from finbert2.errors import ConfigError
from finbert2.modeling import ModelArguments
from finbert2.pretrain.args import PretrainDataArguments, RetroMAEArguments
from finbert2.pretrain.data import PretrainDataset
from finbert2.pretrain.headless import HeadlessStartArguments
from finbert2.pretrain.modeling import RetroMAEForPretraining
from finbert2.pretrain.runner import finish, run_pretraining
from finbert2.pretrain.whole_word_masking import EVAL_EPOCH, IGNORE_INDEX, WholeWordMaskCollator, example_generator
from finbert2.run import RunArguments, setup_logging

LOSS_COMPONENTS = ("encoder_mlm_loss", "decoder_loss")


def decoder_visibility(word_ids, mask_ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A ``(length, length)`` bool matrix: row ``i`` says which positions decoder position ``i`` sees.

    As in the reference collator (RetroMAE's ``_whole_word_mask`` per row), each position draws its
    own whole-word mask: every word (jieba, all its tokens together) is hidden with probability
    ``mask_ratio``; the position itself is always hidden (it must be predicted without seeing
    itself), special tokens ([CLS], whose slot carries the sentence embedding, and [SEP]) never.
    The reference draws min(L, 128) masks and gives each position a random one of them; drawing one
    per position is the same distribution without the reuse.
    """
    words = torch.as_tensor(word_ids, dtype=torch.long)
    length = words.numel()
    maskable = words >= 0
    visible = torch.ones(length, length, dtype=torch.bool)
    if bool(maskable.any()):
        unique_words, word_index = torch.unique(words[maskable], return_inverse=True)
        hidden_words = torch.rand(length, unique_words.numel(), generator=generator) < mask_ratio
        visible[:, maskable] = ~hidden_words[:, word_index]
    visible.fill_diagonal_(False)
    visible[:, 0] = True
    return visible


@dataclass
class RetroMAECollator:
    """Encoder input whole-word masked (``word_masker``), decoder targets and per-row visibility masks.

    Examples holding ``labels`` were pre-masked (evaluation) and carry their own ``decoder_visible``.
    """

    word_masker: WholeWordMaskCollator
    decoder_mask_ratio: float = 0.5

    def mask_example(self, example: dict, generator: torch.Generator | None = None) -> dict:
        masked, labels = self.word_masker.mask_sequence(example["input_ids"], example["word_ids"], generator)
        original = torch.as_tensor(example["input_ids"], dtype=torch.long)
        special = torch.as_tensor(example["word_ids"]) < 0
        return {
            "input_ids": masked, "labels": labels, "decoder_input_ids": original,
            "decoder_labels": original.masked_fill(special, IGNORE_INDEX),
            "decoder_visible": decoder_visibility(example["word_ids"], self.decoder_mask_ratio, generator),
        }

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        examples = [e if "labels" in e else self.mask_example(e) for e in examples]
        length = self.word_masker.padded_length([len(e["input_ids"]) for e in examples])
        pad_id = self.word_masker.tokenizer.pad_token_id
        batch = len(examples)
        out = {
            "input_ids": torch.full((batch, length), pad_id, dtype=torch.long),
            "attention_mask": torch.zeros((batch, length), dtype=torch.long),
            "labels": torch.full((batch, length), IGNORE_INDEX, dtype=torch.long),
            "decoder_input_ids": torch.full((batch, length), pad_id, dtype=torch.long),
            "decoder_labels": torch.full((batch, length), IGNORE_INDEX, dtype=torch.long),
            # Padding positions are hidden from every query; padded queries see position 0 only.
            "decoder_visible": torch.zeros((batch, length, length), dtype=torch.bool),
        }
        out["decoder_visible"][:, :, 0] = True
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            for name in ("input_ids", "labels", "decoder_input_ids", "decoder_labels"):
                out[name][row, :n] = torch.as_tensor(example[name])
            out["attention_mask"][row, :n] = 1
            out["decoder_visible"][row, :n, :n] = torch.as_tensor(example["decoder_visible"])
        return out


def retromae_collators(data_args: PretrainDataArguments, retromae_args: RetroMAEArguments):
    def make(tokenizer, eval_dataset: PretrainDataset, seed: int):
        collator = RetroMAECollator(
            WholeWordMaskCollator(
                tokenizer, mlm_probability=data_args.mlm_probability, mask_replace_prob=data_args.mask_replace_prob,
                random_replace_prob=data_args.random_replace_prob, pad_to_multiple_of=data_args.pad_to_multiple_of,
            ),
            decoder_mask_ratio=retromae_args.decoder_mask_ratio,
        )
        # Evaluation masks (encoder and decoder) drawn once, so every evaluation compares like with like.
        masked = [collator.mask_example(e, example_generator(seed, EVAL_EPOCH, i))
                  for i, e in enumerate(eval_dataset.examples)]
        return collator, PretrainDataset(masked)

    return make


def run(model_args: ModelArguments, data_args: PretrainDataArguments, retromae_args: RetroMAEArguments,
        training_args: TrainingArguments, run_args: RunArguments, callbacks=(),
        headless_args: HeadlessStartArguments | None = None) -> dict:
    from finbert2.retrieve.encoder import saved_sentence_settings

    start = saved_sentence_settings(model_args.model_name_or_path) if model_args.model_name_or_path else {}
    retromae_args.sentence_pooling = retromae_args.sentence_pooling or start.get("pooling", "cls")

    def configure(model: RetroMAEForPretraining) -> None:
        model.sentence_pooling = retromae_args.sentence_pooling

    metrics = run_pretraining(
        "retromae", model_args, data_args, training_args, run_args,
        model_class=RetroMAEForPretraining, make_collators=retromae_collators(data_args, retromae_args),
        loss_components=LOSS_COMPONENTS, extra_args=(retromae_args,), callbacks=callbacks,
        configure_model=configure, sentence_pooling=retromae_args.sentence_pooling, headless_args=headless_args,
    )
    return finish(training_args.output_dir, metrics, training_args.process_index == 0)


def main(argv: list[str] | None = None) -> int:
    try:
        model_args, data_args, retromae_args, headless_args, training_args, run_args = parse_args(
            (ModelArguments, PretrainDataArguments, RetroMAEArguments, HeadlessStartArguments,
             PrecisionTrainingArguments, RunArguments), argv, prog="finbert2 retromae")
    except ValueError as err:  # TrainingArguments' own validation (e.g. bf16 without hardware support)
        raise ConfigError(f"retromae: {str(err).splitlines()[0]}") from None
    setup_logging()
    run(model_args, data_args, retromae_args, training_args, run_args, headless_args=headless_args)
    return 0


if __name__ == "__main__":
    from finbert2.cli import run_main

    sys.exit(run_main(main))
