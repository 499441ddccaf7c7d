"""``finbert2 prune MODEL_DIR OUT --keep_layers 0,2,4,6,8,10 --train_data CORPUS [--check EVAL]``.

    finbert2 prune runs/retriever runs/retriever-6l --keep_layers 0,2,4,6,8,10 \\
        --train_data data/demo/corpus.jsonl --query_data data/demo/retrieval/queries.jsonl --max_steps 400 \\
        --check data/demo/retrieval/validation --max_drop 0.02

Layer pruning of a retriever followed by distillation: the student is the source model with only the
layers kept (their weights copied), trained so its pooled vectors match the source model's on the user's
corpus and, with ``--query_data``, on its questions under the query prompt (MSE, sentence-transformers'
model-compression recipe), then scored against the source model with
the same ``--check`` gate as ``finbert2 export``. OUT is a torch retriever folder (safetensors, tokenizer,
the source's prompts, pooling and normalisation) that every command, and ``finbert2 export``, takes; a
failed check leaves no model (as for export). Vocabulary pruning stays where it is
(``finbert2 convert multilingual-e5-small --prune_vocab``).
"""

from __future__ import annotations

import copy
import logging
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from finbert2.errors import ConfigError, OutputDirError
from finbert2.precision import bf16_field, resolve_bf16

logger = logging.getLogger("finbert2.prune")


