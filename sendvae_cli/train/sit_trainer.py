"""`sendvae train-sit`: a flow-matching generator (SiT, LightningDiT or a plugin's), with REPA, on a
latent cache.

`SiTTrainer` plugs into the shared loop (`train/loop.py`: resume, DDP, accumulation, NaN guard,
EMA, checkpoints, metrics, progress); this file holds what is particular to generator training.
The generator is seen only through `generators.base.FlowGenerator`.

One optimizer step (global batch G, kept on any number of processes by accumulation):
    for each micro-batch:
        z   = (mean + std * eps - mu) / sigma              posterior sample, normalised, on the device
        t, noise ~ the flow path; x_t = (1 - t) z + t noise; target v = noise - z
        v, h = model(x_t, t, y with 10% of labels dropped to the model's null class)
        L = |v - target|^2 + proj_weight * (-cos(h, teacher tokens))        (flow/loss.py)
    clip the gradient norm, AdamW step, EMA update.

Everything random in a micro-batch (eps, t, noise, label drop) comes from one generator seeded by
(seed, step, global micro-batch index) (`seeds.sit_micro_batch_seed`), the flip view from the
row's stream position, and the checkpoint holds the weights, EMA, optimizer and step: a killed run
rerun with the same command ends bit-identical to an uninterrupted one (on CPU), and N processes
draw exactly what one process accumulating N micro-batches draws.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sendvae_cli import __version__, distributed
from sendvae_cli.distributed import autocast_for
from sendvae_cli.errors import UserError
from sendvae_cli.flow.loss import ShapeMismatch
from sendvae_cli.generators.base import FlowGenerator
from sendvae_cli.progress import info, warn
from sendvae_cli.ranks import is_main, launch
from sendvae_cli.seeds import preview_seed
from sendvae_cli.specs import resolve_factory
from sendvae_cli.teachers.base import TOKEN_STRIDE
from sendvae_cli.train import loop
from sendvae_cli.train.checkpoint import Checkpoints, unwrap
from sendvae_cli.train.loop import Parts, StepContext, Trainer, clip_grad_norm
from sendvae_cli.train.optim import adamw
from sendvae_cli.train.sit_config import SiTTrainConfig
from sendvae_cli.train.sit_data import keep_batch

# --------------------------------------------------------------------------------------------
#                                        Set-up
# --------------------------------------------------------------------------------------------


# train-sit options that change a generator's architecture: config field -> the flag a user gives.
# Each is handed to the generator only when given, and only when its spec's `arch` declares it.
ARCH_OPTIONS = {"encoder_depth": "--encoder-depth", "qk_norm": "--qk-norm", "projector_width": "projector_width"}


def architecture_overrides(cfg: SiTTrainConfig, spec) -> dict[str, Any]:
    """The explicit architecture options of this run; one that the generator lacks is an error."""
    given = {key: getattr(cfg, key) for key in ARCH_OPTIONS if getattr(cfg, key) is not None}
    for key in given:
        if key not in spec.arch:
            declared = ", ".join(sorted(spec.arch)) or "none"
            raise UserError(f"{ARCH_OPTIONS[key]}: does not apply to --model {cfg.model} ({spec.family or 'plugin'} "
                            f"generator; its architecture options: {declared})")
    return given


def build_generator(cfg: SiTTrainConfig, registry, data, teacher_width: int | None) -> FlowGenerator:
    """The generator named by --model for this cache's latents, seeded: the data decides its input
    size, channels and classes, REPA adds one projector per teacher, explicit options the rest."""
    spec = registry.generator(cfg.model)
    channels, size, _ = data.latent_shape
    keywords: dict[str, Any] = {"input_size": size, "in_channels": channels, "num_classes": data.num_classes,
                                **architecture_overrides(cfg, spec)}
    try:
        factory = resolve_factory(spec.factory)
    except (ImportError, AttributeError, ValueError) as error:
        raise UserError(f"--model {cfg.model}: its factory {spec.factory!r} cannot be loaded "
                        f"({type(error).__name__}: {error}); check the plugin that registers it") from None
    if teacher_width:
        if isinstance(factory, type) and issubclass(factory, FlowGenerator) and not factory.offers_projections:
            raise UserError(f"--model {cfg.model}: offers no REPA projections; train it with --proj-weight 0")
        keywords["projector_dims"] = [teacher_width]
    torch.manual_seed(cfg.seed)
    try:
        model = spec.build(**keywords)
    except (ValueError, TypeError) as error:
        hint = ("; a generator without REPA projections trains with --proj-weight 0"
                if teacher_width and "projector_dims" in str(error) else "")
        raise UserError(f"--model {cfg.model}: {error}{hint}") from None
    if not isinstance(model, FlowGenerator):
        raise UserError(f"--model {cfg.model}: its factory returned a {type(model).__name__}, not a "
                        f"sendvae_cli.generators.base.FlowGenerator")
    if teacher_width and not model.offers_projections:
        raise UserError(f"--model {cfg.model}: offers no REPA projections; train it with --proj-weight 0")
    check_arch_rebuilds(model, spec, cfg.model)
    if data.conditional and cfg.cfg_prob > 0 and model.null_class is None:
        raise UserError(f"--cfg-prob {cfg.cfg_prob}: --model {cfg.model} has no null class to drop labels to; "
                        f"give --cfg-prob 0")
    if not data.conditional and model.null_class is None:
        raise UserError(f"--model {cfg.model}: has no null class, which a cache without labels trains on")
    return model


def check_arch_rebuilds(model: FlowGenerator, spec, name: str) -> None:
    """`sample` rebuilds a trained model as `spec.build(**model.arch)`: check now, on the meta
    device (no memory, no time), that the record builds the same tensors, rather than after the
    training, when a generator's `arch` misses or adds a keyword."""
    try:
        with torch.device("meta"):
            again = spec.build(**model.arch)
    except (ValueError, TypeError) as error:
        raise UserError(f"--model {name}: its arch record {dict(model.arch)} does not rebuild it ({error}); "
                        f"`arch` must hold the constructor's keywords") from None
    except (RuntimeError, NotImplementedError):  # a constructor that computes on its tensors: no meta check
        return
    theirs = {k: tuple(v.shape) for k, v in again.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if theirs != ours:
        differ = sorted(set(theirs.items()) ^ set(ours.items()))[0][0]
        raise UserError(f"--model {name}: its arch record {dict(model.arch)} rebuilds another model (tensor "
                        f"{differ!r} differs); `arch` must hold every constructor keyword that shapes it")


def load_initial_weights(model: FlowGenerator, cfg: SiTTrainConfig, registry) -> None:
    """--init: start from a trained generator's weights (a resumed run's checkpoint replaces them).
    REPA projectors the source lacks keep their fresh initialisation; every other tensor must fit."""
    from sendvae_cli.generators.export import load_generator_export
    from sendvae_cli.weights import key_mismatch

    loaded = load_generator_export(Path(cfg.init), option="--init",
                                   build=lambda name, arch: registry.generator(name).build(**arch))
    state = {k: v for k, v in loaded.model.state_dict().items() if not k.startswith("projectors.")}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("projectors.")}
    problem = key_mismatch(expected, state)
    if problem:
        raise UserError(f"--init {cfg.init}: its {loaded.generator} does not fit --model {cfg.model} on this cache: "
                        f"{problem}")
    model.load_state_dict(state, strict=False)


