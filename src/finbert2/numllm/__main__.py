"""``python -m finbert2.numllm <command> ...``."""

import sys

from finbert2.numllm.cli import main

sys.exit(main())
