"""The NVML GPU source: every GPU of the node through NVIDIA's management library (pynvml)."""

from gridwatt.agent.sources.nvml.source import NvmlDeviceInfo, NvmlSource

__all__ = ["NvmlDeviceInfo", "NvmlSource"]
