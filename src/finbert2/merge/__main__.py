"""``python -m finbert2.merge MODEL_A MODEL_B OUTPUT_DIR --alpha A|auto ...``."""

import sys

from finbert2.cli import run_main
from finbert2.merge.cli import main

sys.exit(run_main(main))
