"""Label a JSONL/CSV file with a fine-tuned Fin-Labeler: predicted label, every class probability,
optionally the [CLS] vector; batched and length-sorted; prints throughput.

    python Fin-labeler/sequence_inference.py --model_name_or_path runs/classify \
        --input_file news.jsonl --output_file predictions.jsonl [--return_cls True] [--label_field label]

Every argument is passed to `finbert2 classify predict` (see its --help).
"""

import sys

from finbert2.classify.cli import main
from finbert2.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main(main, ["predict", *sys.argv[1:]]))
