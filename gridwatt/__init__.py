"""gridwatt: measured energy and carbon of GPU training jobs."""

__version__ = "0.1.0"
