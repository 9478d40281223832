#!/usr/bin/env bash
# Regenerates gridwatt/v1/*_pb2*.py from proto/ with the pinned grpcio-tools.
# Usage: scripts/gen_proto.sh [--check]   (--check fails if the checked-in code drifted)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=.
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
fi
"$PY" -m grpc_tools.protoc -Iproto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" proto/gridwatt/v1/*.proto
if [ "${1:-}" = "--check" ]; then
  if ! diff -r -x __init__.py -x __pycache__ "$out/gridwatt/v1" gridwatt/v1 >/dev/null; then
    echo "generated protobuf code in gridwatt/v1 drifted from proto/: run scripts/gen_proto.sh" >&2
    diff -r -x __init__.py -x __pycache__ "$out/gridwatt/v1" gridwatt/v1 | head -20 >&2
    exit 1
  fi
  echo "generated protobuf code matches proto/"
fi
