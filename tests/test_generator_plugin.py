"""A third-party plugin registers its own generators and the registry builds them.

The plugin is written against `sendvae_cli.generators.base` alone, as docs/plugins.md tells a
plugin author: `MicroFlow` (a per-pixel MLP with REPA projectors) and `ConvFlow` (a convolution,
no projections) subclass `FlowGenerator`, and their specs name the classes as factories, with no
catch-all keywords. `MySiT-micro/1` reuses the built-in SiT class with a size of its own.
"""

import pytest
import torch
from torch import nn

from sendvae_cli import GeneratorSpec, hookimpl
from sendvae_cli.generators.base import FlowGenerator
from sendvae_cli.registry import Registry


class MicroFlow(FlowGenerator):
    """A per-pixel MLP velocity model with one REPA projector per teacher."""

    offers_projections = True

    def __init__(self, *, input_size, in_channels, num_classes, width=16, projector_dims=()):
        super().__init__(input_size=input_size, in_channels=in_channels, num_classes=num_classes,
                         arch={"input_size": input_size, "in_channels": in_channels, "num_classes": num_classes,
                               "width": width, "projector_dims": list(projector_dims)})
        self.embed = nn.Linear(in_channels + 1, width)
        self.labels = nn.Embedding(num_classes + 1, width)  # row num_classes: the null class
        self.out = nn.Linear(width, in_channels)
        self.projectors = nn.ModuleList(nn.Linear(width, d) for d in projector_dims)

    def forward_with_projections(self, x, t, y):
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        time = t.reshape(B, 1, 1).expand(B, H * W, 1).to(x.dtype)
        h = torch.tanh(self.embed(torch.cat([tokens, time], -1)) + self.labels(y)[:, None])
        v = self.out(h).transpose(1, 2).reshape(B, C, H, W)
        return v, [p(h) for p in self.projectors]

    def projection_grid(self):
        return (self.input_size, self.input_size)

    def forward(self, x, t, y):
        return self.forward_with_projections(x, t, y)[0]


class ConvFlow(FlowGenerator):
    """A residual conv net without REPA projections: trains with --proj-weight 0."""

    def __init__(self, *, input_size, in_channels, num_classes, channels=8):
        super().__init__(input_size=input_size, in_channels=in_channels, num_classes=num_classes,
                         arch={"input_size": input_size, "in_channels": in_channels, "num_classes": num_classes,
                               "channels": channels})
        self.inp = nn.Conv2d(in_channels + 1, channels, 3, padding=1)
        self.labels = nn.Embedding(num_classes + 1, channels)
        self.out = nn.Conv2d(channels, in_channels, 3, padding=1)

    def forward(self, x, t, y):
        time = t.to(x.dtype).view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        h = torch.relu(self.inp(torch.cat([x, time], 1)) + self.labels(y)[:, :, None, None])
        return x + self.out(h)


class MyGenerators:
    @hookimpl
    def register_generators(self, register):
        register(GeneratorSpec(name="MicroFlow", family="MicroFlow", description="per-pixel MLP flow model",
                               factory=MicroFlow, arch={"width": 16}, aliases=("micro-flow",)))
        register(GeneratorSpec(name="ConvFlow", family="ConvFlow", description="a conv net, no REPA",
                               factory=ConvFlow, arch={"channels": 8}))
        register(GeneratorSpec(name="MySiT-micro/1", family="SiT", description="a two-block SiT",
                               factory="sendvae_cli.generators.sit:SiT",
                               arch={"depth": 2, "width": 32, "heads": 2, "patch_size": 1, "encoder_depth": 1,
                                     "projector_width": 64}))


@pytest.fixture
def registry():
    registry = Registry(load_outside=False)
    registry.register_plugin("my-generators", MyGenerators(), version="0.1")
    return registry


def test_plugin_generators_are_listed_and_built(registry):
    assert registry.plugins["my-generators"].registered["generator"] == ["MicroFlow", "ConvFlow", "MySiT-micro/1"]
    assert registry.plugin_of("generator", "micro-flow") == "my-generators"
    x, t, y = torch.randn(2, 4, 4, 4), torch.rand(2), torch.tensor([1, 5])
    for name in ("MicroFlow", "MySiT-micro/1"):
        model = registry.generator(name).build(input_size=4, in_channels=4, num_classes=5, projector_dims=[8])
        assert model.offers_projections and model.null_class == 5
        v, projected = model.forward_with_projections(x, t, y)
        assert v.shape == x.shape and projected[0].shape == (2, 16, 8)
        # What `sample` does: rebuild from the generator name and the model's own arch.
        again = registry.generator(name).build(**model.arch)
        again.load_state_dict(model.state_dict())
        assert torch.equal(again(x, t, y), model(x, t, y))
    sit = registry.generator("MySiT-micro/1").build(input_size=4, in_channels=4, num_classes=5)
    assert (sit.arch["depth"], sit.arch["width"], sit.arch["projector_width"]) == (2, 32, 64)
    conv = registry.generator("ConvFlow").build(input_size=4, in_channels=4, num_classes=5)
    assert not conv.offers_projections and conv(x, t, y).shape == x.shape and conv.attention is None
    with pytest.raises(NotImplementedError, match="no REPA"):
        conv.forward_with_projections(x, t, y)


def test_a_generator_must_implement_forward():
    class NoForward(FlowGenerator):
        pass

    with pytest.raises(TypeError, match="abstract"):
        NoForward(input_size=4, in_channels=4, num_classes=2, arch={})


def test_plugin_cannot_take_a_builtin_name(registry):
    class Clash:
        @hookimpl
        def register_generators(self, register):
            register(GeneratorSpec(name="SiT-XL/1", description="impostor", factory=MicroFlow))

    registry.register_plugin("clash", Clash())
    assert registry.plugin_of("generator", "SiT-XL/1") == "sendvae.generators"
    assert any("'SiT-XL/1' from plugin 'clash' ignored" in p for p in registry.problems)
