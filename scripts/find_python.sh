#!/usr/bin/env bash
# Prints the path of the newest python3.X >= 3.11 on PATH (used by scripts/setup.sh).
# Candidates are probed quietly: a pyenv shim for a version that is not selected exists on PATH
# but fails with "pyenv: python3.13: command not found", which is not worth showing.
for cand in python3.13 python3.12 python3.11 python3; do
  if command -v "$cand" >/dev/null 2>&1 \
     && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
    command -v "$cand"
    exit 0
  fi
done
exit 1
