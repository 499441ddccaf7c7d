"""``finbert2 numllm evaluate``: multiple-choice accuracy by log-likelihood, and held-out perplexity.

    sh Fin-numllm/evaluate.sh configs/numllm/tiny.yaml --models domain=runs/numllm/domain \\
        numeric=runs/numllm/numeric merged=runs/numllm/merged --output_dir runs/numllm/eval

No generation: each question is scored by the model's log-probabilities.

- ``letter`` (default; FinEval's and C-Eval's answer-only protocol for base models): the prompt lists
  the options and ends with ``答案：``; the option whose letter has the highest next-token
  log-probability is the prediction. One forward pass per question, logits at its last position only.
- ``option_sum`` / ``option_mean``: the log-likelihood of each option's own text after the question
  and ``答案：`` (summed over its tokens / divided by their number).

Shots (``n_shots`` > 0) are the first dev questions of the same subject, worked (with their answer),
before the question. Every model answers the same questions (a seeded sample when
``max_questions`` is set). The table splits accuracy into numeric and non-numeric questions by
``finbert2.numllm.questions.numeric_reason`` (a digit, a percentage, or an arithmetic cue in the
question or its options), with the count of each. Under every table: a chance row (mean of
1/options) and the classical no-model baselines (the longest option, the shortest, the one closest
to the others by ``difflib`` similarity: the give-aways of options made by perturbing the true
value). Every model row also shows its most frequent answer letter and how often it gave it, so a
model that answers one letter whatever the question is seen (and warned about in ``run.log``).
"""

from __future__ import annotations

import difflib
import logging
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from finbert2.data.readers import iter_corpus_lines
from finbert2.data.writers import atomic_write_text, write_json, write_jsonl
from finbert2.errors import ConfigError
from finbert2.numllm.args import CausalLMArguments, EvaluateArguments
from finbert2.numllm.merge import adapter_base, load_adapters, resolve_base
from finbert2.numllm.questions import (
    ANSWER_CUE,
    GENERIC_SUBJECT,
    LETTERS,
    Question,
    is_numeric,
    read_questions,
    render_prompt,
)
from finbert2.numllm.train import causal_tokenizer, load_causal_lm
from finbert2.run import prepare_output_dir, setup_logging, write_metrics, write_run_config
from finbert2.precision import command_bf16

COLLAPSE_SHARE = 0.8  # a model giving one letter this often is flagged in run.log

logger = logging.getLogger("finbert2.numllm")


@dataclass
class ModelSpec:
    name: str
    path: str
    is_adapter: bool


def model_specs(base: str, models: Sequence[str]) -> list[ModelSpec]:
    specs = [ModelSpec("base", base, False)]
    for spec in models:
        name, path = spec.split("=", 1)
        if name in {s.name for s in specs}:
            raise ConfigError(f"numllm evaluate: model name '{name}' given twice")
        specs.append(ModelSpec(name, path, (Path(path) / "adapter_config.json").is_file()))
    return specs


def load_model(spec: ModelSpec, base: str, trust_remote_code: bool):
    """The model of one table row; an adapter is merged into a fresh copy of the base (same function)."""
    if not spec.is_adapter:
        return load_causal_lm(spec.path, trust_remote_code)
    recorded = adapter_base(spec.path)
    if Path(recorded).resolve() != Path(base).resolve() and recorded != base:
        logger.warning("%s: adapter trained on %s, applied to %s", spec.path, recorded, base)
    return load_adapters(load_causal_lm(base, trust_remote_code), [spec.path]).merge_and_unload()


# --------------------------------------------------------------------------- scoring


def cloze_prompt(q: Question, shots: Sequence[Question] = ()) -> str:
    """The option-text protocol: worked shots as question + answer text, then the question and ``答案：``."""
    header = f"以下是中国关于{q.subject or GENERIC_SUBJECT}考试的单项选择题，请选出其中的正确答案。\n\n"
    worked = "".join(f"{s.question}\n{ANSWER_CUE}{s.options[s.answer_index]}\n\n" for s in shots)
    return header + worked + f"{q.question}\n{ANSWER_CUE}"


