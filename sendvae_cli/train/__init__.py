"""Shared training machinery: run folders, checkpoints, samplers, EMA, metrics, the step loop."""
