# Shared by run_tests.sh and run_local.sh: create .venv if missing and (re)install the
# project through setup.py whenever setup.py changed since the last install.
# Usage: source scripts/venv.sh; ensure_venv [EXTRA]
ensure_venv() {
  local extra="${1:-}" spec="." stamp=".venv/.installed"
  [ -n "$extra" ] && spec=".[$extra]"
  if [ ! -x .venv/bin/python ]; then
    local python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
    "$python" -m venv .venv
  fi
  local want
  want="$(cat setup.py; echo "$spec")"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e "$spec"
    printf '%s' "$want" > "$stamp"
  fi
}
