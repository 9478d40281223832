#!/usr/bin/env bash
# Set up everything (scripts/setup.sh) and run the demo: a local InfluxDB, the collector,
# simulated agents for two racks, a replayed training job, and the job's report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gridwatt demo "$@"
