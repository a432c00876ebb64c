"""The checkpoint size line names what takes the space: modules and optimizer states."""

import torch
from torch import nn

from sendvae_cli.train.checkpoint import Checkpoints
from sendvae_cli.train.checkpoint_size import checkpoint_bytes, describe_checkpoint


def test_sizes_per_module_and_optimizer_state(tmp_path):
    small, large = nn.Linear(4, 4), nn.Linear(100, 100)  # 20 and 10,100 float32 parameters
    optimizer = torch.optim.AdamW(large.parameters())
    large(torch.ones(1, 100)).sum().backward()
    optimizer.step()
    folder = Checkpoints(tmp_path).save(1, {"vae": small, "mapper": large}, {"optimizer": optimizer.state_dict()})
    sizes = checkpoint_bytes(folder)
    assert sizes["vae"] == 20 * 4 and sizes["mapper"] == 10_100 * 4
    assert sizes["optimizer"] >= 2 * 10_100 * 4  # two AdamW moments per parameter
    line = describe_checkpoint(folder, keep=2)
    assert line.startswith("checkpoint step-000001: ") and line.index("optimizer") < line.index("mapper") < line.index("vae")
    assert "the last 2 are kept (--keep N" in line
