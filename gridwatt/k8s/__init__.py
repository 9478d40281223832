"""Kubernetes APIs gridwatt talks to (generated code; see proto/gridwatt/k8s)."""
