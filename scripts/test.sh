#!/usr/bin/env bash
# Install the test dependencies and run the whole test suite.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/deps.sh test
exec .venv/bin/python -m pytest -ra -p no:cacheprovider "$@"
