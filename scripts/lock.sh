#!/usr/bin/env bash
# Refresh requirements.lock: resolve gridwatt[dev] from pyproject.toml in a throwaway virtualenv
# and pin every package that resolves. scripts/setup.sh (and so CI) installs with
# `pip install -c requirements.lock`, so every machine tests the same versions until this is run again.
#   bash scripts/lock.sh        # then review `git diff requirements.lock` and commit it
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp" build/lib build/bdist.*' EXIT  # what pip's build leaves; build/typecheck stays
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$tmp/venv/bin/python" -m pip install -q '.[dev]'
{
  echo "# Pinned versions of gridwatt's dependencies (runtime and dev), installed by scripts/setup.sh"
  echo "# as pip constraints. Regenerate with: bash scripts/lock.sh"
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -v -i '^gridwatt[= @]' | LC_ALL=C sort -f
} > requirements.lock
echo "requirements.lock: $(grep -vc '^#' requirements.lock) packages pinned"
