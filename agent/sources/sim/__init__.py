"""Simulated GPUs that play a trace or a synthetic profile (see README.md)."""
