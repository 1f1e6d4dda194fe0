#!/usr/bin/env bash
# One command, local: explain the embedded demo with Grad-CAM on Beam's DirectRunner.
#
#   ./run_local.sh            creates .venv if missing (through setup.py), generates the demo
#                             once (synthetic shapes as JPEG TFRecords + a small CNN, cached in
#                             demo/), explains it into out/demo/ (scored by deletion and the
#                             pointing game), renders out/demo/grid.png, writes the run's
#                             report out/demo/report.html and prints the counts and paths.
#   ./run_local.sh ARGS...    runs the pipeline with your arguments instead:
#                             ./run_local.sh --input 'data/*.tfrecord' --output out/expl \
#                                 --model model.keras --method gradcam
set -euo pipefail
cd "$(dirname "$0")"
source ./scripts/venv.sh
ensure_venv
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pipeline "$@"
fi
exec .venv/bin/python -m pipeline.demo --demo_dir demo --out_dir out/demo