def check_projection_grid(model: FlowGenerator, cfg: SiTTrainConfig, data, grid, where: str) -> None:
    """REPA pulls the model's tokens towards the teacher's: both grids must be the same."""
    from sendvae_cli.train.sit_data import token_grid_message

    rows, _ = model.projection_grid()
    if tuple(grid) != tuple(model.projection_grid()):
        raise UserError(token_grid_message(data.latent_shape[1:], max(1, data.latent_shape[1] // rows), grid,
                                           cfg.model, where))


class TeacherTargets:
    """REPA's target tokens for a micro-batch: read from the batch (feature cache) or computed by
    the teacher on the batch's images (already flipped for flipped latents)."""

    def __init__(self, cfg, registry, data, device):
        self.device = device
        self.teacher = None
        if data.features is not None:
            self.name, self.width, self.grid = data.features.teacher, data.features.width, data.features.grid
            return
        spec = registry.teacher(cfg.teacher)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            teacher = spec.build(weights=cfg.teacher_weights, random_weights=cfg.random_weights)
        self.teacher = teacher.to(device).freeze()
        resolution = int(data.attrs["resolution"])
        self.name, self.width, self.grid = spec.name, teacher.width, tuple(teacher.token_grid(resolution))

    def __call__(self, batch) -> torch.Tensor:
        if self.teacher is None:
            return batch["tokens"].to(self.device, non_blocking=True).float()
        from sendvae_cli.images import to_model_range

        images = to_model_range(batch["images"].to(self.device, non_blocking=True))
        with autocast_for(self.device, "auto"):
            return self.teacher(images).float()


def open_run_vae(cfg: SiTTrainConfig, data, registry, show: bool):
    """The VAE that decodes previews: --vae when given (refused unless it wrote the cache), else the
    one the cache records. None (previews off, with a warning) when the recorded one cannot be opened."""
    from sendvae_cli.vae.open import match_vae, open_recorded_vae, open_vae

    attrs = data.attrs
    recorded = attrs.get("vae_weights_sha256")
    if cfg.vae:
        loaded = open_vae(cfg.vae, registry, weights=cfg.vae_weights)
        match = match_vae(loaded, recorded)
        if not match.same:
            raise UserError(f"--vae {cfg.vae}: LATENTS {cfg.data} was written by another VAE ({attrs.get('vae')!r}, "
                            f"weights sha256 {recorded[:12]}…, this one {match.digest[:12]}…); pass the VAE that wrote "
                            f"it, or cache again with `sendvae cache-latents`")
        return loaded, cfg.vae
    ref = attrs.get("vae")
    if not ref:
        if show:
            warn("the latent cache records no VAE: sample grids stay off (give --vae to decode them)")
        return None, None
    try:
        loaded = open_recorded_vae(ref, attrs.get("vae_weights"), registry)
    except UserError as error:
        if show:
            warn(f"cannot open the cache's VAE {ref!r} ({error}); sample grids stay off (give --vae)")
        return None, None
    if not match_vae(loaded, recorded).same:
        if show:
            warn(f"the VAE at {ref!r} is no longer the one that wrote the cache; sample grids stay off (give --vae)")
        return None, None
    return loaded, ref


# --------------------------------------------------------------------------------------------
#                                     The SiT step
# --------------------------------------------------------------------------------------------


class SiTObjective(nn.Module):
    """Model + data preparation + loss for one micro-batch, so DDP wraps one module."""

    def __init__(self, model: FlowGenerator, normalizer: nn.Module, proj_weight: float, time_schedule: str,
                 cfg_prob: float, conditional: bool, time_mean: float = 0.0):
        super().__init__()
        self.model = model
        self.normalizer = normalizer
        self.proj_weight = proj_weight
        self.time_schedule = time_schedule
        self.time_mean = time_mean
        self.cfg_prob = cfg_prob
        self.null_class = model.null_class
        self.conditional = conditional
        # (forward, forward_with_projections); a tuple, so not registered as more submodules
        self.entry_points = (model, model.forward_with_projections)

    def compile_model(self) -> None:
        """torch.compile the model's two entry points. A compiled module compiles its `forward`
        only, and with REPA the step calls `forward_with_projections`, so each is compiled itself."""
        self.entry_points = (torch.compile(self.model), torch.compile(self.model.forward_with_projections))

    def labels(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The labels the model sees: a `cfg_prob` share dropped to the null class (for CFG), or all
        null for a cache without labels. The mask is drawn on the generator's device in every step,
        so the random stream does not depend on the settings."""
        if not self.conditional:
            return torch.full_like(labels, self.null_class)
        drop = (torch.rand(len(labels), generator=generator, device=generator.device) < self.cfg_prob).to(labels.device)
        return torch.where(drop, self.null_class, labels) if self.cfg_prob > 0 else labels

    def forward(self, mean, std, labels, tokens, generator, precision: str):
        from sendvae_cli.flow.interpolant import sample_path
        from sendvae_cli.flow.loss import flow_loss

        velocity, velocity_and_projections = self.entry_points
        with torch.no_grad():
            z = self.normalizer(mean, std, generator)
            path = sample_path(z, schedule=self.time_schedule, generator=generator, mean=self.time_mean)
            y = self.labels(labels, generator)
        with autocast_for(z.device, precision):
            if self.proj_weight:
                v, projected = velocity_and_projections(path.x_t, path.t, y)
            else:
                v, projected = velocity(path.x_t, path.t, y), []
        return flow_loss(v, path.target, projected, [tokens] if self.proj_weight else [],
                         proj_weight=self.proj_weight)


# --------------------------------------------------------------------------------------------
#                                  Previews and export
# --------------------------------------------------------------------------------------------


class Preview:
    """A grid of EMA samples from fixed noise and labels, decoded by the run's VAE."""

    def __init__(self, cfg, data, vae, normalizer, device):
        count = cfg.preview_count
        g = torch.Generator().manual_seed(preview_seed(cfg.seed))
        self.noise = torch.randn((count, *data.latent_shape), generator=g).to(device)
        self.conditional = data.conditional
        self.labels = (torch.arange(count) % data.num_classes).to(device) if data.conditional else None
        self.vae, self.normalizer, self.cfg, self.data = vae, normalizer, cfg, data

    @torch.no_grad()
    def __call__(self, model: nn.Module, path: Path, step: int):
        from sendvae_cli.flow.samplers import ode_sample
        from sendvae_cli.train.preview import save_grid

        model = unwrap(model)

        labels = self.labels if self.conditional else torch.full((len(self.noise),), model.null_class,
                                                                   dtype=torch.long, device=self.noise.device)
        z = ode_sample(model, self.noise, labels, steps=self.cfg.preview_steps, cfg_scale=self.cfg.preview_cfg,
                       null_class=model.null_class).float()
        images = self.vae.decode(self.normalizer.denormalize(z))
        images = images.sample if hasattr(images, "sample") else images
        half = (len(images) + 1) // 2
        two_rows = len(images) > 1 and len(images) % 2 == 0
        rows = [images[:half], images[half:]] if two_rows else [images]
        if not self.conditional:
            captions = []
        elif two_rows:
            labels = self.labels.tolist()
            captions = [f"{a}/{b}" for a, b in zip(labels[:half], labels[half:])]
        else:
            captions = [str(a) for a in self.labels.tolist()]
        title = f"step {step}: EMA samples" + (", class top/bottom" if two_rows and captions else "")
        return save_grid(rows, path, title=title, captions=captions)


def write_export(folder: Path, model: nn.Module, cfg, data, vae_ref, step: int) -> None:
    from sendvae_cli.generators.export import save_generator_export

    vae_info = {
        "sha256": data.attrs.get("vae_weights_sha256"),
        "source": vae_ref or data.attrs.get("vae"),
        "weights": data.attrs.get("vae_weights"),
        "config": data.attrs.get("vae_config"),
        "resolution": data.attrs.get("resolution"),
        "downsample": data.attrs.get("downsample"),
    }
    save_generator_export(folder, unwrap(model), generator=cfg.model,
                          latent_stats=(data.latent_mean.tolist(), data.latent_std.tolist()), vae=vae_info,
                          extra={"producer": f"sendvae {__version__} train-sit", "steps": step,
                                 "ema": cfg.ema, "latents": cfg.data, "conditional": data.conditional,
                                 "proj_weight": cfg.proj_weight, "teacher": cfg.teacher if cfg.proj_weight else None})


# --------------------------------------------------------------------------------------------
#                              The trainer on the shared loop
# --------------------------------------------------------------------------------------------


class SiTTrainer(Trainer):
    """train-sit on `train/loop.py`: the rows, models, micro-step and optimizer step of a SiT run."""

    name = "train-sit"

    def __init__(self, config: SiTTrainConfig, registry, out: Path):
        self.config, self.registry, self.out = config, registry, Path(out)
        self.repa = config.proj_weight > 0
        self.spec = registry.generator(config.model)
        self.data = None

    # -- data --------------------------------------------------------------------------------
    def rows(self):
        from sendvae_cli.train.sit_data import open_sit_data

        cfg = self.config
        data = open_sit_data(Path(cfg.data), seed=cfg.seed, flip=cfg.flip, num_classes=cfg.num_classes,
                             latent_stats=cfg.latent_stats, images=cfg.images, features=cfg.teacher_features,
                             teacher=cfg.teacher if self.repa else None, registry=self.registry,
                             need_teacher=self.repa, root=cfg.root)
        old = _recorded_config(self.out)
        recorded = data.attrs.get("vae_weights_sha256")
        if old and old.get("vae_weights_sha256") not in (None, recorded):
            raise UserError(f"LATENTS {cfg.data}: written by another VAE (weights sha256 {str(recorded)[:12]}…) than "
                            f"the one run {self.out} started with ({str(old['vae_weights_sha256'])[:12]}…); use that "
                            f"run's cache, or another --out")
        if self.repa:
            if data.features is not None:
                self.teacher_name, self.teacher_width, grid = data.features.teacher, data.features.width, data.features.grid
                self.teacher_where = f"--teacher-features {cfg.teacher_features}"
            else:
                spec = self.registry.teacher(cfg.teacher)
                side = int(data.attrs["resolution"]) // TOKEN_STRIDE
                self.teacher_name, self.teacher_width, grid = spec.name, spec.width, (side, side)
                self.teacher_where = f"--teacher {spec.name}"
            self.teacher_grid = tuple(grid)
        self.data = data
        # The generator is built once here, on the CPU, so that a model that does not fit the data
        # (or a mistyped option) is refused before the run folder is touched; build() moves it.
        self.model = build_generator(cfg, self.registry, data, self.teacher_width if self.repa else None)
        if self.repa:
            check_projection_grid(self.model, cfg, data, self.teacher_grid, self.teacher_where)
        if cfg.init:
            load_initial_weights(self.model, cfg, self.registry)
        self.check_attention()
        # The VAE that decodes the grids; a --vae that did not write the cache is refused here,
        # before the run folder is touched.
        show = is_main() and not cfg.quiet
        self.vae, self.vae_ref = open_run_vae(cfg, data, self.registry, show)
        return data.dataset

    def batch_sampler(self, num_rows: int, micro_batch: int, world: int, rank: int, accumulation: int, *,
                      seed: int, start_step: int):
        from sendvae_cli.train.sit_data import SiTBatchSampler

        return SiTBatchSampler(num_rows, micro_batch, world, rank, accumulation, seed=seed, start_step=start_step,
                               flip=self.data.flip)

    collate = staticmethod(keep_batch)  # SiTRows returns whole micro-batches

    def check_attention(self) -> None:
        attention = self.config.attention
        backends = self.model.attention_backends
        if attention != "auto" and attention not in backends:
            offered = f"it offers {', '.join(backends)}" if backends else "it has no choice of attention kernel"
            raise UserError(f"--attention {attention}: does not apply to --model {self.config.model} ({offered})")

    def data_facts(self) -> dict[str, Any]:
        from sendvae_cli.generators.attention import resolve_backend

        facts = dict(self.data.describe(), teacher=self.teacher_name if self.repa else None)
        if self.model.attention_backends:  # a model without a kernel choice records none
            device = distributed.pick_device(self.config.device, launch().local_rank)
            facts["attention_backend"] = resolve_backend(self.config.attention, device)
        return facts

    # -- models ------------------------------------------------------------------------------
    def build(self, ctx: StepContext) -> Parts:
        from sendvae_cli.train.sit_data import LatentNormalizer

        cfg, data = self.config, self.data
        self.targets = TeacherTargets(cfg, self.registry, data, ctx.device) if self.repa else None
        if self.model.attention_backends:
            self.model.set_attention(cfg.attention)
        self.model = self.model.to(ctx.device).train()
        self.normalizer = LatentNormalizer(data.latent_mean, data.latent_std).to(ctx.device)
        self.optimizer = adamw(self.model.parameters(), ctx.device, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                               weight_decay=cfg.weight_decay)
        return Parts(modules={"model": self.model}, optimizers={"optimizer": self.optimizer}, ema_of=self.model)

    def prepare(self, ctx: StepContext) -> None:
        cfg = self.config
        objective: nn.Module = SiTObjective(self.model, self.normalizer, cfg.proj_weight, cfg.time_schedule,
                                            cfg.cfg_prob, self.data.conditional, cfg.time_mean)
        if cfg.compile:
            objective.compile_model()
        if ctx.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            objective = DDP(objective, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
            # The only buffers are fixed statistics (identical on every rank after DDP's start-up sync):
            # no broadcast before each forward. Set here, as the keyword is deprecated in torch 2.14 and
            # its successor missing from older releases.
            objective.broadcast_buffers = False
        self.objective = objective
        self.preview = (Preview(cfg, self.data, self.vae.model.to(ctx.device).eval(), self.normalizer, ctx.device)
                        if self.vae is not None and ctx.dist.is_main else None)

    # -- one step ----------------------------------------------------------------------------
    def seed_micro_batch(self, ctx: StepContext) -> None:
        """Everything random in a micro-batch comes from this one generator (a generator never
        draws from torch's global one), so the loop's default seeding is not needed."""
        from sendvae_cli.train.sit_data import micro_batch_generator

        self.generator = micro_batch_generator(self.config.seed, ctx.step, ctx.global_micro, ctx.device)

    def micro_step(self, batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        device, generator = ctx.device, self.generator
        mean = batch["mean"].to(device, non_blocking=True)
        std = batch["std"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        tokens = self.targets(batch) if self.targets is not None else None
        with ctx.sync(self.objective):
            try:
                terms = self.objective(mean, std, labels, tokens, generator, self.config.precision)
            except ShapeMismatch as error:  # a generator that breaks the contract: say which, in one line
                raise UserError(f"--model {self.config.model}: {error}") from None
            (terms.total / ctx.accumulation).backward()
        out = {"loss": terms.total.detach(), "velocity": terms.velocity.detach()}
        if terms.repa is not None:
            out["repa"] = terms.repa.detach()
        return out

    def optimizer_step(self, ctx: StepContext) -> dict[str, float]:
        grad_norm = clip_grad_norm(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": float(grad_norm)} if self.config.grad_clip > 0 else {}

    def describe(self, row) -> str:
        return f"train-sit loss {row['loss']:.4f}" + (f" repa {row['repa']:.3f}" if "repa" in row else "")

    # -- outputs -----------------------------------------------------------------------------
    def sample(self, step: int, ctx: StepContext) -> dict:
        if self.preview is None:
            return {}
        grid = self.preview(ctx.ema.shadow if ctx.ema is not None else self.model,
                            self.out / "samples" / f"step-{step:06d}.png", step)
        return {"samples": grid}  # the trackers log it

    def after_checkpoint(self, step: int, ctx: StepContext) -> None:
        if step < ctx.total_steps:  # the last one is exported by write_output()
            self.write_output(step, ctx)  # the export follows every checkpoint

    def already_complete(self, step: int) -> str | None:
        from sendvae_cli.generators.export import info_file

        if info_file(self.out / "export") is not None:
            return f"{self.out} is already complete ({step} steps, exported to {self.out / 'export'}); nothing to do"
        return None

    def write_output(self, step: int, ctx: StepContext) -> None:
        shown = ctx.ema.shadow if ctx.ema is not None else self.model
        write_export(self.out / "export", shown, self.config, self.data, self.vae_ref, step)

    def summary(self, step: int) -> dict[str, Any]:
        return {"out": str(self.out), "steps": step, "export": str(self.out / "export")}


def train_sit(cfg: SiTTrainConfig, registry, out: Path) -> dict[str, Any]:
    return loop.run(SiTTrainer(cfg, registry, out), out)


def export_run(cfg: SiTTrainConfig, registry, out: Path) -> dict[str, Any]:
    """Write OUT/export from the run's latest checkpoint (its EMA weights), without training."""
    out = Path(out)
    if not (out / "config.json").is_file():
        raise UserError(f"--export: {out} holds no train-sit run (no config.json)")
    checkpoints = Checkpoints(out / "checkpoints")
    latest = checkpoints.latest()
    if latest is None:
        raise UserError(f"--export: {out} has no checkpoint yet")
    trainer = SiTTrainer(cfg, registry, out)
    trainer.rows()
    model = trainer.model
    ema = copy.deepcopy(model)
    state = checkpoints.load(latest, {"model": model, "ema": ema})
    vae_ref = cfg.vae or trainer.data.attrs.get("vae")
    write_export(out / "export", ema if cfg.ema else model, cfg, trainer.data, vae_ref, int(state["step"]))
    info(f"exported the EMA model of step {int(state['step'])} to {out / 'export'}", not cfg.quiet)
    return {"out": str(out), "steps": int(state["step"]), "export": str(out / "export")}


def _recorded_config(out: Path) -> dict[str, Any] | None:
    path = Path(out) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None
