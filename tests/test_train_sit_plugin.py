"""A third-party generator (the plugin of test_generator_plugin.py, written against
`generators/base.py` only) trains with `train-sit` and samples from its export, through the
registry it was registered in; what does not fit it is refused in one line."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import invoke, one_line_error, run_cli
from test_generator_plugin import MicroFlow, MyGenerators
from sendvae_cli import DatasetSpec, hookimpl
from sendvae_cli.errors import UserError
from sendvae_cli.registry import Registry


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    out = tmp_path_factory.mktemp("plugin") / "latents.h5"
    run_cli("cache-latents", "shapes", "--vae", "tiny", "--random-weights", "--num-images", "32", "--resolution", "64",
            "--workers", "0", "--quiet", "--out", out)
    return out


def plugin_registry():
    registry = Registry(load_outside=False)
    registry.register_plugin("my-generators", MyGenerators(), version="0.1")
    return registry


def tiny_config(latents, name, **flags):
    from sendvae_cli.train.sit_config import SiTTrainConfig

    explicit = {"model": name, "batch_size": 8, "steps": 6, "log_every": 2, "checkpoint_every": 3,
                "sample_every": 3, "preview_count": 4, "preview_steps": 3, **flags}
    return SiTTrainConfig.from_flags("tiny", explicit, data=str(latents), images="shapes", random_weights=True,
                                     device="cpu", quiet=True, workers=0)


@pytest.mark.parametrize("name, proj_weight", [("MicroFlow", None), ("ConvFlow", 0.0), ("MySiT-micro/1", None)])
def test_plugin_generator_trains_and_samples(latents, tmp_path, name, proj_weight):
    from sendvae_cli.flow.samplers import ode_sample
    from sendvae_cli.generators.export import load_generator_export
    from sendvae_cli.train.sit_trainer import train_sit

    registry = plugin_registry()
    out = tmp_path / "run"
    train_sit(tiny_config(latents, name, proj_weight=proj_weight), registry, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6] and all(("repa" in r) == (proj_weight is None) for r in rows)
    assert (out / "samples" / "step-000006.png").exists()
    recorded = json.loads((out / "config.json").read_text())
    assert ("attention_backend" in recorded) == (name == "MySiT-micro/1")  # only a model with the choice

    loaded = load_generator_export(out, build=lambda generator, arch: registry.generator(generator).build(**arch))
    assert loaded.generator == name and loaded.num_classes == 5 and loaded.model.null_class == 5
    if name == "MySiT-micro/1":  # the tiny preset leaves what the spec declares alone
        assert (loaded.arch["projector_width"], loaded.arch["encoder_depth"]) == (64, 1)
    noise = torch.randn(2, 8, 4, 4)
    z = ode_sample(loaded.model, noise, torch.tensor([0, 3]), steps=3, cfg_scale=2.0, null_class=5)
    assert z.shape == (2, 8, 4, 4) and torch.isfinite(z).all()


@pytest.mark.parametrize("name, flags, fragments", [
    # A generator without projections while REPA is on.
    ("ConvFlow", {}, ["--model ConvFlow: offers no REPA projections", "--proj-weight 0"]),
    # Options the generator does not declare.
    ("MicroFlow", {"qk_norm": True}, ["--qk-norm: does not apply to --model MicroFlow", "width"]),
    ("MicroFlow", {"attention": "sdpa", "proj_weight": 0.0}, ["--attention sdpa", "no choice of attention"]),
    # A build that fails (patch 3 on 4x4 latents): the trainer's own one-line error, no TypeError.
    ("MySiT-micro/1", {"encoder_depth": 5}, ["--model MySiT-micro/1", "encoder_depth 5 must lie in 1..2"]),
])
def test_what_does_not_fit_a_generator_is_one_line(latents, tmp_path, name, flags, fragments):
    from sendvae_cli.train.sit_trainer import train_sit

    with pytest.raises(UserError) as caught:
        train_sit(tiny_config(latents, name, **flags), plugin_registry(), tmp_path / "run")
    message = str(caught.value)
    assert "\n" not in message and "not subscriptable" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert not (tmp_path / "run" / "config.json").exists()  # refused before the run folder is made


def test_sampling_a_run_of_a_missing_plugin_names_it(latents, tmp_path):
    from sendvae_cli.train.sit_trainer import train_sit

    out = tmp_path / "run"
    train_sit(tiny_config(latents, "MicroFlow", steps=2, proj_weight=0.0), plugin_registry(), out)
    proc = invoke("sample", out, "-n", "2", "--steps", "2", "--out", tmp_path / "samples", "--device", "cpu")
    one_line_error(proc, "generator 'MicroFlow'", "no installed plugin registers")


class RootedShapes:
    """A dataset that lives on disk (needs_root): the shapes images, found only with --root."""

    @staticmethod
    def build(spec, *, resolution, num_images=None, seed=0, root=None, strict=False):
        from sendvae_cli.data.shapes import ShapesSource

        assert root is not None and (Path(root) / "marker").is_file()
        return ShapesSource(10_000 if num_images is None else num_images, resolution, seed)

    @hookimpl
    def register_datasets(self, register):
        register(DatasetSpec(name="rooted-shapes", description="shapes behind --root", factory=RootedShapes.build,
                             needs_root=True))


def test_images_of_a_dataset_on_disk_take_root_and_must_be_the_caches(latents, tmp_path):
    from PIL import Image

    from sendvae_cli.train.sit_trainer import train_sit

    registry = plugin_registry()
    registry.register_plugin("rooted", RootedShapes())
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "marker").write_text("")
    cfg = tiny_config(latents, "MicroFlow", steps=2)
    for images, root, fragment in (("rooted-shapes", None, "pass --root PATH"),
                                   (str(tmp_path / "folder"), None, "holds folder images")):
        if images.endswith("folder"):
            (tmp_path / "folder" / "a").mkdir(parents=True)
            for i in range(32):
                Image.new("RGB", (64, 64), (i, 0, 0)).save(tmp_path / "folder" / "a" / f"{i}.png")
        with pytest.raises(UserError, match=fragment):
            train_sit(replace(cfg, images=images, root=root), registry, tmp_path / f"run-{len(images)}")
    train_sit(replace(cfg, images="rooted-shapes", root=str(tmp_path / "data")), registry, tmp_path / "ok")
    assert (tmp_path / "ok" / "export" / "generator.json").is_file()


# --------------------------------------------------------------------------------------------
# A plugin author's mistakes: one line each, found before or at the first step
# --------------------------------------------------------------------------------------------
class ColourfulFlow(MicroFlow):
    """Records a keyword its constructor does not take: `sample` could not rebuild it."""

    def __init__(self, **keywords):
        super().__init__(**keywords)
        self.arch["colour"] = "red"


class NarrowProjections(MicroFlow):
    """Projects to one channel fewer than the teacher's width."""

    def forward_with_projections(self, x, t, y):
        v, projected = super().forward_with_projections(x, t, y)
        return v, [p[..., :-1] for p in projected]


