"""Shared training machinery: run folders, checkpoints, batch order, EMA, metrics, the step loop."""
