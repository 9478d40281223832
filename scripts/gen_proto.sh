#!/usr/bin/env bash
# Regenerates the generated protobuf/gRPC code from proto/ with the pinned grpcio-tools:
#   proto/gridwatt/v1/*.proto                      -> gridwatt/v1/ (gridwatt's wire contract)
#   proto/gridwatt/k8s/podresources/v1/*.proto     -> gridwatt/k8s/podresources/v1/ (the kubelet's API)
# Usage: scripts/gen_proto.sh [--check]   (--check fails if the checked-in code drifted)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=.
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
fi
gen_dirs=(gridwatt/v1 gridwatt/k8s/podresources/v1)
for d in "${gen_dirs[@]}"; do
  "$PY" -m grpc_tools.protoc -Iproto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "proto/$d"/*.proto
done
if [ "${1:-}" = "--check" ]; then
  for d in "${gen_dirs[@]}"; do
    if ! diff -r -x __init__.py -x __pycache__ "$out/$d" "$d" >/dev/null; then
      echo "generated protobuf code in $d drifted from proto/: run scripts/gen_proto.sh" >&2
      diff -r -x __init__.py -x __pycache__ "$out/$d" "$d" | head -20 >&2
      exit 1
    fi
  done
  echo "generated protobuf code matches proto/"
fi
