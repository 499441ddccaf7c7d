#!/bin/sh
# Fetch every public data set the converters and the reproduction use, from its original
# repository at a pinned commit (sha256-checked; nothing is written unless every file matches):
#
#   sh scripts/get_public_data.sh data/public [--only fin-eva cfbenchmark-basic ...]
#   export FINBERT2_PUBLIC_DATA=data/public
#
# Offline: --mirror DIR_OR_URL (or FINBERT2_DATA_MIRROR), laid out as <repo>/<commit>/<path>.
set -e
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m finbert2.data.public "$@"