class LogLikelihoodScorer:
    """Scores options by a causal LM's log-probabilities (see the module docstring)."""

    def __init__(self, model, tokenizer, max_prompt_tokens: int = 1024, bf16: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.bf16 = bf16
        self.device = next(model.parameters()).device
        self.prefix = tokenizer("", add_special_tokens=True)["input_ids"]  # <bos> for gemma
        self.letter_ids = [self._single_token(letter) for letter in LETTERS]

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[0]

    def _prompt_ids(self, prompt: str) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return self.prefix + ids[-(self.max_prompt_tokens - len(self.prefix)):]

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                                logits_to_keep=keep.to(self.device)).logits
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    def letter_scores(self, prompt: str, n_options: int) -> list[float]:
        """log p(letter | prompt) for the first ``n_options`` letters."""
        ids = torch.tensor([self._prompt_ids(prompt)])
        logprobs = self._forward(ids, torch.ones_like(ids), torch.tensor([ids.shape[1] - 1]))[0, 0]
        return [float(logprobs[i]) for i in self.letter_ids[:n_options]]

    def option_scores(self, prompt: str, options: Sequence[str], mean: bool = False) -> list[float]:
        """log p(option text | prompt) for each option, summed over its tokens (or per token with ``mean``)."""
        prompt_ids = self._prompt_ids(prompt)
        option_ids = [self.tokenizer(o, add_special_tokens=False)["input_ids"] or [self.tokenizer.eos_token_id]
                      for o in options]
        rows = [prompt_ids + o for o in option_ids]
        length = max(map(len, rows))
        input_ids = torch.full((len(rows), length), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for r, row in enumerate(rows):
            input_ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
        start = len(prompt_ids) - 1  # the position predicting each option's first token
        keep = torch.arange(start, length - 1)
        logprobs = self._forward(input_ids, mask, keep)
        scores = []
        for r, ids in enumerate(option_ids):
            total = sum(float(logprobs[r, j, token]) for j, token in enumerate(ids))
            scores.append(total / len(ids) if mean else total)
        return scores

    def score(self, q: Question, shots: Sequence[Question], scoring: str) -> list[float]:
        if scoring == "letter":
            return self.letter_scores(render_prompt(q, shots), len(q.options))
        return self.option_scores(cloze_prompt(q, shots), q.options, mean=scoring == "option_mean")

    def perplexity(self, texts: Sequence[str], max_tokens: int) -> float:
        """exp(mean next-token NLL) over the texts, each cut to ``max_tokens`` tokens after <bos>."""
        total, count = 0.0, 0
        for text in texts:
            ids = self.prefix + self.tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
            if len(ids) < 2:
                continue
            row = torch.tensor([ids])
            logprobs = self._forward(row, torch.ones_like(row), torch.arange(0, len(ids) - 1))[0]
            total -= float(logprobs.gather(1, row[0, 1:, None]).sum())
            count += len(ids) - 1
        return math.exp(total / count) if count else float("nan")


# --------------------------------------------------------------------------- the table


def shots_for(q: Question, dev: Sequence[Question], n: int) -> list[Question]:
    return [d for d in dev if d.subject == q.subject and d.single_answer][:n] if n else []


def accuracy_summary(rows: Sequence[dict]) -> dict:
    """Accuracy overall, numeric / non-numeric (with counts), per category and per subject, and the share of
    the most frequent predicted letter (near 1: the model answers one letter whatever the question)."""
    def acc(subset):
        return round(sum(r["correct"] for r in subset) / len(subset), 4) if subset else None

    numeric = [r for r in rows if r["numeric"]]
    non_numeric = [r for r in rows if not r["numeric"]]
    by = {"category": defaultdict(list), "subject": defaultdict(list)}
    for r in rows:
        by["category"][r["category"] or "-"].append(r)
        by["subject"][r["subject"]].append(r)
    letters = Counter(r["predicted"] for r in rows if "predicted" in r)
    top_letter = letters.most_common(1)[0] if letters else None
    return {"accuracy": acc(rows), "n": len(rows), "numeric_accuracy": acc(numeric), "numeric_n": len(numeric),
            "top_letter": top_letter[0] if top_letter else None,
            "top_letter_share": round(top_letter[1] / len(rows), 4) if top_letter else None,
            "non_numeric_accuracy": acc(non_numeric), "non_numeric_n": len(non_numeric),
            "per_category": {k: {"accuracy": acc(v), "n": len(v)} for k, v in sorted(by["category"].items())},
            "per_subject": {k: {"accuracy": acc(v), "n": len(v)} for k, v in sorted(by["subject"].items())}}


def chance_summary(questions: Sequence[Question]) -> dict:
    rows = [{"correct": 1 / len(q.options), "numeric": is_numeric(q), "category": q.category, "subject": q.subject}
            for q in questions]
    return accuracy_summary(rows)


def _similarity_to_the_others(options: Sequence[str]) -> list[float]:
    return [sum(difflib.SequenceMatcher(None, a, b).ratio() for j, b in enumerate(options) if j != i)
            for i, a in enumerate(options)]


# The classical no-model baselines of exam questions, each a rule that reads only the options (the
# first of equals wins). A set of options built by perturbing the true value gives itself away to them.
NO_MODEL_BASELINES: dict[str, Callable[[Sequence[str]], list[float]]] = {
    "longest option": lambda options: [len(o) for o in options],
    "shortest option": lambda options: [-len(o) for o in options],
    "closest to the others": _similarity_to_the_others,  # the option the others look made from
}
REFERENCE_ROWS = ("chance", *NO_MODEL_BASELINES)  # the no-model rows under every table


def baseline_summary(questions: Sequence[Question], rule: Callable[[Sequence[str]], list[float]]) -> dict:
    """Accuracy of one no-model rule (the option it scores highest)."""
    rows = []
    for q in questions:
        scores = rule(q.options)
        predicted = LETTERS[max(range(len(scores)), key=scores.__getitem__)]
        rows.append({"predicted": predicted, "correct": predicted == q.answer, "numeric": is_numeric(q),
                     "category": q.category, "subject": q.subject})
    return accuracy_summary(rows)


def select_questions(path: str, max_questions: int | None, seed: int) -> tuple[list[Question], int]:
    """The single-answer questions of one file (a seeded sample when capped) and how many were skipped."""
    questions = read_questions([path])
    single = [q for q in questions if q.single_answer]
    if max_questions and len(single) > max_questions:
        chosen = sorted(random.Random(seed).sample(range(len(single)), max_questions))
        single = [single[i] for i in chosen]
    return single, len(questions) - len([q for q in questions if q.single_answer])


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def results_markdown(results: dict, perplexity: dict, names: list[str], scoring: str) -> str:
    lines = [f"# NumLLM evaluation ({scoring} scoring)", ""]
    for block, by_shots in results.items():
        for shots, by_model in by_shots.items():
            first = next(iter(by_model.values()))
            lines += [f"## {block}, {shots}-shot ({first['n']} questions: {first['numeric_n']} numeric, "
                      f"{first['non_numeric_n']} non-numeric)", "",
                      "| model | accuracy % | numeric % | non-numeric % | most frequent answer % |",
                      "|---|---:|---:|---:|---:|"]
            for name in [*names, *REFERENCE_ROWS]:
                s = by_model[name]
                top = f"{_pct(s['top_letter_share'])} ({s['top_letter']})" if s.get("top_letter") else "-"
                lines.append(f"| {name} | {_pct(s['accuracy'])} | {_pct(s['numeric_accuracy'])} | "
                             f"{_pct(s['non_numeric_accuracy'])} | {top} |")
            categories = list(first["per_category"])
            if len(categories) > 1:
                lines += ["", "| model | " + " | ".join(f"{c} %" for c in categories) + " |",
                          "|---|" + "---:|" * len(categories)]
                for name in [*names, *REFERENCE_ROWS]:
                    cells = [_pct(by_model[name]["per_category"][c]["accuracy"]) for c in categories]
                    lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    if perplexity:
        lines += ["## Held-out perplexity (per token)", "", "| model | perplexity |", "|---|---:|"]
        lines += [f"| {name} | {perplexity[name]:.3f} |" for name in names if name in perplexity]
        lines.append("")
    return "\n".join(lines)


def run_evaluate(model_args: CausalLMArguments, args: EvaluateArguments) -> dict:
    adapters = [s.split("=", 1)[1] for s in args.models or []
                if (Path(s.split("=", 1)[1]) / "adapter_config.json").is_file()]
    base = resolve_base(model_args, adapters)
    # read and validate every input before loading any model
    blocks = {Path(p).stem: select_questions(p, args.max_questions, args.seed) for p in args.test_data or []}
    dev = read_questions(args.dev_data) if args.dev_data else []
    texts = [t for _, _, t in iter_corpus_lines(args.perplexity_data, args.text_field)][:args.max_perplexity_texts] \
        if args.perplexity_data else []
    specs = model_specs(base, args.models or [])
    bf16 = command_bf16(args)
    output_dir = prepare_output_dir(args.output_dir, overwrite=args.overwrite_output_dir, clear=True)
    setup_logging(output_dir)
    write_run_config(output_dir, model_args, args, stage="numllm-evaluate", extra={
        "base_model": base, "questions": {b: len(qs) for b, (qs, _) in blocks.items()},
        "skipped_multiple_answer": {b: n for b, (_, n) in blocks.items()}})
    tokenizer = causal_tokenizer(CausalLMArguments(base, model_args.tokenizer_name, model_args.trust_remote_code))

    results: dict = {b: {n: {} for n in args.n_shots} for b in blocks}
    perplexity: dict[str, float] = {}
    predictions: list[dict] = []
    metrics: dict = {}
    for spec in specs:
        model = load_model(spec, base, model_args.trust_remote_code)
        scorer = LogLikelihoodScorer(model, tokenizer, args.max_prompt_tokens, bf16)
        for block, (questions, _) in blocks.items():
            for n_shots in args.n_shots:
                rows = []
                for q in questions:
                    scores = scorer.score(q, shots_for(q, dev, n_shots), args.scoring)
                    predicted = LETTERS[max(range(len(scores)), key=scores.__getitem__)]
                    rows.append({"model": spec.name, "block": block, "shots": n_shots, "source": q.source,
                                 "subject": q.subject, "category": q.category, "numeric": is_numeric(q),
                                 "answer": q.answer, "predicted": predicted, "correct": predicted == q.answer,
                                 "scores": [round(s, 4) for s in scores]})
                summary = accuracy_summary(rows)
                results[block][n_shots][spec.name] = summary
                predictions += rows
                for key in ("accuracy", "numeric_accuracy", "non_numeric_accuracy"):
                    metrics[f"{spec.name}_{block}_{n_shots}shot_{key}"] = summary[key]
                logger.info("%s %s %d-shot: accuracy %s (numeric %s of %d, non-numeric %s of %d)", spec.name, block,
                            n_shots, summary["accuracy"], summary["numeric_accuracy"], summary["numeric_n"],
                            summary["non_numeric_accuracy"], summary["non_numeric_n"])
                if summary["top_letter_share"] is not None and summary["top_letter_share"] >= COLLAPSE_SHARE:
                    logger.warning("%s %s %d-shot: %.0f%% of the answers are %s: the model answers one letter "
                                   "whatever the question", spec.name, block, n_shots,
                                   100 * summary["top_letter_share"], summary["top_letter"])
        if texts:
            perplexity[spec.name] = scorer.perplexity(texts, args.perplexity_max_tokens)
            metrics[f"{spec.name}_perplexity"] = perplexity[spec.name]
            logger.info("%s: held-out perplexity %.3f over %d texts", spec.name, perplexity[spec.name], len(texts))
        del model, scorer
    for block, (questions, _) in blocks.items():
        for n_shots in args.n_shots:
            results[block][n_shots]["chance"] = chance_summary(questions)
            for name, rule in NO_MODEL_BASELINES.items():
                results[block][n_shots][name] = baseline_summary(questions, rule)
        metrics[f"chance_{block}_accuracy"] = results[block][args.n_shots[0]]["chance"]["accuracy"]
        for name in NO_MODEL_BASELINES:
            metrics[f"{name.replace(' ', '_')}_{block}_accuracy"] = results[block][args.n_shots[0]][name]["accuracy"]
        metrics[f"{block}_questions"] = len(questions)
        metrics[f"{block}_numeric_questions"] = results[block][args.n_shots[0]]["chance"]["numeric_n"]

    names = [s.name for s in specs]
    write_jsonl(output_dir / "predictions.jsonl", predictions)
    write_json(output_dir / "results.json", {"scoring": args.scoring, "results": results, "perplexity": perplexity})
    atomic_write_text(output_dir / "results.md", results_markdown(results, perplexity, names, args.scoring))
    return write_metrics(output_dir, metrics)
