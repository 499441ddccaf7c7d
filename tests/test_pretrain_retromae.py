"""RetroMAE: decoder visibility masks, the enhanced decoder, training lowers both losses, a plain BERT out."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

from conftest import DEMO_DIR
from finbert2.data import read_corpus
from finbert2.pretrain.data import line_by_line_examples
from finbert2.pretrain.modeling import RetroMAEForPretraining
from finbert2.pretrain.retromae import RetroMAECollator, decoder_visibility, main
from finbert2.pretrain.whole_word_masking import IGNORE_INDEX, JiebaWordSegmenter, WholeWordMaskCollator

CORPUS = DEMO_DIR / "corpus.jsonl"


def test_decoder_visibility_mask():
    torch.manual_seed(0)
    one_token_words = [-1, *range(298), -1]  # [CLS], 298 one-token words, [SEP]
    visible = decoder_visibility(one_token_words, 0.5)
    # No position sees itself, except the [CLS] query (never predicted), which sees position 0 like all.
    assert not bool(visible.diagonal()[1:].any())
    assert bool(visible[:, 0].all())  # the sentence embedding is always seen
    off_diagonal = ~torch.eye(300, dtype=torch.bool)
    off_diagonal[:, 0] = False
    assert abs(1 - visible[off_diagonal].float().mean().item() - 0.5) < 0.01
    off_diagonal[:, -1] = False  # [SEP] is never hidden either
    assert abs(1 - visible[off_diagonal].float().mean().item() - 0.5) < 0.01
    assert bool(visible[:-1, -1].all())
    rows = 1 - visible[:, 1:-1].float().mean(dim=1)  # hidden share per row varies around 0.5
    assert rows.min() > 0.35 and rows.max() < 0.65
    assert abs(1 - decoder_visibility(one_token_words, 0.7)[off_diagonal].float().mean().item() - 0.7) < 0.01
    generator = torch.Generator().manual_seed(3)
    assert torch.equal(decoder_visibility(one_token_words[:50], 0.5, generator),
                       decoder_visibility(one_token_words[:50], 0.5, torch.Generator().manual_seed(3)))


def test_decoder_visibility_hides_whole_words():
    """As the reference's per-position whole-word masks: a word's tokens are hidden together (the
    predicted position itself aside), special tokens never."""
    words = [-1, 0, 0, 0, 1, 1, 2, 3, 3, -1]
    torch.manual_seed(1)
    for _ in range(20):
        visible = decoder_visibility(words, 0.5)
        for i in range(len(words)):
            for word in set(words) - {-1}:
                seen = {bool(visible[i, j]) for j, w in enumerate(words) if w == word and j != i}
                assert len(seen) <= 1, (i, word, visible[i])
            assert bool(visible[i, 0]) and (i == len(words) - 1 or bool(visible[i, -1]))
        assert not bool(visible.diagonal()[1:].any())


@pytest.fixture(scope="module")
def batch_parts(tiny_tokenizer_dir):
    # The tokenizer of tiny_bert_dir, so every id has an embedding row there.
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    examples = line_by_line_examples(read_corpus(CORPUS)[:8], tokenizer, JiebaWordSegmenter(), max_seq_length=96)
    collator = RetroMAECollator(WholeWordMaskCollator(tokenizer, mlm_probability=0.3), decoder_mask_ratio=0.5)
    torch.manual_seed(0)
    return tokenizer, examples, collator, collator(examples)


def test_collator_builds_encoder_and_decoder_inputs(batch_parts):
    tokenizer, examples, _, batch = batch_parts
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        original = torch.tensor(example["input_ids"])
        special = torch.tensor(example["word_ids"]) < 0
        assert torch.equal(batch["decoder_input_ids"][row, :n], original)  # decoder sees the unmasked text
        # The decoder predicts every non-special token; the encoder only its masked words.
        expected = original.masked_fill(special, IGNORE_INDEX)
        assert torch.equal(batch["decoder_labels"][row, :n], expected)
        assert bool((batch["decoder_labels"][row, n:] == IGNORE_INDEX).all())
        encoder_targets = batch["labels"][row, :n] != IGNORE_INDEX
        assert 0 < encoder_targets.sum() < n and not bool(encoder_targets[special].any())
        visible = batch["decoder_visible"][row]
        assert not bool(visible[:n, :n].diagonal()[1:].any()) and bool(visible[:, 0].all())
        assert not bool(visible[:, n:].any())  # padding is never attended to
    words = sum(len({w for w in e["word_ids"] if w >= 0}) for e in examples)
    masked_words = sum(len({w for w, l in zip(e["word_ids"], batch["labels"][r].tolist()) if l != IGNORE_INDEX})
                       for r, e in enumerate(examples))
    assert abs(masked_words / words - 0.3) < 0.05


def test_decoder_position_never_sees_its_own_token(tiny_bert_dir, batch_parts):
    _, examples, _, batch = batch_parts
    model = RetroMAEForPretraining.from_pretrained(tiny_bert_dir).eval()
    sentence = torch.randn(batch["input_ids"].shape[0], model.config.hidden_size)
    ids = batch["decoder_input_ids"]
    visible = batch["decoder_visible"]
    with torch.no_grad():
        before = model.decode(sentence, ids, visible)
        changed = ids.clone()
        changed[:, 5] = (changed[:, 5] + 7) % model.config.vocab_size
        after = model.decode(sentence, changed, visible)
    torch.testing.assert_close(after[:, 5], before[:, 5])  # position 5 cannot see token 5
    sees_5 = visible[0, :, 5].nonzero().flatten()
    hidden_5 = (~visible[0, :, 5]).nonzero().flatten()
    assert not torch.allclose(after[0, sees_5], before[0, sees_5])
    torch.testing.assert_close(after[0, hidden_5], before[0, hidden_5])
    # The loss is the sum of its two parts.
    with torch.no_grad():
        out = model(**batch)
    torch.testing.assert_close(out.loss, out.encoder_mlm_loss + out.decoder_loss)


def test_retromae_lowers_both_losses_and_saves_a_plain_bert(tiny_bert_dir, tmp_path):
    out = tmp_path / "retromae"
    code = main([
        "--model_name_or_path", str(tiny_bert_dir), "--train_data", str(CORPUS), "--output_dir", str(out),
        "--line_by_line", "True", "--max_seq_length", "64", "--mlm_probability", "0.3",
        "--max_train_samples", "384", "--max_eval_samples", "64", "--per_device_train_batch_size", "16",
        "--learning_rate", "3e-3", "--warmup_steps", "3", "--max_steps", "24", "--logging_steps", "6",
        "--eval_strategy", "no", "--save_steps", "12", "--report_to", "none", "--use_cpu", "True",
        "--disable_tqdm", "True", "--merge_with_start", "1",
    ])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["encoder_mlm_loss"] < metrics["initial_eval_encoder_mlm_loss"] - 0.5, metrics
    # the merge's held-out loss is its encoder's MLM loss: at alpha 1 (the saved model) the run's own
    assert metrics["merge_mlm_loss"] == pytest.approx(metrics["encoder_mlm_loss"], abs=1e-5)
    assert (out / "merged_with_start" / "metrics.json").is_file()
    assert metrics["decoder_loss"] < metrics["initial_eval_decoder_loss"] - 0.5, metrics
    assert metrics["eval_loss"] == pytest.approx(metrics["encoder_mlm_loss"] + metrics["decoder_loss"], abs=1e-4)
    assert metrics["train_tokens_per_second"] > 0 and metrics["global_step"] == 24
    header = (out / "loss_log.csv").read_text().splitlines()[0]
    assert "encoder_mlm_loss" in header and "decoder_loss" in header
    # A standard BERT folder: no decoder weights, the BERT architecture, loadable by the auto classes.
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"] and config["model_type"] == "bert"
    saved = load_file(out / "model.safetensors")
    assert not any(k.startswith("retromae_decoder") for k in saved)
    encoder = AutoModel.from_pretrained(out)
    for name, tensor in encoder.state_dict().items():
        if f"bert.{name}" in saved:
            assert torch.equal(tensor, saved[f"bert.{name}"]), name
    # ... and the checkpoint (for resuming) keeps the decoder, whose encoder part equals the export.
    checkpoint = load_file(out / "checkpoint-24" / "model.safetensors")
    assert any(k.startswith("retromae_decoder") for k in checkpoint)
    torch.testing.assert_close(checkpoint["bert.encoder.layer.0.attention.self.query.weight"],
                               saved["bert.encoder.layer.0.attention.self.query.weight"])
    assert isinstance(AutoModelForMaskedLM.from_pretrained(out), torch.nn.Module)


@pytest.mark.parametrize("config", ["mlm/tiny.yaml", "mlm/base.yaml", "mlm/e5-small.yaml", "retromae/tiny.yaml",
                                    "retromae/base.yaml", "retromae/e5-small.yaml"])
def test_configs_parse(config, tmp_path):
    """Every config's keys are known arguments with valid values, parsed as the stage parses them."""
    from conftest import REPO_ROOT
    from finbert2.config import parse_args
    from finbert2.modeling import ModelArguments
    from finbert2.precision import PrecisionTrainingArguments
    from finbert2.pretrain.args import PretrainDataArguments, RetroMAEArguments
    from finbert2.pretrain.headless import HeadlessStartArguments
    from finbert2.run import RunArguments

    types = (ModelArguments, PretrainDataArguments, RetroMAEArguments, HeadlessStartArguments,
             PrecisionTrainingArguments, RunArguments)
    if config.startswith("mlm"):
        types = tuple(t for t in types if t is not RetroMAEArguments)
    parsed = parse_args(types, [str(REPO_ROOT / "configs" / config), "--output_dir", str(tmp_path), "--use_cpu", "True"])
    data_args = parsed[1]
    training_args = parsed[-2]
    assert data_args.max_seq_length in {128, 256, 512}
    if "base" in config:
        assert data_args.max_seq_length == 512 and training_args.adam_beta2 == 0.98
    if config == "mlm/base.yaml":
        assert training_args.learning_rate == 6e-4 and training_args.warmup_steps == 1000
        assert training_args.weight_decay == 0.01 and training_args.adam_epsilon == 1e-6


def test_deepspeed_configs_leave_training_arguments_in_charge():
    from conftest import REPO_ROOT

    for path in (REPO_ROOT / "configs" / "deepspeed").glob("*.json"):
        config = json.loads(path.read_text())
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                    "gradient_clipping"):
            assert config[key] == "auto", (path, key)
        assert set(config["optimizer"]["params"].values()) == {"auto"}
        assert set(config["scheduler"]["params"].values()) == {"auto"}
