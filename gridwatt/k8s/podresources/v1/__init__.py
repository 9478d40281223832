"""Generated code of the kubelet pod-resources API v1 (proto/gridwatt/k8s/podresources/v1)."""
