#!/usr/bin/env bash
# The test command: creates or updates .venv from setup.py, then runs the whole suite.
# Extra arguments go to pytest (e.g. ./run_tests.sh tests/explain_lib -k filters).
set -euo pipefail
cd "$(dirname "$0")"
source ./scripts/venv.sh
ensure_venv test
exec .venv/bin/python -m pytest "$@"
