"""Model loading shared by the stages: from a folder, from scratch, growing an extended vocab."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM

from finbert2.errors import ConfigError
from finbert2.modeling import ModelArguments, load_model, tokenizer_for
from finbert2.tokenizer.vocab import extend_tokenizer
from finbert2.training import LossLogCallback, plot_loss_curves, read_loss_log


def test_load_from_folder_and_scratch(tiny_bert_dir, tiny_tokenizer_dir):
    args = ModelArguments(model_name_or_path=str(tiny_bert_dir))
    tokenizer = tokenizer_for(args)
    model = load_model(AutoModelForMaskedLM, args, tokenizer)
    reference = BertForMaskedLM.from_pretrained(tiny_bert_dir)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name

    scratch_args = ModelArguments(tokenizer_name=str(tiny_tokenizer_dir), tiny_hidden_size=32,
                                  tiny_num_hidden_layers=1, tiny_num_attention_heads=2, tiny_intermediate_size=64)
    scratch = load_model(AutoModel, scratch_args, tokenizer_for(scratch_args))
    assert scratch.config.hidden_size == 32 and scratch.config.vocab_size == len(tokenizer)

    with pytest.raises(ConfigError, match="give model_name_or_path"):
        ModelArguments()
    with pytest.raises(ConfigError, match="cannot load a model"):
        load_model(AutoModel, ModelArguments(model_name_or_path=str(tiny_tokenizer_dir)), tokenizer)


def test_extended_tokenizer_grows_embeddings(tiny_bert_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    base_size = len(tokenizer)
    assert extend_tokenizer(tokenizer, ["新词甲乙", "新词丙丁"]) == 2
    tokenizer.save_pretrained(tmp_path / "extended")
    args = ModelArguments(model_name_or_path=str(tiny_bert_dir), tokenizer_name=str(tmp_path / "extended"))
    extended = tokenizer_for(args)
    with pytest.raises(ConfigError, match="grow them"):
        load_model(AutoModelForMaskedLM, args, extended)
    model = load_model(AutoModelForMaskedLM, args, extended, grow_embeddings=True)
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == base_size + 2
    pieces = AutoTokenizer.from_pretrained(tiny_bert_dir)("新词甲乙", add_special_tokens=False).input_ids
    assert torch.allclose(weight[base_size], weight[pieces].mean(0))


def test_loss_log_and_plot(tmp_path):
    callback = LossLogCallback(tmp_path)

    class State:
        is_world_process_zero = True
        epoch = 0.5

    for step, loss in [(1, 3.0), (2, 2.5), (2, 2.4), (3, 2.0)]:
        State.global_step = step
        callback.on_log(None, State, None, logs={"loss": loss, "learning_rate": 1e-4})
    State.global_step = 3
    callback.on_log(None, State, None, logs={"eval_loss": 2.2})
    callback.on_log(None, State, None, logs={"train_runtime": 1.0})  # no loss: not a row
    series = read_loss_log(tmp_path / "loss_log.csv")
    assert series["loss"] == [(1, 3.0), (2, 2.4), (3, 2.0)]  # last row of a step wins
    assert series["eval_loss"] == [(3, 2.2)]
    png = plot_loss_curves(tmp_path)
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_pickle_weights_refused_unless_allowed(tiny_bert_dir, tmp_path):
    model = BertForMaskedLM.from_pretrained(tiny_bert_dir)
    pickled = tmp_path / "pickled"  # a folder as older tools wrote it: config + pytorch_model.bin
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(pickled)
    args = ModelArguments(model_name_or_path=str(pickled))
    with pytest.raises(ConfigError, match=r"holds only pickle weights \(pytorch_model\.bin\).*--allow_pickle_weights"):
        load_model(AutoModelForMaskedLM, args, tokenizer_for(args))
    allowed = ModelArguments(model_name_or_path=str(pickled), allow_pickle_weights=True)
    loaded = load_model(AutoModelForMaskedLM, allowed, tokenizer_for(allowed))
    for (name, a), b in zip(loaded.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_dropout_options_set_the_config_and_freezing_stops_embedding_gradients(tiny_bert_dir, tiny_tokenizer_dir,
                                                                              tmp_path):
    args = ModelArguments(model_name_or_path=str(tiny_bert_dir), attention_dropout=0.0, hidden_dropout=0.05,
                          freeze_word_embeddings=True)
    assert args.config_overrides() == {"attention_probs_dropout_prob": 0.0, "hidden_dropout_prob": 0.05}
    model = load_model(AutoModelForMaskedLM, args, tokenizer_for(args))
    assert model.config.attention_probs_dropout_prob == 0.0 and model.config.hidden_dropout_prob == 0.05
    dropouts = {name.rsplit(".", 2)[-2]: m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert dropouts["self"] == 0.0 and dropouts["output"] == 0.05 and dropouts["embeddings"] == 0.05, dropouts
    # The decoder is tied to the embeddings: frozen with them; its bias and the encoder still train.
    embedding = model.get_input_embeddings().weight
    assert not embedding.requires_grad and model.get_output_embeddings().weight is embedding
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "cls.predictions.bias" in trainable and "bert.encoder.layer.0.attention.self.query.weight" in trainable
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert embedding.grad is None and model.bert.encoder.layer[0].attention.self.query.weight.grad is not None

    defaults = load_model(AutoModelForMaskedLM, ModelArguments(model_name_or_path=str(tiny_bert_dir)),
                          tokenizer_for(args))
    assert defaults.config.attention_probs_dropout_prob == 0.1 and defaults.get_input_embeddings().weight.requires_grad

    scratch_args = ModelArguments(tokenizer_name=str(tiny_tokenizer_dir), tiny_hidden_size=32, tiny_num_hidden_layers=1,
                                  tiny_num_attention_heads=2, tiny_intermediate_size=64, hidden_dropout=0.0,
                                  freeze_word_embeddings=True)
    scratch = load_model(AutoModel, scratch_args, tokenizer_for(scratch_args))
    assert scratch.config.hidden_dropout_prob == 0.0 and not scratch.get_input_embeddings().weight.requires_grad

    with pytest.raises(ConfigError, match=r"attention_dropout must be in \[0, 1\), got 1.0"):
        ModelArguments(model_name_or_path=str(tiny_bert_dir), attention_dropout=1.0)
    from transformers import DistilBertConfig, DistilBertModel

    DistilBertModel(DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(
        tmp_path / "distil")
    with pytest.raises(ConfigError, match="a distilbert config has no attention_probs_dropout_prob"):
        load_model(AutoModel, ModelArguments(model_name_or_path=str(tmp_path / "distil"),
                                             tokenizer_name=str(tiny_bert_dir), attention_dropout=0.0),
                   tokenizer_for(args))
