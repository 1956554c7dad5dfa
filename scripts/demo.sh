#!/usr/bin/env bash
# Builds and installs distributed-leasing, then runs the competition demo's five scenarios
# (examples/run-competition-demo.sh) on whatever store is configured: appsettings.Local.json /
# RedisLeasing__* variables, or DEMO_URL=redis://... ; with nothing configured, on the embedded
# SQLite store (one machine only).
#
# Needs Python >= 3.11 and Rust >= 1.88. Installs into the active virtual environment, or else
# into the project's own .venv (created here; see scripts/_python.sh), never into a system Python.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# shellcheck source=scripts/_python.sh
source scripts/_python.sh
pick_python
check_rust
echo "==== installing the build tool (maturin)"
"$PY" -m pip install -q "maturin>=1.9,<2"
echo "==== building distributed-leasing (a release build: about 3 minutes on 2 cores; cargo shows its progress)"
rm -rf target/demo-wheel
"$PY" -m maturin build --release -o target/demo-wheel --interpreter "$PY"
"$PY" -m pip install -q --force-reinstall --no-deps target/demo-wheel/*.whl
echo "==== running the competition demo"
PATH="$(dirname "$PY"):$PATH"
export PATH PYTHON=$PY
exec bash examples/run-competition-demo.sh "$@"