class Mistakes:
    @hookimpl
    def register_generators(self, register):
        from sendvae_cli import GeneratorSpec

        register(GeneratorSpec(name="Typo", description="a factory string that names nothing",
                               factory="no_such_plugin_module.model:Flow"))
        register(GeneratorSpec(name="Colourful", description="an arch it cannot be rebuilt from",
                               factory=ColourfulFlow, arch={"width": 16}))
        register(GeneratorSpec(name="Narrow", description="projectors of the wrong width",
                               factory=NarrowProjections, arch={"width": 16}))


@pytest.mark.parametrize("name, fragments", [
    ("Typo", ["--model Typo: its factory 'no_such_plugin_module.model:Flow' cannot be loaded", "ModuleNotFoundError"]),
    ("Colourful", ["--model Colourful: its arch record", "does not rebuild it", "colour"]),
])
def test_a_plugins_broken_factory_or_arch_is_one_line_before_training(latents, tmp_path, name, fragments):
    from sendvae_cli.train.sit_trainer import train_sit

    registry = Registry(load_outside=False)
    registry.register_plugin("mistakes", Mistakes())
    with pytest.raises(UserError) as caught:
        train_sit(tiny_config(latents, name), registry, tmp_path / "run")
    message = str(caught.value)
    assert "\n" not in message and all(f in message for f in fragments), message
    assert not (tmp_path / "run" / "config.json").exists()


def test_projections_of_the_wrong_width_are_one_line_and_the_loader_workers_stop(latents, tmp_path):
    """The error of the first step names the model; the DataLoader's workers (which ignore
    SIGTERM) are stopped then, not left for the interpreter's exit to wait on forever."""
    import multiprocessing

    from sendvae_cli.train.sit_trainer import train_sit

    registry = Registry(load_outside=False)
    registry.register_plugin("mistakes", Mistakes())
    with pytest.raises(UserError, match=r"--model Narrow: REPA: projector output .* differ in shape") as caught:
        train_sit(replace(tiny_config(latents, "Narrow"), workers=2), registry, tmp_path / "run")
    assert caught.value.__traceback__ is not None  # the traceback (and the iterator in its frames) is alive
    assert multiprocessing.active_children() == []
