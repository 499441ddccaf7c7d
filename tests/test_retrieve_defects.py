"""Defects found while making e5 a starting point of the retriever; each test failed before its fix.

- gradient caching replayed only the CPU RNG (GPU dropout then differs in the re-forward);
- ``retrieve train`` with ``eval_data`` switched evaluation on after TrainingArguments validated it;
- ``retrieve evaluate``/``mine``/``index`` applied their default prompt, not the model's saved one;
- in-batch copies of a query's positive (Fin-Eva repeats contexts and questions) counted as negatives.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from finbert2.retrieve.modeling import contrastive_loss, false_negative_mask, grad_cache_step, text_ids
from tests.conftest import DEMO_DIR
from tests.test_retrieve_train import _small_eval_folder, _train_args

RETRIEVAL = DEMO_DIR / "retrieval"


# ---------------------------------------------------------------- grad cache: every device's RNG


class FakeAccelerator:
    """Stands in for ``torch.cuda``: a generator of its own that dropout on "the device" draws from."""

    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)

    def is_available(self):
        return True

    def get_rng_state_all(self):
        return [self.generator.get_state()]

    def set_rng_state_all(self, states):
        self.generator.set_state(states[0])


class DeviceDropoutEncoder(nn.Module):
    """A linear encoder whose dropout masks come from the accelerator's generator, as on a GPU."""

    def __init__(self, device: FakeAccelerator):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(8, 8)
        self.device_rng = device

    def forward(self, features):
        x = self.linear(features["x"])
        keep = (torch.rand(x.shape, generator=self.device_rng.generator) > 0.5).float()
        return {"embeddings": F.normalize(x * keep * 2.0, dim=-1)}


def test_grad_cache_replays_the_accelerator_rng(monkeypatch):
    fake = FakeAccelerator()
    monkeypatch.setattr(torch.cuda, "is_available", fake.is_available)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", fake.get_rng_state_all)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", fake.set_rng_state_all)
    model = DeviceDropoutEncoder(fake)
    torch.manual_seed(1)
    query, passage = {"x": torch.randn(6, 8)}, {"x": torch.randn(12, 8)}

    def loss_fn(q, p):
        return contrastive_loss(q, p, 0.1)

    fake.generator.manual_seed(42)  # the plain loss over the same chunks, each drawing its mask once
    chunks = [{"x": query["x"][i:i + 4]} for i in range(0, 6, 4)] + [{"x": passage["x"][i:i + 4]} for i in range(0, 12, 4)]
    parts = [model(features=c)["embeddings"] for c in chunks]
    plain = loss_fn(torch.cat(parts[:2]), torch.cat(parts[2:]))
    plain.backward()
    expected = model.linear.weight.grad.clone()
    model.zero_grad()

    fake.generator.manual_seed(42)
    cached = grad_cache_step(model, query, passage, chunk_size=4, loss_fn=loss_fn)
    assert cached.item() == pytest.approx(plain.item(), rel=1e-6)
    torch.testing.assert_close(model.linear.weight.grad, expected)


# ---------------------------------------------------------------- in-batch false negatives


def test_copies_of_a_positive_are_not_its_negatives():
    """Rows 0 and 1 share their positive (one context, two questions), row 2 has it as a hard
    negative; rows 3 and 4 ask the same templated question with different positives."""
    torch.manual_seed(0)
    q = F.normalize(torch.randn(5, 16), dim=-1)
    p = F.normalize(torch.randn(10, 16), dim=-1)
    queries = ["问甲", "问乙", "问丙", "同一问题", "同一问题"]
    passages = ["P", "n0", "P", "n1", "Pc", "P", "Pd", "n3", "Pe", "n4"]
    p[2] = p[5] = p[0]  # the same text encodes to the same vector
    q = F.normalize(p[[0, 2, 4, 6, 8]] + 0.3 * q, dim=-1)  # each query near its positive (a trained encoder)
    q_ids, p_ids = text_ids(queries), text_ids(passages)
    assert q_ids[3] == q_ids[4] and p_ids[0] == p_ids[2] == p_ids[5] and p_ids[0] != p_ids[4]
    t = 0.05
    scores = q @ p.T / t
    # columns each query's softmax keeps: its target plus every passage that is not another copy
    # of its positive (nor, for rows 3/4, the other row's positive)
    keep = {0: [0, 1, 3, 4, 6, 7, 8, 9], 1: [1, 2, 3, 4, 6, 7, 8, 9], 2: list(range(10)),
            3: [0, 1, 2, 3, 4, 5, 6, 7, 9], 4: [0, 1, 2, 3, 4, 5, 7, 8, 9]}
    targets = {0: 0, 1: 2, 2: 4, 3: 6, 4: 8}
    expected = sum(-(scores[i, targets[i]] - torch.logsumexp(scores[i, keep[i]], 0)) for i in range(5)) / 5
    masked = contrastive_loss(q, p, t, query_ids=q_ids, passage_ids=p_ids)
    torch.testing.assert_close(masked, expected)
    assert contrastive_loss(q, p, t).item() > masked.item() + 0.1  # unmasked, the copies pull the loss up
    mask = false_negative_mask(q_ids, p_ids)
    assert not bool(mask[torch.arange(5), torch.tensor([0, 2, 4, 6, 8])].any())  # targets never masked


