"""numllm on a tiny randomly initialised causal LM: LoRA training, merging, scoring, resume after SIGKILL."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from conftest import DEMO_DIR, REPO_ROOT
from fault_injection import assert_same_weights, run_uninterrupted, run_with_kills
from finbert2.numllm.args import CausalLMArguments, EvaluateArguments, LoraArguments, MergeArguments, NumLLMDataArguments
from finbert2.numllm.data import IGNORE, LabelledPositionsCollator, chunk_documents, encode_prompt_answer
from finbert2.numllm.evaluate import LogLikelihoodScorer, cloze_prompt, run_evaluate
from finbert2.numllm.merge import adapter_base, fuse_adapters, load_adapters, run_merge
from finbert2.numllm.numeric_items import build_items, item_record
from finbert2.numllm.questions import Question, render_prompt
from finbert2.numllm.train import run_train
from finbert2.run import RunArguments
from tiny_causal_lm import build_tiny_causal_lm

NUMERIC_TEXTS = ["公司2023年实现营业收入12.5亿元，同比增长23.4%。", "净利润同比下降8.5%，每股收益0.32元。",
                 "市盈率为15.2倍，总股本3,200股。", "2022年5月，央行下调存款准备金率0.25个百分点。"]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("numllm") / "tiny_lm")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("numllm_data")
    lines = (DEMO_DIR / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    (folder / "text.jsonl").write_text("\n".join(lines[:160]) + "\n", encoding="utf-8")
    (folder / "heldout_text.jsonl").write_text("\n".join(lines[160:176]) + "\n", encoding="utf-8")
    items = [item_record(q) for i, t in enumerate(NUMERIC_TEXTS * 12)
             for q in build_items(t, f"fixed:{i + 1}", seed=0, max_items=2)]
    for name, rows in (("items", items[:80]), ("heldout_items", items[80:])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                              encoding="utf-8")
    return {p.stem: p for p in folder.iterdir()}


def training_args(output_dir: Path, steps: int = 12, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-2,
                    logging_steps=2, save_steps=6, report_to="none", seed=0, dataloader_pin_memory=False,
                    use_cpu=True)
    return TrainingArguments(**{**settings, **overrides})


def train(tiny_lm, data: dict, output_dir: Path, task: str, steps: int = 12, lora_r: int = 4) -> dict:
    return run_train(CausalLMArguments(str(tiny_lm)), LoraArguments(lora_r=lora_r, lora_alpha=8, lora_dropout=0.0,
                                                                   lora_target_modules=["q_proj", "v_proj"]),
                     NumLLMDataArguments(task=task, max_seq_length=64 if task == "domain" else 160,
                                         **data),
                     training_args(output_dir, steps), RunArguments())


@pytest.fixture(scope="module")
def adapters(tiny_lm, corpora, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    folder = tmp_path_factory.mktemp("numllm_runs")
    domain = train(tiny_lm, {"train_data": [str(corpora["text"])], "eval_data": [str(corpora["heldout_text"])]},
                   folder / "domain", "domain", lora_r=4)
    numeric = train(tiny_lm, {"train_data": [str(corpora["items"])], "eval_data": [str(corpora["heldout_items"])]},
                    folder / "numeric", "numeric", lora_r=2)
    return {"domain": (folder / "domain", domain), "numeric": (folder / "numeric", numeric)}


# --------------------------------------------------------------------------- data and loss positions


def test_loss_only_on_answer_tokens(tiny_lm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    example = encode_prompt_answer(tokenizer, "以下是题目。\nA. 1\nB. 2\n答案：", "B", max_length=64)
    answer_ids = tokenizer("B", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n_prompt = len(example["input_ids"]) - len(answer_ids)
    assert example["input_ids"][0] == tokenizer.bos_token_id
    assert example["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert example["labels"][n_prompt:] == answer_ids == example["input_ids"][n_prompt:]
    # a long prompt is cut from the left: the answer always survives
    cut = encode_prompt_answer(tokenizer, "很长的题目" * 200, "B", max_length=32)
    assert len(cut["input_ids"]) == 32 and cut["labels"][-len(answer_ids):] == answer_ids

    short = encode_prompt_answer(tokenizer, "题目：", "A", max_length=64)
    batch = LabelledPositionsCollator(tokenizer.pad_token_id)([example, short])
    targets = batch["labels"][:, 1:]
    kept = sorted({int(j) for j in (targets != IGNORE).nonzero()[:, 1]})
    assert batch["logits_to_keep"].tolist() == kept  # only positions predicting an answer token
    assert batch["shift_labels"].tolist() == targets[:, kept].tolist()
    assert (batch["attention_mask"][1, len(short["input_ids"]):] == 0).all()
    assert (batch["labels"][1, len(short["input_ids"]):] == IGNORE).all()


def test_kept_positions_give_the_full_forward_loss(tiny_lm):
    """The loss from logits at the kept positions equals the loss of the full forward pass."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    examples = [encode_prompt_answer(tokenizer, p, a, 64) for p, a in (("题目一：", "A"), ("更长的题目二：", "C"))]
    batch = LabelledPositionsCollator(tokenizer.pad_token_id)(examples)
    with torch.no_grad():
        kept = model(**batch).loss
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert torch.allclose(kept, full, atol=1e-5), (kept, full)


