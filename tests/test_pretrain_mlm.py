"""MLM pretraining: masked-only loss, a real run on public text, save/reload, resume, bad input, torchrun."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM, TrainerCallback

from conftest import DEMO_DIR, REPO_ROOT, require_public
from finbert2.config import parse_args
from finbert2.modeling import ModelArguments
from finbert2.pretrain.args import PretrainDataArguments
from finbert2.pretrain.data import line_by_line_examples
from finbert2.pretrain.mlm import main, run
from finbert2.pretrain.modeling import BertForMaskedPositionsLM
from finbert2.pretrain.whole_word_masking import JiebaWordSegmenter, WholeWordMaskCollator
from finbert2.run import RunArguments

CORPUS = DEMO_DIR / "corpus.jsonl"


def mlm_args(*argv):
    from transformers import TrainingArguments

    return parse_args((ModelArguments, PretrainDataArguments, TrainingArguments, RunArguments), list(argv))


def small_run_argv(model_dir, output_dir, *extra):
    """A few CPU-seconds of MLM on the 2-layer hidden-64 fixture model."""
    return [
        "--model_name_or_path", str(model_dir), "--train_data", str(CORPUS), "--output_dir", str(output_dir),
        "--max_seq_length", "64", "--max_train_samples", "96", "--max_eval_samples", "32",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "32", "--learning_rate", "1e-3",
        "--max_steps", "8", "--save_steps", "4", "--logging_steps", "2", "--eval_strategy", "no",
        "--report_to", "none", "--use_cpu", "True", "--seed", "5", "--disable_tqdm", "True", *extra,
    ]


def test_masked_only_loss_equals_full_logits_loss(tiny_bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    examples = line_by_line_examples([json.loads(l)["text"] for l in CORPUS.open(encoding="utf-8")][:6],
                                     tokenizer, JiebaWordSegmenter(), max_seq_length=96)
    torch.manual_seed(0)
    batch = WholeWordMaskCollator(tokenizer)(examples)
    ours = BertForMaskedPositionsLM.from_pretrained(tiny_bert_dir).eval()
    reference = BertForMaskedLM.from_pretrained(tiny_bert_dir).eval()
    loss_ours = ours(**batch).loss
    loss_reference = reference(**batch).loss  # full-vocabulary logits at every position
    torch.testing.assert_close(loss_ours, loss_reference, rtol=1e-5, atol=1e-5)
    loss_ours.backward()
    loss_reference.backward()
    for (name, p_ours), (_, p_ref) in zip(ours.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(p_ours.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)
    # Without labels it is a plain BertForMaskedLM (full logits).
    with torch.no_grad():
        logits = ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (*batch["input_ids"].shape, len(tokenizer))


def test_mlm_lowers_eval_loss_on_public_financial_text(tiny_bert_dir, tmp_path):
    corpus = require_public("cfbenchmark-basic", "data", "sentiment.jsonl")
    out = tmp_path / "mlm"
    code = main([
        "--model_name_or_path", str(tiny_bert_dir), "--train_data", str(corpus), "--text_field", "input",
        "--output_dir", str(out), "--max_seq_length", "128", "--validation_split_percentage", "10",
        "--per_device_train_batch_size", "16", "--learning_rate", "3e-3", "--warmup_steps", "4",
        "--max_steps", "40", "--logging_steps", "10", "--eval_strategy", "steps", "--eval_steps", "20",
        "--save_steps", "20", "--report_to", "none", "--use_cpu", "True", "--disable_tqdm", "True",
    ])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_loss"] < metrics["initial_eval_loss"] - 1.0, metrics
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert metrics["global_step"] == 40 and metrics["train_tokens_per_second"] > 0
    assert metrics["train_loss"] > 0 and metrics["eval_sequences"] > 0
    for name in ("run_config.json", "run.log", "loss_log.csv", "loss.png", "checkpoint-40"):
        assert (out / name).exists(), name
    log = (out / "loss_log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and any(line.startswith("20,") for line in log[1:])
    # The output is a plain BERT: both auto classes load it, with the saved weights exactly.
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"]
    saved = load_file(out / "model.safetensors")
    reloaded = AutoModelForMaskedLM.from_pretrained(out)
    for name, tensor in reloaded.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name
    assert isinstance(AutoModel.from_pretrained(out), torch.nn.Module)
    assert len(AutoTokenizer.from_pretrained(out)) == reloaded.config.vocab_size


class StopAfterSave(TrainerCallback):
    """Simulates a crash right after the checkpoint of step ``step`` is written."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_resumed_run_matches_uninterrupted_run(tiny_bert_dir, tmp_path):
    run(*mlm_args(*small_run_argv(tiny_bert_dir, tmp_path / "straight")))
    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run(*mlm_args(*small_run_argv(tiny_bert_dir, interrupted)), callbacks=[StopAfterSave(4)])
    assert (interrupted / "checkpoint-4").is_dir() and not (interrupted / "metrics.json").exists()
    metrics = run(*mlm_args(*small_run_argv(tiny_bert_dir, interrupted)))
    assert metrics["global_step"] == 8
    state = json.loads((interrupted / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [2, 4, 6, 8]
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(interrupted / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-5, atol=1e-6, msg=name)
    # and training did change the weights
    start = load_file(tiny_bert_dir / "model.safetensors")
    assert not torch.allclose(start["bert.embeddings.word_embeddings.weight"],
                              straight["bert.embeddings.word_embeddings.weight"])
    # The initial evaluation of the first session is kept, not redone from the resumed weights.
    first = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert metrics["initial_eval_loss"] == first["initial_eval_loss"]


def test_bad_input_stops_before_any_work(tiny_bert_dir, tmp_path, capsys):
    from finbert2.cli import run_main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "正常的一行"}\n{"txt": "字段错了"}\n', encoding="utf-8")
    out = tmp_path / "out"
    assert run_main(main, ["--model_name_or_path", str(tiny_bert_dir), "--train_data", str(bad),
                           "--output_dir", str(out)]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    assert not out.exists()
    assert run_main(main, ["--tokenizer_name", str(tiny_bert_dir), "--train_data", str(CORPUS),
                           "--output_dir", str(out), "--mlm_probability", "1.5"]) == 2
    assert "mlm_probability" in capsys.readouterr().err
    assert run_main(main, ["--tokenizer_name", str(tmp_path / "nowhere"), "--train_data", str(CORPUS),
                           "--output_dir", str(out)]) == 2
    assert "cannot load a tokenizer" in capsys.readouterr().err and not out.exists()
    # A finished run is refused, and left as it was.
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert run_main(main, ["--tokenizer_name", str(tiny_bert_dir), "--train_data", str(CORPUS),
                           "--output_dir", str(out)]) == 2
    assert "finished run" in capsys.readouterr().err and (out / "metrics.json").read_text() == "{}"


def test_from_scratch_config_file_and_launcher(tmp_path):
    """The launcher with a YAML config, from scratch over the demo tokenizer, a few steps."""
    out = tmp_path / "scratch"
    result = subprocess.run(
        ["sh", "FinBERT2/pretrain/run_mlm.sh", "configs/mlm/tiny.yaml", "--output_dir", str(out),
         "--max_steps", "2", "--max_train_samples", "16", "--max_eval_samples", "8", "--per_device_train_batch_size",
         "8", "--tiny_num_hidden_layers", "1", "--tiny_hidden_size", "64", "--tiny_intermediate_size", "128",
         "--eval_strategy", "no", "--save_steps", "2", "--disable_tqdm", "True"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 64
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(DEMO_DIR / "tokenizer"))
    record = json.loads((out / "run_config.json").read_text())
    assert record["stage"] == "mlm" and record["arguments"]["max_steps"] == 2


TORCHRUN_HELPER = textwrap.dedent('''
    """Run the MLM stage under torchrun, recording what each rank saw and its final weights."""
    import hashlib, json, os, sys
    import torch
    from finbert2.pretrain import data as pretrain_data
    from finbert2.pretrain.mlm import main

    seen = []
    original = pretrain_data.EpochMaskedDataset.__getitem__

    def recording_getitem(self, index):  # the training set only (evaluation is pre-masked)
        seen.append(index)
        return original(self, index)

    pretrain_data.EpochMaskedDataset.__getitem__ = recording_getitem
    from transformers import TrainerCallback
    import finbert2.pretrain.runner as runner

    digests = {}

    class Digest(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            h = hashlib.sha256()
            for name, tensor in sorted(model.state_dict().items()):
                h.update(name.encode()); h.update(tensor.detach().float().numpy().tobytes())
            digests["weights"] = h.hexdigest()

    original_run = runner.run_pretraining

    def run_with_digest(*args, callbacks=(), **kwargs):
        return original_run(*args, callbacks=[*callbacks, Digest()], **kwargs)

    runner.run_pretraining = run_with_digest
    import finbert2.pretrain.mlm as mlm
    mlm.run_pretraining = run_with_digest
    code = main(sys.argv[2:])
    rank = int(os.environ.get("RANK", 0))
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as handle:
        json.dump({"seen": seen, "weights": digests["weights"]}, handle)
    sys.exit(code)
''')


@pytest.mark.slow
def test_torchrun_two_processes_split_the_data(tiny_bert_dir, tmp_path):
    helper = tmp_path / "helper.py"
    helper.write_text(TORCHRUN_HELPER)
    out = tmp_path / "ddp"
    argv = small_run_argv(tiny_bert_dir, out)
    argv[argv.index("--max_steps"):argv.index("--max_steps") + 2] = ["--num_train_epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         str(helper), str(tmp_path), *argv],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # one model, kept in sync
    seen0, seen1 = set(ranks[0]["seen"]), set(ranks[1]["seen"])
    # 96 sequences, one epoch: each rank sees its own half, together all of them, once.
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 48
    assert not seen0 & seen1 and len(seen0 | seen1) == 96
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["global_step"] == 6  # 96 / (2 ranks x 8): half the steps of one process


def test_continued_pretraining_grows_embeddings_for_an_extended_vocab(tiny_bert_dir, tmp_path):
    """A checkpoint plus a tokenizer that appends words: the new rows exist, the old ones are kept."""
    from finbert2.pretrain.runner import build_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    base_rows = len(tokenizer)
    tokenizer.add_tokens(["净利润同比", "可转债募集"])
    tokenizer.save_pretrained(tmp_path / "extended")
    model = build_model(BertForMaskedPositionsLM,
                        ModelArguments(model_name_or_path=str(tiny_bert_dir), tokenizer_name=str(tmp_path / "extended")),
                        AutoTokenizer.from_pretrained(tmp_path / "extended"), seed=0)
    weights = model.get_input_embeddings().weight
    assert weights.shape[0] >= base_rows + 2
    original = load_file(tiny_bert_dir / "model.safetensors")["bert.embeddings.word_embeddings.weight"]
    torch.testing.assert_close(weights[:base_rows], original)


def test_frozen_word_embeddings_and_no_attention_dropout_train_the_rest(tiny_bert_dir, tmp_path):
    out = tmp_path / "frozen"
    assert main(small_run_argv(tiny_bert_dir, out, "--freeze_word_embeddings", "True",
                               "--attention_dropout", "0")) == 0
    start, trained = load_file(tiny_bert_dir / "model.safetensors"), load_file(out / "model.safetensors")
    name = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(trained[name], start[name])
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(trained[query], start[query])
    assert json.loads((out / "config.json").read_text())["attention_probs_dropout_prob"] == 0.0
    # The optimizer holds moments for the trainable parameters only: no state for the vocab x hidden matrix.
    state = torch.load(out / "checkpoint-8" / "optimizer.pt", weights_only=True)["state"]
    moments = sum(s["exp_avg"].numel() for s in state.values())
    model = BertForMaskedLM.from_pretrained(tiny_bert_dir)
    total = sum(p.numel() for p in model.parameters())
    assert moments == total - start[name].numel()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_loss"] < metrics["initial_eval_loss"], metrics