def test_collator_gives_identical_texts_one_id():
    from transformers import AutoTokenizer

    from finbert2.retrieve.data import ContrastiveCollator, ContrastiveGroupDataset

    rows = [{"query": "问题一", "pos": ["同一段落"], "neg": ["负例一"]},
            {"query": "问题二", "pos": ["同一段落"], "neg": ["负例二"]}]
    tokenizer = AutoTokenizer.from_pretrained(DEMO_DIR / "tokenizer")
    dataset = ContrastiveGroupDataset(rows, group_size=2, query_instruction="查询：")
    batch = ContrastiveCollator(tokenizer)([dataset[0], dataset[1]])
    assert batch["passage_ids"][0] == batch["passage_ids"][2] != batch["passage_ids"][1]
    assert batch["query_ids"][0] != batch["query_ids"][1]


def test_collator_pads_to_a_multiple_of_8_unless_told_0():
    from transformers import AutoTokenizer

    from finbert2.retrieve.data import ContrastiveCollator, ContrastiveGroupDataset

    rows = [{"query": "问题", "pos": ["一段较长的正例段落文字"], "neg": ["负例"]}]
    tokenizer = AutoTokenizer.from_pretrained(DEMO_DIR / "tokenizer")
    group = ContrastiveGroupDataset(rows, group_size=2, query_instruction="")[0]
    longest = max(len(tokenizer(p)["input_ids"]) for p in group["passages"])
    assert longest % 8 != 0  # else the two cases below could not differ
    assert ContrastiveCollator(tokenizer, pad_to_multiple_of=0)([group])["passage"]["input_ids"].shape[1] == longest
    padded = ContrastiveCollator(tokenizer)([group])["passage"]["input_ids"].shape[1]
    assert padded == -(-longest // 8) * 8


# ---------------------------------------------------------------- validation settings


def test_eval_data_alone_turns_on_aligned_validation(tiny_bert_dir, tmp_path):
    """eval_data without eval_strategy: evaluation follows the save steps, and the best checkpoint
    is one that was saved (before the fix: eval_steps unset, no evaluation ever ran)."""
    from finbert2.retrieve.cli import main

    out = tmp_path / "run"
    args = _train_args(tiny_bert_dir, out, _small_eval_folder(tmp_path), max_steps=8, save_steps=4)
    drop = {"--eval_strategy", "--eval_steps"}
    args = [a for i, a in enumerate(args) if a not in drop and (i == 0 or args[i - 1] not in drop)]
    assert main(["train", *args]) == 0
    arguments = json.loads((out / "run_config.json").read_text())["arguments"]
    assert arguments["eval_strategy"] == "steps" and arguments["eval_steps"] == 4
    assert arguments["load_best_model_at_end"] and arguments["metric_for_best_model"] == "ndcg_at_10"
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "eval_ndcg_at_10" in h] == [4, 8]
    assert state["best_model_checkpoint"].endswith(("checkpoint-4", "checkpoint-8"))


def test_validation_settings_are_checked_like_the_users_own(tmp_path):
    """Turned on by eval_data, evaluation must still align with saving for load_best_model_at_end."""
    from finbert2.errors import ConfigError
    from finbert2.retrieve.args import RetrieverTrainingArguments
    from finbert2.retrieve.trainer import with_validation

    def args(**kwargs):
        return RetrieverTrainingArguments(output_dir=str(tmp_path / "x"), report_to="none", use_cpu=True, **kwargs)

    resolved = with_validation(args(save_strategy="epoch"))
    assert (resolved.eval_strategy, resolved.save_strategy, resolved.load_best_model_at_end) == ("epoch", "epoch", True)
    assert resolved.precision.requested == "auto"  # the rebuilt arguments keep what was asked for, and why
    with pytest.raises(ConfigError, match="round multiple"):
        with_validation(args(save_strategy="steps", save_steps=5, eval_strategy="steps", eval_steps=3))


