# Shared by run_tests.sh and run_local.sh: create .venv if missing and (re)install the
# project through setup.py whenever setup.py changed since the last install, or when the
# requested extra was not installed yet (an install with the test extra serves both).
# Usage: source scripts/venv.sh; ensure_venv [EXTRA]
ensure_venv() {
  local extra="${1:-}" stamp=".venv/.installed"
  if [ ! -x .venv/bin/python ]; then
    local python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
    "$python" -m venv .venv
  fi
  local setup_hash installed_hash="" installed_extra=""
  setup_hash="$(cksum < setup.py)"
  if [ -f "$stamp" ]; then
    installed_hash="$(sed -n 1p "$stamp")"
    installed_extra="$(sed -n 2p "$stamp")"
  fi
  if [ "$installed_hash" != "$setup_hash" ] || { [ -n "$extra" ] && [ "$installed_extra" != "$extra" ]; }; then
    local spec="."
    [ -n "$extra" ] && spec=".[$extra]"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e "$spec"
    printf '%s\n%s\n' "$setup_hash" "$extra" > "$stamp"
  fi
}