def test_documents_are_chunked_with_bos(tiny_lm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    chunks = chunk_documents(tokenizer, ["净利润同比增长12%。" * 10, "短文本"], block=16)
    assert all(c["input_ids"][0] == tokenizer.bos_token_id and len(c["input_ids"]) <= 16 for c in chunks)
    assert all(c["labels"][0] == IGNORE and c["labels"][1:] == c["input_ids"][1:] for c in chunks)
    assert chunks[-1]["input_ids"][-1] == tokenizer.eos_token_id


# --------------------------------------------------------------------------- training


def test_both_lora_trainings_lower_their_loss(adapters):
    for task, (folder, metrics) in adapters.items():
        assert metrics["eval_loss"] < metrics["initial_eval_loss"] - 0.01, (task, metrics)
        for name in ("adapter_config.json", "adapter_model.safetensors", "run_config.json", "loss_log.csv",
                     "run.log", "metrics.json"):
            assert (folder / name).is_file(), (task, name)
        assert json.loads((folder / "metrics.json").read_text())["task"] == task
    assert adapters["numeric"][1]["train_target_tokens"] == 2 * adapters["numeric"][1]["train_sequences"]


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(["公司营业收入12.5亿元，同比增长23.4%。", "央行下调存款准备金率"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_merge_equals_both_adapters_active_and_reloads(tiny_lm, adapters, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    paths = [str(adapters["domain"][0]), str(adapters["numeric"][0])]
    both = load_adapters(AutoModelForCausalLM.from_pretrained(tiny_lm), paths).eval()
    both.base_model.set_adapter(["adapter_0", "adapter_1"])  # both adapters active at once
    reference = _logits(both, tokenizer)
    assert (reference - _logits(AutoModelForCausalLM.from_pretrained(tiny_lm), tokenizer)).abs().max() > 1e-3

    # cat (any ranks) and svd at the sum of the ranks (4 + 2) are the exact sum of the two updates
    for combination, options in (("cat", {}), ("svd", {"svd_rank": 6})):
        out = tmp_path / combination
        metrics = run_merge(CausalLMArguments(str(tiny_lm)), MergeArguments(
            output_dir=str(out), adapters=paths, combination_type=combination, **options))
        assert metrics["merge_max_logit_difference"] < 1e-5
        reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
        assert list(out.glob("*.safetensors")) and not (out / "adapter_config.json").exists()
        difference = (_logits(reloaded, tokenizer) - reference).abs().max().item()
        assert difference < 1e-4, (combination, difference)


def test_every_combination_type_is_selectable(tiny_lm, adapters, tmp_path):
    # linear and ties combine A and B separately: they need equal ranks (the numeric adapter has r=2)
    paths = [str(adapters["domain"][0])] * 2
    for combination in ("linear", "ties", "svd"):
        out = tmp_path / combination
        metrics = run_merge(CausalLMArguments(str(tiny_lm)), MergeArguments(
            output_dir=str(out), adapters=paths, weights=[0.7, 0.3], combination_type=combination))
        assert metrics["combination_type"] == combination and metrics["weights"] == [0.7, 0.3]
        AutoModelForCausalLM.from_pretrained(out)
    model = load_adapters(AutoModelForCausalLM.from_pretrained(tiny_lm),
                          [str(adapters["domain"][0]), str(adapters["numeric"][0])])
    with pytest.raises(Exception, match="linear"):
        fuse_adapters(model, [1.0, 1.0], "linear")


# --------------------------------------------------------------------------- scoring


class BigramLM(torch.nn.Module):
    """A scripted LM: the next-token logits depend only on the current token, from a fixed table."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        self.table = torch.nn.Parameter(torch.from_numpy(np.random.default_rng(seed).normal(size=(vocab, vocab)))
                                        .float(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, logits_to_keep=None):
        logits = self.table[input_ids]
        return SimpleNamespace(logits=logits[:, logits_to_keep] if logits_to_keep is not None else logits)


def _log_softmax_row(table: np.ndarray, token: int) -> np.ndarray:
    row = table[token].astype(np.float64)
    return row - (np.log(np.exp(row - row.max()).sum()) + row.max())


def test_letter_and_option_scores_match_a_hand_computation(tiny_lm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    model = BigramLM(len(tokenizer))
    table = model.table.detach().numpy()
    scorer = LogLikelihoodScorer(model, tokenizer)
    q = Question("净利润增长率为____。", ["12%", "-12%", "1.2%", "120%"], "A", "财务")

    prompt = render_prompt(q)
    last = tokenizer(prompt, add_special_tokens=False)["input_ids"][-1]
    letters = [tokenizer(letter, add_special_tokens=False)["input_ids"][0] for letter in "ABCD"]
    expected = [_log_softmax_row(table, last)[t] for t in letters]
    assert np.allclose(scorer.score(q, [], "letter"), expected, atol=1e-5)

    cloze = cloze_prompt(q)
    previous = tokenizer(cloze, add_special_tokens=False)["input_ids"][-1]
    sums, means = [], []
    for option in q.options:
        ids, total, prev = tokenizer(option, add_special_tokens=False)["input_ids"], 0.0, previous
        for token in ids:
            total += _log_softmax_row(table, prev)[token]
            prev = token
        sums.append(total)
        means.append(total / len(ids))
    assert np.allclose(scorer.score(q, [], "option_sum"), sums, atol=1e-4)
    assert np.allclose(scorer.score(q, [], "option_mean"), means, atol=1e-4)

    text = "央行下调存款准备金率"
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    nll = -sum(_log_softmax_row(table, a)[b] for a, b in zip(ids, ids[1:]))
    assert math.isclose(scorer.perplexity([text], 128), math.exp(nll / (len(ids) - 1)), rel_tol=1e-5)


def test_evaluate_table_for_base_adapters_and_merged(tiny_lm, adapters, corpora, tmp_path):
    merged = tmp_path / "merged"
    run_merge(CausalLMArguments(str(tiny_lm)), MergeArguments(
        output_dir=str(merged), adapters=[str(adapters["domain"][0]), str(adapters["numeric"][0])]))
    questions = tmp_path / "questions.jsonl"
    rows = [{"question": "资产负债率=负债÷资产，其含义是____。", "options": ["偿债能力", "营运能力", "盈利能力", "发展能力"],
             "answer": "A", "subject": "财务管理学", "category": "Accounting"},
            {"question": "下列属于流动负债的是____。", "options": ["应付账款", "长期借款", "应付债券", "长期应付款"],
             "answer": "A", "subject": "会计", "category": "Accounting"},
            {"question": "多选题", "options": ["甲", "乙", "丙"], "answer": "AB", "subject": "会计"}]
    questions.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "eval"
    metrics = run_evaluate(CausalLMArguments(str(tiny_lm)), EvaluateArguments(
        output_dir=str(out), models=[f"domain={adapters['domain'][0]}", f"numeric={adapters['numeric'][0]}",
                                     f"merged={merged}"],
        test_data=[str(questions), str(corpora["heldout_items"])], dev_data=[str(questions)], n_shots=[0, 1],
        perplexity_data=[str(corpora["heldout_text"])], max_perplexity_texts=4))
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))["results"]
    block = results["questions"]["0"]
    assert list(block) == ["base", "domain", "numeric", "merged", "chance", "longest option", "shortest option",
                           "closest to the others"]
    assert block["base"]["n"] == 2 and block["base"]["numeric_n"] == 1 and block["base"]["non_numeric_n"] == 1
    assert block["chance"]["accuracy"] == 0.25
    # longest option: 资产负债率 question -> 偿债能力 ties 营运能力... all 4 chars, the first (A) is right;
    # 流动负债 -> 长期应付款 (5 chars, D) is wrong
    assert block["longest option"]["accuracy"] == 0.5 and block["longest option"]["top_letter_share"] == 0.5
    # shortest: A both times (ties -> the first), both right; closest to the others by difflib ratio: A on the
    # first (all four share 能力, a tie) and 长期应付款 (D, 1.78 against 1.42/0.92/0.94) on the second
    assert block["shortest option"]["accuracy"] == 1.0 and block["closest to the others"]["accuracy"] == 0.5
    predicted = [r["predicted"] for r in map(json.loads, (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines())
                 if r["model"] == "base" and r["block"] == "questions" and r["shots"] == 0]
    most = max(map(predicted.count, predicted))
    assert predicted.count(block["base"]["top_letter"]) == most and block["base"]["top_letter_share"] == most / 2
    assert metrics["questions_questions"] == 2
    run_config = json.loads((out / "run_config.json").read_text(encoding="utf-8"))
    assert run_config["skipped_multiple_answer"] == {"questions": 1, "heldout_items": 0}
    assert all(metrics[f"{name}_perplexity"] > 1 for name in ("base", "domain", "numeric", "merged"))
    # the domain module lowers held-out perplexity on text like its training text
    assert metrics["domain_perplexity"] < metrics["base_perplexity"]
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "| chance | 25.0 |" in table and "| longest option | 50.0 |" in table
    assert "1 numeric, 1 non-numeric" in table
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(predictions) == 4 * 2 * (2 + len((corpora["heldout_items"]).read_text().splitlines()))


# --------------------------------------------------------------------------- resume


def test_resume_after_sigkill_gives_the_uninterrupted_adapter(tiny_lm, corpora, tmp_path):
    def command(output_dir: Path) -> list[str]:
        return [sys.executable, "-m", "finbert2", "numllm", "train", str(REPO_ROOT / "configs/numllm/tiny.yaml"),
                "--task", "numeric", "--model_name_or_path", str(tiny_lm), "--train_data", str(corpora["items"]),
                "--eval_data", str(corpora["heldout_items"]), "--max_eval_samples", "4", "--max_steps", "12",
                "--save_steps", "3", "--per_device_train_batch_size", "4", "--lora_dropout", "0.1",
                "--bf16", "false", "--use_cpu", "True", "--output_dir", str(output_dir)]

    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = run_uninterrupted(command(straight), straight, cwd=REPO_ROOT, env=env)
    # one SIGKILL once checkpoint-6 exists (checkpoint-3 is complete by then), at a random moment after it:
    # inside its write or in a later step; the restart resumes from step 3 or 6
    report = run_with_kills(command(killed), killed, cwd=REPO_ROOT, kills=1, save_kills=0, seed=3,
                            wait_for="checkpoint-6", min_delay=0.0, max_delay=reference.checkpoint_interval, env=env)
    assert report.kills == 1 and max(report.resumed_from) >= 3, report.summary()
    assert_same_weights(straight, killed, atol=1e-6)


# --------------------------------------------------------------------------- the tiny config, as a user runs it


def test_tiny_config_runs_with_only_an_output_dir(tmp_path):
    """configs/numllm/tiny.yaml runs as every tiny config does: no model given, so a random tiny causal LM
    (a BPE tokenizer trained on the corpus) is built into the user cache; no train_data, so each module
    builds its data from input_data into OUTPUT/items. Both modules get the same base and the same split,
    and the merge finds that base through the adapters."""
    env = {**os.environ, "FINBERT2_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}

    def launch(launcher: str, *args) -> None:
        result = subprocess.run(["sh", f"Fin-numllm/{launcher}", "configs/numllm/tiny.yaml", *map(str, args)],
                                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]

    runs = {task: tmp_path / task for task in ("domain", "numeric")}
    for task, out in runs.items():
        launch(f"run_{task}_lora.sh", "--output_dir", out)
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["task"] == task and metrics["global_step"] == 16
        assert metrics["eval_loss"] < metrics["initial_eval_loss"], metrics
        assert (out / "items" / "train.jsonl").is_file() and (out / "items" / "heldout_text.jsonl").is_file()
    assert all((runs["domain"] / "items" / name).read_bytes() == (runs["numeric"] / "items" / name).read_bytes()
               for name in ("heldout_text.jsonl", "heldout.jsonl"))  # one seeded split of the corpus
    bases = {adapter_base(str(out)) for out in runs.values()}
    assert len(bases) == 1 and Path(next(iter(bases))).parent == tmp_path / "cache" / "models", bases
    launch("merge.sh", "--adapters", runs["domain"], runs["numeric"], "--output_dir", tmp_path / "merged")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged").config.hidden_size == 64