# ---------------------------------------------------------------- saved prompts read back


@pytest.fixture(scope="module")
def prompted_model(tiny_bert_dir, tmp_path_factory):
    """The tiny BERT saved as a sentence-transformers model with e5-style prompts and mean pooling."""
    import shutil

    from finbert2.retrieve.encoder import save_sentence_transformer

    folder = tmp_path_factory.mktemp("prompted") / "model"
    shutil.copytree(tiny_bert_dir, folder)
    save_sentence_transformer(folder, prompts={"query": "query: ", "document": "passage: "}, pooling="mean",
                              max_seq_length=96)
    return folder


def test_evaluate_mine_index_use_the_saved_prompts(prompted_model, tmp_path, run_cli):
    from finbert2.retrieve import DenseEncoder

    encoder = DenseEncoder.from_pretrained(str(prompted_model), max_length=96)
    eval_dir = _small_eval_folder(tmp_path, n_queries=10)
    done = run_cli("retrieve", "evaluate", "--eval_data", eval_dir, "--models", prompted_model, "--max_length", "96",
                   "--output_dir", tmp_path / "ev")
    assert done.returncode == 0, done.stderr
    assert "query prompt 'query: ', passage prompt 'passage: '" in (tmp_path / "ev" / "run.log").read_text()
    # the same numbers as our encoder with the saved prompts applied by hand
    from finbert2.data import read_retrieval_eval
    from finbert2.retrieve.evaluate import dense_evaluation

    expected, _, _ = dense_evaluation(encoder, read_retrieval_eval(eval_dir))
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["ndcg_at_10"] == pytest.approx(expected["ndcg_at_10"], abs=1e-6)

    mined = run_cli("retrieve", "mine", "--model_name_or_path", prompted_model, "--input_file",
                    RETRIEVAL / "queries.jsonl", "--candidate_pool", RETRIEVAL / "candidates.jsonl",
                    "--range_for_sampling", "2-20", "--negative_number", "3", "--max_length", "96",
                    "--output_dir", tmp_path / "mined")
    assert mined.returncode == 0, mined.stderr
    assert "prompts: query 'query: ', passage 'passage: '" in (tmp_path / "mined" / "run.log").read_text()

    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "央行降准"}\n{"id": "b", "text": "猪肉价格上涨"}\n', encoding="utf-8")
    indexed = run_cli("retrieve", "index", "--model_name_or_path", prompted_model, "--corpus", docs,
                      "--max_length", "96", "--output_dir", tmp_path / "index")
    assert indexed.returncode == 0, indexed.stderr
    config = json.loads((tmp_path / "index" / "index_config.json").read_text())
    assert (config["query_instruction"], config["passage_instruction"], config["pooling"]) == \
        ("query: ", "passage: ", "mean")
    explicit = run_cli("retrieve", "evaluate", "--eval_data", eval_dir, "--models", prompted_model,
                       "--query_instruction", "问：", "--max_length", "96", "--output_dir", tmp_path / "ev2")
    assert explicit.returncode == 0 and "query prompt '问：'" in (tmp_path / "ev2" / "run.log").read_text()


def test_retriever_trained_from_a_prompted_model_keeps_its_prompts(prompted_model, tmp_path):
    from sentence_transformers import SentenceTransformer

    from finbert2.retrieve.cli import main

    out = tmp_path / "run"
    args = _train_args(prompted_model, out, _small_eval_folder(tmp_path, n_queries=10), max_steps=2, eval_steps=2,
                       save_steps=2, learning_rate=1e-4)
    assert main(["train", *args]) == 0
    arguments = json.loads((out / "run_config.json").read_text())["arguments"]
    assert arguments["query_instruction_for_retrieval"] == "query: "
    assert arguments["passage_instruction_for_retrieval"] == "passage: " and arguments["pooling"] == "mean"
    st = SentenceTransformer(str(out), device="cpu")
    assert st.prompts["query"] == "query: " and st.prompts["document"] == "passage: "
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isclose(metrics["chance_loss"], math.log(metrics["passages_per_query"]))
