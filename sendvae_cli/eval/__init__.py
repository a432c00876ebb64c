"""Evaluation pipelines: FID / sFID / IS / precision / recall (`sendvae fid`) and attribute probes (`sendvae probe`)."""
