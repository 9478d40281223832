#!/usr/bin/env bash
# Set up everything (scripts/setup.sh) and run the test suite against a real InfluxDB.
# Extra arguments go to pytest, e.g. scripts/test.sh -k accounting
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
