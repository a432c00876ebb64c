"""The `sample` pipeline: labels, per-sample noise, resumable PNG / ADM .npz writing, manifest, grids.

The sampler maths lives in `sendvae_cli.flow.samplers`; this room decides which samples to draw, with
which randomness, and how they reach the disk.
"""
