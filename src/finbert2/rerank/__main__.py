import sys

from finbert2.cli import run_main
from finbert2.rerank.cli import main

sys.exit(run_main(main))
