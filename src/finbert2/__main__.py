import sys

from finbert2.cli import main

sys.exit(main())
