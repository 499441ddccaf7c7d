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
from dataclasses import asdict, dataclass, field
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
               "query_share", "max_steps", "per_device_train_batch_size", "learning_rate", "max_length", "seed")
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
    differing = [k for k in RESUME_KEYS if state["arguments"].get(k) != getattr(args, k)]
    if differing:
        k = differing[0]
        raise ConfigError(f"{folder}: a checkpoint of another distillation ({k} was {state['arguments'].get(k)!r}, "
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


def distill(teacher, student: torch.nn.Module, texts: list[str], args: PruneArguments,
            queries: list[str] | None = None, bf16: bool = False, checkpoint: Path | None = None) -> list[float]:
    """MSE between the student's and the teacher's pooled vectors of the passages (and of the queries, each
    with its own prompt, ``args.query_share`` of every batch); the loss of every step. With ``checkpoint``,
    resumes from the state saved there and saves to it every ``args.save_steps`` steps."""
    from finbert2.retrieve.encoder import pad_batch, pool

    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)

    def tokenized(prompt: str, items: list[str]) -> list[list[int]]:
        return teacher.tokenizer([prompt + t for t in items], truncation=True, max_length=args.max_length,
                                 return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    passages = _Shuffled(tokenized(teacher.passage_instruction, texts), rng)
    questions = _Shuffled(tokenized(teacher.query_instruction, queries), rng) if queries else None
    per_batch = round(args.query_share * args.per_device_train_batch_size) if questions else 0
    pad_id = teacher.tokenizer.pad_token_id or 0
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / args.max_steps)
    losses: list[float] = []
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
        losses = list(state["losses"])
        logger.info("resuming the distillation from step %d (%s)", len(losses), folder)
    student.train()
    progress = tqdm(range(len(losses), args.max_steps), desc="distilling", unit="step", mininterval=5,
                    initial=len(losses), total=args.max_steps)
    for _ in progress:
        rows = passages.take(args.per_device_train_batch_size - per_batch)
        if per_batch:
            rows += questions.take(per_batch)
        input_ids, attention_mask = pad_batch(rows, pad_id)
        target = teacher.pooled(rows).clone()  # an inference tensor; its clone can enter the autograd graph
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # weights and optimizer stay fp32
            states = student(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        loss = torch.nn.functional.mse_loss(pool(states.float(), attention_mask, teacher.pooling), target)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        progress.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
        if checkpoint and args.save_steps and len(losses) % args.save_steps == 0 and len(losses) < args.max_steps:
            save_checkpoint(checkpoint, student, optimizer, schedule, losses, (passages, questions), args)
    student.eval()
    return losses


def write_loss_log(folder: Path, losses: list[float], args: PruneArguments) -> None:
    """``loss_log.csv`` (the columns the Trainer stages write) and its plot ``loss.png``."""
    import csv

    from finbert2.training import LOSS_LOG_FILE, plot_loss_curves

    with (folder / LOSS_LOG_FILE).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "loss", "learning_rate"])
        for step, loss in enumerate(losses, 1):
            writer.writerow([step, f"{loss:.6g}", f"{args.learning_rate * (1 - (step - 1) / args.max_steps):.6g}"])
    plot_loss_curves(folder, title=f"distillation to layers {args.keep_layers}: MSE to the source vectors")


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
    queries = read_texts(args.query_data, args.query_field) if args.query_data else None
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
        report = {"source": str(source), "kind": "retriever", "pruned_layers": args.layers,
                  "source_layers": teacher.model.config.num_hidden_layers, "distillation_steps": args.max_steps,
                  "distillation_precision": "bf16" if precision.bf16 else "fp32",
                  "distillation_texts": len(texts), "distillation_queries": len(queries or ()),
                  "first_loss": losses[0], "last_loss": sum(losses[-10:]) / len(losses[-10:]), "gate": asdict(gate)}
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
