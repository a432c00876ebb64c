"""A third-party plugin registers its own generators and the registry builds them.

`MicroFlow` is a generator that is not a SiT at all: a plugin owes only the contract that
GeneratorSpec documents (forward, forward_with_projections, label_drop_mask, arch and the size
attributes). `MySiT-micro/1` reuses the SiT with a size of its own.
"""

import pytest
import torch
from torch import nn

from sendvae_cli import GeneratorSpec, hookimpl
from sendvae_cli.registry import Registry


class MicroFlow(nn.Module):
    """A per-pixel MLP velocity model with one REPA projector per teacher."""

    def __init__(self, *, input_size, in_channels, num_classes=1000, class_dropout=0.1, projector_dims=(),
                 width=16, patch_size=1, **_ignored):
        super().__init__()
        self.arch = {"input_size": input_size, "in_channels": in_channels, "num_classes": num_classes,
                     "class_dropout": class_dropout, "projector_dims": list(projector_dims), "width": width,
                     "patch_size": 1}
        self.input_size, self.in_channels, self.patch_size = input_size, in_channels, 1
        self.num_classes, self.class_dropout = num_classes, class_dropout
        self.embed = nn.Linear(in_channels + 1, width)
        self.labels = nn.Embedding(num_classes + 1, width)
        self.out = nn.Linear(width, in_channels)
        self.projectors = nn.ModuleList(nn.Linear(width, d) for d in projector_dims)

    def label_drop_mask(self, batch, *, generator=None, device=None):
        mask = torch.rand(batch, generator=generator) < self.class_dropout
        return mask.to(device) if device is not None else mask

    def forward_with_projections(self, x, t, y, *, drop_labels=None):
        if drop_labels is not None:
            y = torch.where(drop_labels, torch.full_like(y, self.num_classes), y)
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        time = t.reshape(B, 1, 1).expand(B, H * W, 1).to(x.dtype)
        h = torch.tanh(self.embed(torch.cat([tokens, time], -1)) + self.labels(y)[:, None])
        v = self.out(h).transpose(1, 2).reshape(B, C, H, W)
        return v, [p(h) for p in self.projectors]

    def forward(self, x, t, y, *, drop_labels=None):
        return self.forward_with_projections(x, t, y, drop_labels=drop_labels)[0]


def build_micro_flow(spec, **arch):
    return MicroFlow(**{"width": spec.width, **arch})


class MyGenerators:
    @hookimpl
    def register_generators(self, register):
        register(GeneratorSpec(name="MicroFlow", family="MicroFlow", description="per-pixel MLP flow model",
                               width=16, factory=build_micro_flow, aliases=("micro-flow",)))
        register(GeneratorSpec(name="MySiT-micro/1", description="a two-block SiT", depth=2, width=32, heads=2,
                               patch_size=1, encoder_depth=1, projector_width=64,
                               factory="sendvae_cli.generators.sit:build_from_spec"))


@pytest.fixture
def registry():
    registry = Registry(load_outside=False)
    registry.register_plugin("my-generators", MyGenerators(), version="0.1")
    return registry


def test_plugin_generators_are_listed_and_built(registry):
    assert registry.plugins["my-generators"].registered["generator"] == ["MicroFlow", "MySiT-micro/1"]
    assert registry.plugin_of("generator", "micro-flow") == "my-generators"
    x, t, y = torch.randn(2, 4, 4, 4), torch.rand(2), torch.tensor([1, 3])
    for name in ("MicroFlow", "MySiT-micro/1"):
        model = registry.generator(name).build(input_size=4, in_channels=4, num_classes=5, projector_dims=[8])
        v, projected = model.forward_with_projections(x, t, y, drop_labels=torch.tensor([True, False]))
        assert v.shape == x.shape and projected[0].shape == (2, 16, 8)
        # What `sample` does: rebuild from the generator name and the model's own arch.
        again = registry.generator(name).build(**model.arch)
        again.load_state_dict(model.state_dict())
        assert torch.equal(again(x, t, y), model(x, t, y))
    sit = registry.generator("MySiT-micro/1").build(input_size=4, in_channels=4, num_classes=5)
    assert (sit.arch["depth"], sit.arch["width"], sit.arch["projector_width"]) == (2, 32, 64)


def test_plugin_cannot_take_a_builtin_name(registry):
    class Clash:
        @hookimpl
        def register_generators(self, register):
            register(GeneratorSpec(name="SiT-XL/1", description="impostor", factory=build_micro_flow))

    registry.register_plugin("clash", Clash())
    assert registry.plugin_of("generator", "SiT-XL/1") == "sendvae.generators"
    assert any("'SiT-XL/1' from plugin 'clash' ignored" in p for p in registry.problems)
