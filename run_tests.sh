#!/usr/bin/env bash
# The test command: creates or updates .venv from setup.py, then runs the whole suite.
# Extra arguments go to pytest (e.g. ./run_tests.sh tests/explain_lib -k filters).
set -euo pipefail
cd "$(dirname "$0")"
source ./scripts/venv.sh
ensure_venv test
# The report's browser test (tests/pipeline/test_report.py) loads the page in headless
# Chromium: install Debian's when it is missing and we may (root, apt-get). Never fatal: the
# test skips, saying why, when no browser is found.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
    >/dev/null 2>&1 || echo "run_tests.sh: could not install chromium; the browser test will skip." >&2
fi
exec .venv/bin/python -m pytest "$@"
