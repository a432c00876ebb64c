"""Evaluation pipelines: FID / sFID / IS / precision / recall (`sendvae fid`), and later probes."""
