#!/usr/bin/env bash
# Builds and installs distributed-leasing into the current Python, then runs the competition
# demo's four scenarios (examples/run-competition-demo.sh) on whatever store is configured:
# appsettings.Local.json / RedisLeasing__* variables, or DEMO_URL=redis://... ; with nothing
# configured, on the embedded SQLite store (one machine only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
echo "==== building and installing distributed-leasing (a release build takes ~3 min on 2 cores)"
"$PYTHON" -m pip install -q .
echo "==== running the competition demo"
exec bash examples/run-competition-demo.sh "$@"
