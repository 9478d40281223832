"""GPU sources: each one reads every GPU of the node and returns GpuReadings (see base.py)."""