@dataclass
class PruneArguments:
    model_name_or_path: str = field(metadata={"help": "Retriever folder to prune (or the first positional argument)."})
    output_dir: str = field(metadata={"help": "Folder to write (or the second positional argument)."})
    keep_layers: str = field(metadata={"help": "Comma-separated indices of the encoder layers kept, e.g. 0,2,4,6,8,10."})
    train_data: str = field(metadata={"help": "Distillation corpus: JSONL with --text_field, CSV, or .txt one text per line."})
    text_field: str = field(default="text", metadata={"help": "Text field of --train_data."})
    query_data: str | None = field(default=None, metadata={
        "help": "Queries to distil too (JSONL with --query_field, CSV or .txt), encoded with the query prompt: "
                "a retriever embeds short questions as well as passages, and passages alone teach the student "
                "nothing about them."})
    query_field: str = field(default="query", metadata={"help": "Text field of --query_data."})
    query_share: float = field(default=0.25, metadata={"help": "Share of each batch drawn from --query_data."})
    query_passages: int = field(default=2, metadata={
        "help": "Passages each query brings into its batch when --query_data rows are retrieval training rows "
                "(`pos`, `neg` lists): its first positive, then its first negatives. The score loss then "
                "ranks the candidates a retriever must tell apart, not only random corpus passages; 0: none."})
    hidden_loss_weight: float = field(default=0.0, metadata={
        "help": "Weight of the intermediate-layer loss (TinyBERT): every kept layer but the last learns the "
                "teacher's hidden states after the layers it stands for (kept layer k -> teacher states after "
                "layer keep[k+1]-1), as MSE relative to those states' mean square; 0: off."})
    score_loss_weight: float = field(default=0.0, metadata={
        "help": "Weight of the score loss: KL divergence from the teacher's to the student's softmax of each "
                "batch query's cosine scores over the batch's passages (needs --query_data); 0: off."})
    score_temperature: float = field(default=0.02, metadata={
        "help": "Temperature of the score loss's softmax (cosines of an e5 model spread over ~0.1)."})
    max_steps: int = field(default=300, metadata={"help": "Distillation steps."})
    save_steps: int = field(default=100, metadata={
        "help": "Steps between checkpoints (0: none). An interrupted run started again with the same arguments "
                "resumes from its last checkpoint (kept beside OUT until the model is written)."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Texts per step."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (linear decay to 0)."})
    max_length: int = field(default=256, metadata={"help": "Tokens per training text (longer ones are cut)."})
    seed: int = field(default=42, metadata={"help": "Seed of the text order and dropout."})
    bf16: str = bf16_field()  # distillation only: the check scores both models in fp32
    check: str | None = field(default=None, metadata={"help": "Retrieval evaluation folder scoring the student "
                                                               "against the source model (as finbert2 export)."})
    check_split: str = field(default="test", metadata={"help": "Split of the --check folder."})
    max_drop: float = field(default=0.02, metadata={"help": "Largest allowed nDCG@10 drop (absolute)."})
    min_cosine: float = field(default=0.0, metadata={"help": "Smallest allowed cosine to the source vectors."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an earlier model in output_dir."})

    def __post_init__(self):
        try:
            self.layers = [int(x) for x in self.keep_layers.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"finbert2 prune: --keep_layers takes comma-separated layer indices, not "
                              f"'{self.keep_layers}'") from None
        if not self.layers or self.layers != sorted(set(self.layers)) or self.layers[0] < 0:
            raise ConfigError(f"finbert2 prune: --keep_layers must be distinct increasing indices >= 0, not "
                              f"'{self.keep_layers}'")
        for name in ("max_steps", "per_device_train_batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"finbert2 prune: {name} must be at least 1")
        if self.save_steps < 0:
            raise ConfigError("finbert2 prune: save_steps must be >= 0")
        if not 0 <= self.query_share < 1:
            raise ConfigError("finbert2 prune: --query_share must be in [0, 1)")
        if self.query_passages < 0 or self.hidden_loss_weight < 0 or self.score_loss_weight < 0:
            raise ConfigError("finbert2 prune: --query_passages, --hidden_loss_weight and --score_loss_weight "
                              "must be >= 0")
        if self.score_temperature <= 0:
            raise ConfigError("finbert2 prune: --score_temperature must be > 0")
        if self.score_loss_weight and not self.query_data:
            raise ConfigError("finbert2 prune: --score_loss_weight needs --query_data (the scores are a query's)")
        if self.max_drop < 0 or not 0 <= self.min_cosine <= 1:
            raise ConfigError("finbert2 prune: need --max_drop >= 0 and --min_cosine in [0, 1]")


def keep_layers(model: torch.nn.Module, layers: list[int]) -> torch.nn.Module:
    """A copy of ``model`` (a BERT-like base model) holding only the encoder layers ``layers``."""
    encoder_layers = getattr(getattr(model, "encoder", None), "layer", None)
    if encoder_layers is None:
        raise ConfigError(f"finbert2 prune: {type(model).__name__} has no encoder.layer list to prune")
    if layers[-1] >= len(encoder_layers):
        raise ConfigError(f"finbert2 prune: the model has {len(encoder_layers)} layers (0-{len(encoder_layers) - 1}); "
                          f"cannot keep layer {layers[-1]}")
    student = copy.deepcopy(model)
    student.encoder.layer = torch.nn.ModuleList([student.encoder.layer[i] for i in layers])
    student.config.num_hidden_layers = len(layers)
    return student


# What must match for a checkpoint to be resumed: everything that shapes the steps already taken.
RESUME_KEYS = ("model_name_or_path", "keep_layers", "train_data", "text_field", "query_data", "query_field",
               "query_share", "query_passages", "hidden_loss_weight", "score_loss_weight", "score_temperature",
               "max_steps", "per_device_train_batch_size", "learning_rate", "max_length", "seed")
CHECKPOINT_STATE = "distillation_state.pt"


def checkpoint_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.checkpoint"


def checkpoint_folders(folder: Path) -> tuple[Path, Path]:
    """The checkpoint and the folder a new one is written to before it replaces the old."""
    return folder, folder.with_name(folder.name + ".new")


def remove_checkpoints(folder: Path) -> None:
    for path in checkpoint_folders(folder):
        shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(folder: Path, student, optimizer, schedule, losses: list[float], samplers,
                    args: PruneArguments) -> None:
    """Student weights, optimizer, schedule, the text order and the RNG, written to a fresh folder that then
    replaces the previous checkpoint (a kill while saving leaves the previous one whole)."""
    fresh = checkpoint_folders(folder)[1]
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    student.save_pretrained(fresh)
    torch.save({"losses": losses, "optimizer": optimizer.state_dict(),  # the step is len(losses)
                "schedule": schedule.state_dict(), "samplers": [s.state() if s else None for s in samplers],
                "torch_rng": torch.get_rng_state(),
                "arguments": {k: getattr(args, k) for k in RESUME_KEYS}}, fresh / CHECKPOINT_STATE)
    shutil.rmtree(folder, ignore_errors=True)
    fresh.rename(folder)


def load_checkpoint(folder: Path, args: PruneArguments) -> tuple[Path, dict] | None:
    """``(folder, state)`` of the last whole checkpoint (None when there is none), refused when it came from
    other arguments. A kill between removing the previous checkpoint and renaming the new one leaves only
    the new one, whole (its state is written last): it is found under its temporary name."""
    state = None
    for candidate in checkpoint_folders(folder):
        try:
            state = torch.load(candidate / CHECKPOINT_STATE, weights_only=False)  # our own file: RNG tuples
        except (OSError, RuntimeError, EOFError):  # absent, or cut short by a kill while saving
            continue
        folder = candidate
        break
    if state is None:
        return None
    # a checkpoint written before a setting existed ran with its default
    saved = {f.name: f.default for f in fields(PruneArguments) if f.name in RESUME_KEYS} | state["arguments"]
    differing = [k for k in RESUME_KEYS if saved.get(k) != getattr(args, k)]
    if differing:
        k = differing[0]
        raise ConfigError(f"{folder}: a checkpoint of another distillation ({k} was {saved.get(k)!r}, "
                          f"now {getattr(args, k)!r}); pass --overwrite_output_dir True to start over")
    return folder, state


class _Shuffled:
    """Endless draws without replacement from ``rows``, reshuffled each pass; its state resumes the order."""

    def __init__(self, rows: list[list[int]], rng: random.Random):
        self.rows, self.rng, self.order = rows, rng, []

    def take(self, n: int) -> list[list[int]]:
        while len(self.order) < n:
            self.order += self.rng.sample(range(len(self.rows)), len(self.rows))
        batch, self.order = self.order[:n], self.order[n:]
        return [self.rows[i] for i in batch]

    def state(self) -> dict:
        return {"order": list(self.order), "rng": self.rng.getstate()}

    def restore(self, state: dict) -> None:
        self.order = list(state["order"])
        self.rng.setstate(state["rng"])


def layer_targets(keep: list[int], teacher_layers: int) -> list[int]:
    """For each kept layer but the last, the index in the teacher's ``hidden_states`` (0: the embeddings, i: the
    output of layer i-1) of the states it must produce: kept layer k stands for teacher layers keep[k] ..
    keep[k+1]-1, so it learns the states after layer keep[k+1]-1. The last kept layer is taught by the pooled
    vector (with CLS pooling the teacher computes its last layer at [CLS] only)."""
    if keep[-1] >= teacher_layers:
        raise ConfigError(f"finbert2 prune: the model has {teacher_layers} layers; cannot keep layer {keep[-1]}")
    return list(keep[1:])


def hidden_state_loss(student_states, wanted: list[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the kept layers but the last of the MSE between the student's states after kept layer k
    (``student_states[k + 1]``) and ``wanted[k]`` (real tokens only), each divided by ``wanted[k]``'s mean
    square: scale-free, 1 for a student that outputs zeros."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    total = torch.zeros(())
    for k, want in enumerate(wanted):
        want = want.float()
        error = ((student_states[k + 1].float() - want) ** 2 * mask).sum()
        total = total + error / (want ** 2 * mask).sum().clamp(min=1e-12)
    return total / max(len(wanted), 1)


def score_loss(student_queries: torch.Tensor, student_passages: torch.Tensor, teacher_queries: torch.Tensor,
               teacher_passages: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the softmax over passages of each query's cosine scores / ``temperature``,
    averaged over queries: the student learns the teacher's ranking of the batch's passages, which MSE on the
    vectors teaches only through their distance."""
    def log_probs(q, p):
        q, p = torch.nn.functional.normalize(q.float(), dim=-1), torch.nn.functional.normalize(p.float(), dim=-1)
        return torch.log_softmax(q @ p.T / temperature, dim=-1)

    return torch.nn.functional.kl_div(log_probs(student_queries, student_passages),
                                      log_probs(teacher_queries, teacher_passages), log_target=True,
                                      reduction="batchmean")


def read_query_rows(path: str, query_field: str, passages: int) -> list[tuple[str, list[str]]]:
    """``(query, passages)`` of each row of ``--query_data``: a plain text file or rows without ``pos`` give no
    passages; retrieval training rows give their first positive, then their first negatives, ``passages`` in all."""
    from finbert2.data import iter_records
    from finbert2.data.readers import get_text
    from finbert2.errors import DataError

    rows = []
    for lineno, obj in iter_records(Path(path)):
        query = get_text(obj, query_field, Path(path), lineno)
        brought: list[str] = []
        if isinstance(obj, dict) and passages:
            for name in ("pos", "neg"):
                value = obj.get(name, [])
                if isinstance(value, str):
                    value = [value]
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise DataError(path, lineno, f"'{name}' must be a list of texts")
                brought += value[:1] if name == "pos" else value
        rows.append((query, brought[:passages]))
    if not rows:
        raise DataError(path, None, f"no texts (field '{query_field}')")
    return rows


def distill(teacher, student: torch.nn.Module, texts: list[str], args: PruneArguments,
            queries: list[tuple[str, list[str]]] | None = None, bf16: bool = False,
            checkpoint: Path | None = None) -> list[dict[str, float]]:
    """Distil the teacher into the student: MSE between their pooled vectors of the passages and of the queries
    (each with its own prompt, ``args.query_share`` of every batch; each query bringing its own passages), plus
    the intermediate-layer and score losses when weighted. Returns every step's losses (``loss``, the weighted
    sum, and each part). With ``checkpoint``, resumes from the state saved there and saves to it every
    ``args.save_steps`` steps."""
    from finbert2.retrieve.encoder import pad_batch, pool

    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)

    def tokenized(prompt: str, items: list[str]) -> list[list[int]]:
        return teacher.tokenizer([prompt + t for t in items], truncation=True, max_length=args.max_length,
                                 return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    passages = _Shuffled(tokenized(teacher.passage_instruction, texts), rng)
    questions = None
    if queries:
        query_ids = tokenized(teacher.query_instruction, [q for q, _ in queries])
        brought = [tokenized(teacher.passage_instruction, ps) if ps else [] for _, ps in queries]
        questions = _Shuffled([[q, b] for q, b in zip(query_ids, brought)], rng)
    per_batch = round(args.query_share * args.per_device_train_batch_size) if questions else 0
    targets = layer_targets(args.layers, teacher.model.config.num_hidden_layers) if args.hidden_loss_weight else []
    pad_id = teacher.tokenizer.pad_token_id or 0
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / args.max_steps)
    losses: list[dict[str, float]] = []
    saved = load_checkpoint(checkpoint, args) if checkpoint else None
    if saved is not None:
        from safetensors.torch import load_file

        folder, state = saved
        student.load_state_dict(load_file(folder / "model.safetensors"))
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        for sampler, sampler_state in zip((passages, questions), state["samplers"]):
            if sampler is not None:
                sampler.restore(sampler_state)
        torch.set_rng_state(state["torch_rng"])
        losses = [x if isinstance(x, dict) else {"loss": x, "pooled_mse": x} for x in state["losses"]]
        logger.info("resuming the distillation from step %d (%s)", len(losses), folder)
    student.train()
    progress = tqdm(range(len(losses), args.max_steps), desc="distilling", unit="step", mininterval=5,
                    initial=len(losses), total=args.max_steps)
    for _ in progress:
        asked = questions.take(per_batch) if per_batch else []
        own = [p for _, ps in asked for p in ps][:args.per_device_train_batch_size - per_batch]
        rows = passages.take(args.per_device_train_batch_size - per_batch - len(own)) + own + [q for q, _ in asked]
        n_passages = len(rows) - len(asked)
        input_ids, attention_mask = pad_batch(rows, pad_id)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=teacher.bf16):
            taught = teacher.model(input_ids=input_ids, attention_mask=attention_mask,
                                   output_hidden_states=bool(targets))
        # inference tensors; their clones can enter the autograd graph
        target = pool(taught.last_hidden_state, attention_mask, teacher.pooling).float().clone()
        teacher_states = [taught.hidden_states[t].clone() for t in targets] if targets else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # weights and optimizer stay fp32
            out = student(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=bool(targets))
        pooled = pool(out.last_hidden_state.float(), attention_mask, teacher.pooling)
        parts = {"pooled_mse": torch.nn.functional.mse_loss(pooled, target)}
        loss = parts["pooled_mse"]
        if targets:
            parts["hidden_mse"] = hidden_state_loss(out.hidden_states, teacher_states, attention_mask)
            loss = loss + args.hidden_loss_weight * parts["hidden_mse"]
        if args.score_loss_weight and asked:
            parts["score_kl"] = score_loss(pooled[n_passages:], pooled[:n_passages], target[n_passages:],
                                           target[:n_passages], args.score_temperature)
            loss = loss + args.score_loss_weight * parts["score_kl"]
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append({"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}})
        progress.set_postfix({k: f"{v:.4g}" for k, v in losses[-1].items()}, refresh=False)
        if checkpoint and args.save_steps and len(losses) % args.save_steps == 0 and len(losses) < args.max_steps:
            save_checkpoint(checkpoint, student, optimizer, schedule, losses, (passages, questions), args)
    student.eval()
    return losses


def write_loss_log(folder: Path, losses: list[dict[str, float]], args: PruneArguments) -> None:
    """``loss_log.csv`` (the Trainer stages' columns, then each part of the loss) and its plot ``loss.png``."""
    import csv

    from finbert2.training import LOSS_LOG_FILE, plot_loss_curves

    parts = [k for k in losses[0] if k != "loss"]
    with (folder / LOSS_LOG_FILE).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "loss", "learning_rate", *parts])
        for step, row in enumerate(losses, 1):
            writer.writerow([step, f"{row['loss']:.6g}", f"{args.learning_rate * (1 - (step - 1) / args.max_steps):.6g}",
                             *(f"{row[k]:.6g}" for k in parts)])
    plot_loss_curves(folder, title=f"distillation to layers {args.keep_layers}", columns=["loss", *parts],
                     log_scale=True)


def mean_losses(losses: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(row[k] for row in losses) / len(losses) for k in losses[0]}


def run_prune(args: PruneArguments) -> dict:
    from finbert2.export.check import Gate, check_retriever, gate_failures, load_check_data
    from finbert2.export.cli import holds_export, model_kind, publish, read_texts, write_non_weight_files
    from finbert2.export.runtime import exported_backend
    from finbert2.retrieve.encoder import DenseEncoder, load_encoder_model

    started = time.perf_counter()
    source, out = Path(args.model_name_or_path), Path(args.output_dir)
    if exported_backend(source) != "torch" or model_kind(str(source)) != "retriever":
        raise ConfigError(f"{source}: finbert2 prune takes a torch retriever folder")
    if holds_export(out) and not args.overwrite_output_dir:
        raise OutputDirError(f"{out}: holds an earlier model; pass --overwrite_output_dir True or choose another folder")
    check_data = load_check_data("retriever", args.check, args.check_split, "text", "label") if args.check else None
    texts = read_texts(args.train_data, args.text_field)
    queries = read_query_rows(args.query_data, args.query_field, args.query_passages) if args.query_data else None
    precision = resolve_bf16(args.bf16)
    logger.info("distillation precision: %s (%s)", "bf16 autocast" if precision.bf16 else "fp32", precision.reason)
    teacher = DenseEncoder.from_pretrained(str(source), device="cpu", bf16=precision.bf16)
    # The student starts from the plain model (the teacher's may run its last layer at [CLS] only).
    student = keep_layers(load_encoder_model(str(source)), args.layers)
    logger.info("pruning %s to layers %s, distilling on %d texts and %d queries for %d steps", source, args.layers,
                len(texts), len(queries or ()), args.max_steps)
    checkpoint = checkpoint_dir(out)
    if args.overwrite_output_dir:
        remove_checkpoints(checkpoint)
    losses = distill(teacher, student, texts, args, queries, bf16=precision.bf16, checkpoint=checkpoint)

    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write_non_weight_files(source, teacher, staging)
        student.save_pretrained(staging)
        write_loss_log(staging, losses, args)
        gate = Gate(args.max_drop, args.min_cosine)
        last = mean_losses(losses[-10:])
        report = {"source": str(source), "kind": "retriever", "pruned_layers": args.layers,
                  "source_layers": teacher.model.config.num_hidden_layers, "distillation_steps": args.max_steps,
                  "distillation_precision": "bf16" if precision.bf16 else "fp32",
                  "distillation_texts": len(texts), "distillation_queries": len(queries or ()),
                  "distillation_query_passages": sum(len(ps) for _, ps in queries or ()),
                  "losses": {"hidden_state": args.hidden_loss_weight, "score": args.score_loss_weight,
                             "score_temperature": args.score_temperature},
                  "first_loss": losses[0]["loss"], "last_loss": last["loss"],
                  "first_losses": losses[0], "last_losses": last, "gate": asdict(gate)}
        failures: list[str] = []
        if check_data is not None:
            teacher.bf16 = False  # the check compares fp32 with fp32
            result = check_retriever(teacher, DenseEncoder.from_pretrained(str(staging), device="cpu", bf16=False),
                                     check_data)
            report["check"] = {"data": args.check, **result}
            failures = gate_failures(result, gate)
        report.update(passed=not failures, failures=failures, seconds=time.perf_counter() - started)
        published = publish(staging, out, report, failures, "prune")
        remove_checkpoints(checkpoint)  # the model is written: nothing left to resume
        return published
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from finbert2.config import parse_args
    from finbert2.export.cli import positional_to_flags
    from finbert2.run import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = parse_args((PruneArguments,), positional_to_flags(argv), prog="finbert2 prune")
    setup_logging()
    report = run_prune(args)
    summary = (f"pruned {report['source_layers']} -> {len(report['pruned_layers'])} layers -> {args.output_dir}; "
               f"distillation loss {report['first_loss']:.4g} -> {report['last_loss']:.4g}")
    if "check" in report:
        summary += f"; ndcg_at_10 {report['check']['source']:.4f} -> {report['check']['exported']:.4f}"
    print(summary, file=sys.stderr)
    return 0
