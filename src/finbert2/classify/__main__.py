import sys

from finbert2.classify.cli import main
from finbert2.cli import run_main

sys.exit(run_main(main))
