"""``finbert2 <stage> ...``: one command in front of every stage.

Each stage module exposes ``main(argv) -> int``; the same arguments work through
``python -m finbert2.<stage>`` and the stage launchers (``sh <launcher> <config.yaml> [--key value]``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence

from finbert2 import __version__
from finbert2.errors import FinBERT2Error

# name -> (module with main(argv), one-line description). A stage is listed once its module exists.
STAGES: dict[str, tuple[str, str]] = {
    "tokenizer": ("finbert2.tokenizer.cli", "train a SentencePiece model and extend a BERT WordPiece vocab with domain words"),
    "mlm": ("finbert2.pretrain.mlm", "masked-LM pretraining with Chinese whole-word masking"),
    "retromae": ("finbert2.pretrain.retromae", "RetroMAE retrieval-oriented pretraining"),
    "classify": ("finbert2.classify.cli", "Fin-Labeler: train | baseline | predict"),
    "retrieve": ("finbert2.retrieve.cli", "Fin-Retriever: train | mine | evaluate | index | search | import"),
    "rerank": ("finbert2.rerank.cli", "Fin-Reranker: cross-encoder train | evaluate | predict"),
    "topics": ("finbert2.topics.cli", "Fin-TopicModel: BERTopic over encoder embeddings"),
    "export": ("finbert2.export.cli", "ONNX export of a retriever or classifier, int8 quantization behind an accuracy check"),
    "prune": ("finbert2.export.prune", "drop a retriever's layers and distil it to the source model's vectors, behind the same check"),
    "serve": ("finbert2.serve.cli", "HTTP service: embeddings (TEI/OpenAI), hybrid search, classification"),
    "merge": ("finbert2.merge.cli", "interpolate two checkpoints (alpha * A + (1 - alpha) * B), alpha fixed or chosen on validation"),
    "numllm": ("finbert2.numllm.cli", "NumLLM: domain + numeric LoRA on a causal LM: train | build-numeric | merge | evaluate"),
    "report": ("finbert2.report.cli", "build report.md/report.html from run folders"),
    "convert": ("finbert2.converters.cli", "convert public data sets (CFBenchmark, SC_2, Fin-Eva, ...) to our formats"),
    "demo-data": ("finbert2.demo.generate", "regenerate the synthetic demo data set"),
}


def available_stages() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, help_text) in STAGES.items():
        try:
            present = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            present = False
        if present:
            found[name] = (module, help_text)
    return found


def usage() -> str:
    stages = available_stages()
    width = max(len(n) for n in stages) if stages else 0
    lines = [
        f"finbert2 {__version__}: the FinBERT2 toolkit",
        "",
        "usage: finbert2 <stage> [config.yaml] [--key value ...]",
        "       finbert2 <stage> --help",
        "",
        "stages:",
    ]
    lines += [f"  {name.ljust(width)}  {help_text}" for name, (_, help_text) in stages.items()]
    return "\n".join(lines)


def run_main(main_fn: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a stage's ``main`` and turn a user-fixable error into one line on stderr and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(main_fn(argv) or 0)
    except FinBERT2Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0 if argv else 2
    if argv[0] in {"-V", "--version"}:
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    stages = available_stages()
    if name not in stages:
        print(f"error: unknown stage '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(stages[name][0])
    sys.argv = [f"finbert2 {name}", *rest]
    return run_main(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
