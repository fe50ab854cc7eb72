#!/usr/bin/env bash
# Installs (if needed), lints, and runs the test suite on CPU with 8 simulated devices.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/ruff check . || exit 1
.venv/bin/ruff format --check . || exit 1
.venv/bin/python -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests (exit code 5): treating as failure, the suite must not be empty"
  exit 1
fi
exit "$rc"
