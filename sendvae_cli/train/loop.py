"""The training loop every trainer shares: `run(trainer, out)`.

What the loop does, in order, what one step does, and how a trainer plugs in (the `Trainer`
hooks below) is specified in docs/architecture.md, "The training loop".
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from sendvae_cli import __version__, distributed
from sendvae_cli.distributed import Dist, autocast_for
from sendvae_cli.errors import UserError
from sendvae_cli.locks import hold_output_lock
from sendvae_cli.outcome import set_resume
from sendvae_cli.progress import info, progress_bar
from sendvae_cli.seeds import micro_batch_seed
from sendvae_cli.stopping import Interrupted, ignore_stop_signals, stop_agreed, stop_on_signals
from sendvae_cli.train.batches import StreamBatchSampler
from sendvae_cli.train.checkpoint import Checkpoints
from sendvae_cli.train.ema import EMA
from sendvae_cli.train.metrics import MetricsLog
from sendvae_cli.train.run_config import prepare_run_dir, recorded_value
from sendvae_cli.train.trackers import Tracker, open_trackers

# --------------------------------------------------------------------------------------------
#                                     Configuration
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class TrainConfig:
    """What every trainer's configuration holds; a trainer's own config adds its fields."""

    data: str
    preset: str
    seed: int = 0
    num_images: int | None = None
    steps: int | None = None
    epochs: float | None = None
    batch_size: int  # the global batch: the recipe, whatever the number of processes
    micro_batch: int  # per process and forward pass; with micro_batch_auto, the most the loop may choose
    micro_batch_auto: bool = False  # not given: the loop picks what fits the world size (not recorded)
    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.0
    precision: str = "auto"
    log_every: int
    checkpoint_every: int
    sample_every: int
    keep_checkpoints: int = 2
    tracker: list[str] = field(default_factory=list)  # tensorboard / wandb (train/trackers.py)
    workers: int = 0
    device: str = "auto"
    quiet: bool = False

    # Fields that may differ between a run and its resume without changing its result.
    RUN_ONLY: ClassVar[tuple[str, ...]] = (
        "workers", "quiet", "device", "log_every", "checkpoint_every", "sample_every", "keep_checkpoints",
        "steps", "epochs", "total_steps", "preset", "tracker")
    # Facts the loop records beside the fields (config.json) that never block a resume.
    RUN_FACTS: ClassVar[tuple[str, ...]] = ("accumulation", "world_size", "producer")
    # Fields added after runs were recorded -> the value that reproduces a run recorded without them.
    ADDED: ClassVar[dict[str, Any]] = {}
    # Fields that say how a value was reached, not what it is: config.json leaves them out.
    UNRECORDED: ClassVar[tuple[str, ...]] = ("micro_batch_auto",)

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in self.UNRECORDED}


class TrainingDiverged(UserError):
    """A loss became NaN or infinite: stop, keep the last good checkpoint."""


def total_steps(cfg: TrainConfig, num_rows: int) -> int:
    if cfg.steps:
        return int(cfg.steps)
    if cfg.epochs:
        return max(1, math.ceil(cfg.epochs * num_rows / cfg.batch_size))
    raise UserError("give --steps or --epochs")


@dataclass(frozen=True)
class BatchSplit:
    """The global batch over the processes: world x micro_batch x accumulation = batch_size."""

    batch_size: int
    world: int
    micro_batch: int
    accumulation: int
    note: str | None = None  # what was chosen for the user and why (said once, by rank 0)


def split_batch(batch_size: int, world: int, micro_batch: int, *, auto: bool,
                recorded: int | None = None) -> BatchSplit:
    """How `world` processes make up the global batch.

    A micro-batch the user gave is kept (and must fit). Otherwise `micro_batch` is the preset's
    memory choice, a ceiling: a run being resumed keeps the micro-batch it `recorded` (its random
    numbers are drawn per micro-batch, so another one would continue a different run), and a new
    run takes the largest micro-batch up to the ceiling that divides each process's share.
    """
    if batch_size % world:
        raise UserError(f"--batch-size {batch_size}: the global batch is split evenly over the processes, and "
                        f"{batch_size} is not a multiple of {world}")
    share = batch_size // world
    if not auto:
        if share % micro_batch:
            raise UserError(f"--batch-size {batch_size}: must be a multiple of --micro-batch {micro_batch} x {world} "
                            f"process(es); leave --micro-batch out to have one chosen")
        return BatchSplit(batch_size, world, micro_batch, share // micro_batch)
    if recorded is not None:
        if share % recorded:
            fits = [n for n in range(1, batch_size // recorded + 1) if (batch_size // recorded) % n == 0]
            raise UserError(f"--out: this run was started with micro-batch {recorded}, which does not divide the "
                            f"{share} images each of {world} processes takes from the global batch {batch_size}; "
                            f"resume it on {', '.join(map(str, fits[-4:]))} process(es)")
        note = (f"micro-batch {recorded} per process, the one this run was started with (x {world} process(es) x "
                f"{share // recorded} accumulated = global batch {batch_size})" if recorded != micro_batch else None)
        return BatchSplit(batch_size, world, recorded, share // recorded, note)
    chosen = max(d for d in range(1, min(micro_batch, share) + 1) if share % d == 0)
    note = None
    if chosen != micro_batch or world > 1:
        note = (f"micro-batch {chosen} per process (x {world} process(es) x {share // chosen} accumulated = global "
                f"batch {batch_size}; the preset's most is {micro_batch}; --micro-batch sets it)")
    return BatchSplit(batch_size, world, chosen, share // chosen, note)


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """Clip to `max_norm` (0 = off) and return the norm before clipping (0 when off)."""
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm) if max_norm > 0 else torch.zeros(())


# --------------------------------------------------------------------------------------------
#                                  What a trainer supplies
# --------------------------------------------------------------------------------------------


@dataclass
class Parts:
    """A trainer's models and optimizers; every one is saved in each checkpoint under its name."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    ema_of: nn.Module | None = None  # the module EMA follows (with cfg.ema > 0); saved as "ema"


@dataclass
class StepContext:
    cfg: TrainConfig
    dist: Dist
    out: Path
    accumulation: int
    total_steps: int
    step: int = 0
    micro: int = 0
    checkpoints: Checkpoints | None = None
    ema: EMA | None = None

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def last_micro(self) -> bool:
        return self.micro == self.accumulation - 1

    @property
    def global_micro(self) -> int:
        """The micro-batch's index over all processes: N processes draw what one accumulating N draws."""
        return self.micro * self.dist.world + self.dist.rank

    def autocast(self):
        return autocast_for(self.device, self.cfg.precision)

    def sync(self, module: nn.Module):
        """Inside: gradients of a DDP module are all-reduced only on the last micro-batch."""
        if self.last_micro or self.dist.world == 1 or not hasattr(module, "no_sync"):
            return nullcontext()
        return module.no_sync()


class Trainer(ABC):
    """Subclass and fill in; see the module docstring."""

    name = "train"
    config: TrainConfig
    collate = None  # the DataLoader's collate_fn; a module-level function, so that it travels to workers

    @abstractmethod
    def rows(self) -> torch.utils.data.Dataset:
        ...

    def batch_sampler(self, num_rows: int, micro_batch: int, world: int, rank: int, accumulation: int, *,
                      seed: int, start_step: int) -> torch.utils.data.Sampler:
        """This rank's micro-batches of row indices, from optimizer step `start_step` on."""
        return StreamBatchSampler(num_rows, micro_batch, world, rank, accumulation, seed=seed, start_step=start_step)

    def data_facts(self) -> dict[str, Any]:
        return {}

    @abstractmethod
    def build(self, ctx: StepContext) -> Parts:
        ...

    def prepare(self, ctx: StepContext) -> None:
        """After resuming: DDP-wrap what needs it (when ctx.dist.world > 1), build what uses it."""

    def seed_micro_batch(self, ctx: StepContext) -> None:
        """Seed the random numbers of micro-batch ctx.micro of ctx.step, before `micro_step`: by
        default torch's global generator (`seeds.micro_batch_seed`). A trainer that draws from its
        own generator seeds that instead, so each micro-batch is seeded once."""
        torch.manual_seed(micro_batch_seed(ctx.cfg.seed, ctx.step, ctx.global_micro))

    @abstractmethod
    def micro_step(self, batch, ctx: StepContext) -> Mapping[str, torch.Tensor]:
        ...

    @abstractmethod
    def optimizer_step(self, ctx: StepContext) -> Mapping[str, float]:
        ...

    def describe(self, row: Mapping[str, float]) -> str:
        return self.name

    def sample(self, step: int, ctx: StepContext) -> Mapping[str, Any] | None:
        """A preview (rank 0, every sample_every steps and at the end); returns {tag: (H, W, 3) uint8
        image} of the grids it saved, which the trackers receive."""

    def evaluates(self, step: int, total: int) -> bool:
        """Whether an evaluation is due once `step` steps are done."""
        return False

    def evaluate(self, step: int, ctx: StepContext) -> Mapping[str, Any] | None:
        """Evaluate the model at `step` (every rank); rank 0 returns the metrics row to log."""
        return None

    def evaluated(self, row: Mapping[str, Any]) -> bool:
        """Whether a metrics.jsonl row is one that `evaluate` returned."""
        return False

    def already_complete(self, step: int) -> str | None:
        """A message when the run's output already exists (then nothing is done), else None."""
        return None

    def write_output(self, step: int, ctx: StepContext) -> None:
        """Write the run's output (rank 0, after the last checkpoint)."""

    def after_checkpoint(self, step: int, ctx: StepContext) -> None:
        """After each checkpoint is written (rank 0)."""

    def summary(self, step: int) -> dict[str, Any]:
        return {"steps": step}


# --------------------------------------------------------------------------------------------
#                                       The loop
# --------------------------------------------------------------------------------------------


def resume_note(checkpoints: Checkpoints) -> str:
    """Where a rerun of the command picks up: the checkpoint `latest` names, read when it is said."""
    latest = checkpoints.latest()
    if latest is None:
        return "rerun the same command to start again (no step was saved yet)"
    return f"rerun the same command to resume from step {int(latest.name.rsplit('-', 1)[-1])}"


def _mean_over_ranks(values: dict[str, float], dist: Dist) -> dict[str, float]:
    if dist.world == 1 or not values:
        return values
    keys = list(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=dist.device)
    torch.distributed.all_reduce(tensor)
    return {k: float(v) / dist.world for k, v in zip(keys, tensor.tolist())}


def stop_loader_workers(batches) -> None:
    """Stop a DataLoader iterator's worker processes now. The workers ignore SIGTERM (the main
    process decides when to stop), so multiprocessing's exit handler, which terminates and then
    joins them, would wait forever when an error's traceback keeps the iterator alive."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's own clean-up of its iterator
    if shutdown is not None:
        shutdown()


def run(trainer: Trainer, out: Path) -> dict[str, Any]:
    """Train (or resume, or find finished) the run in `out`; see docs/architecture.md, "The training loop".

    Rank 0 holds the run folder's lock (`sendvae_cli.locks.hold_output_lock`) from the start, so a
    second run on the same folder stops at once, naming this one; temporaries a killed run left
    (half-written checkpoints, exports, config files) are removed before anything is written.
    """
    cfg = trainer.config
    out = Path(out)
    dist = distributed.init(cfg.device)
    with ExitStack() as held:
        return _run(trainer, out, dist, lock=lambda: held.enter_context(hold_output_lock(out)))


def _batch_geometry(cfg: TrainConfig, out: Path, dist: Dist, show: bool) -> int:
    """Set cfg.micro_batch to what runs (config.json records it); returns the accumulation."""
    split = split_batch(cfg.batch_size, dist.world, cfg.micro_batch, auto=cfg.micro_batch_auto,
                        recorded=recorded_value(out, "micro_batch") if cfg.micro_batch_auto else None)
    if split.note:
        info(split.note, show)
    cfg.micro_batch = split.micro_batch
    return split.accumulation


def _prepare_folder(out: Path, record: dict[str, Any], cfg: TrainConfig, dist: Dist, lock) -> bool:
    """Lock, create or check the run folder; True when it already held a run (a resume)."""
    # Rank 0 locks and creates or checks the folder first; the others check it only once
    # config.json is there (checking while rank 0 writes it would see a half-made folder).
    ignore = cfg.RUN_ONLY + cfg.RUN_FACTS

    def prepare() -> bool:
        lock()
        return prepare_run_dir(out, record, ignore=ignore, is_main=True, added=cfg.ADDED)

    resumed = bool(distributed.main_first(dist, prepare))
    if not dist.is_main:
        prepare_run_dir(out, record, ignore=ignore, is_main=False, added=cfg.ADDED)
    return resumed


def _build(trainer: Trainer, ctx: StepContext) -> tuple[Parts, EMA | None, dict[str, torch.nn.Module]]:
    """The trainer's parts, EMA, and every module a checkpoint holds (by name)."""
    cfg = ctx.cfg
    # Seeded so that a resumed run builds the same random parts before loading.
    torch.manual_seed(cfg.seed)
    parts = trainer.build(ctx)
    ema = EMA(parts.ema_of, cfg.ema) if cfg.ema and parts.ema_of is not None else None
    modules = dict(parts.modules)
    if ema is not None:
        modules["ema"] = ema.shadow
    ctx.ema = ema
    return parts, ema, modules


def _resume(checkpoints: Checkpoints, modules: dict[str, torch.nn.Module], parts: Parts) -> tuple[int, Path | None]:
    """Load the latest checkpoint, if any, into the modules and optimizers: (its step, its path)."""
    latest = checkpoints.latest()
    if latest is None:
        return 0, None
    state = checkpoints.load(latest, modules)
    for name, optimizer in parts.optimizers.items():
        optimizer.load_state_dict(state[name])
    return int(state["step"]), latest


def _batches(trainer: Trainer, rows, cfg: TrainConfig, dist: Dist, accumulation: int, step: int):
    """The DataLoader's iterator over the micro-batches, from `step` on."""
    sampler = trainer.batch_sampler(len(rows), cfg.micro_batch, dist.world, dist.rank, accumulation,
                                    seed=cfg.seed, start_step=step)
    # The loader gets its own generator: creating its iterator must not draw from the global RNG,
    # whose state the checkpoint restores (else a resumed run would drift from an uninterrupted one).
    loader = torch.utils.data.DataLoader(rows, batch_sampler=sampler, num_workers=cfg.workers,
                                         collate_fn=trainer.collate, pin_memory=dist.device.type == "cuda",
                                         worker_init_fn=ignore_stop_signals,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    return iter(loader)


def _saver(trainer: Trainer, ctx: StepContext, checkpoints: Checkpoints, modules: dict[str, torch.nn.Module],
           parts: Parts, show: bool):
    """save(step): a checkpoint (rank 0) and the trainer's after_checkpoint, then every rank waits."""
    dist, cfg = ctx.dist, ctx.cfg
    sized = []  # the first checkpoint this process saves says how large one is and what takes the space

    def save(at_step: int) -> None:
        if dist.is_main:
            saved = checkpoints.save(at_step, modules, {name: o.state_dict() for name, o in parts.optimizers.items()})
            if not sized:
                from sendvae_cli.train.checkpoint_size import describe_checkpoint

                sized.append(saved)
                info(describe_checkpoint(saved, cfg.keep_checkpoints), show)
            trainer.after_checkpoint(at_step, ctx)
        dist.barrier()

    return save


def _run(trainer: Trainer, out: Path, dist: Dist, lock) -> dict[str, Any]:
    cfg = trainer.config
    show = dist.is_main and not cfg.quiet
    accumulation = _batch_geometry(cfg, out, dist, show)
    ctx = StepContext(cfg=cfg, dist=dist, out=out, accumulation=accumulation, total_steps=0)

    rows = trainer.rows()
    steps = total_steps(cfg, len(rows))
    ctx.total_steps = steps
    record = dict(cfg.record(), total_steps=steps, accumulation=accumulation, world_size=dist.world,
                  **trainer.data_facts(), producer=f"sendvae {__version__}")
    resumed = _prepare_folder(out, record, cfg, dist, lock)
    parts, ema, modules = _build(trainer, ctx)

    checkpoints = Checkpoints(out / "checkpoints", keep=cfg.keep_checkpoints)
    ctx.checkpoints = checkpoints
    if dist.is_main:
        checkpoints.remove_unfinished()
    step, latest = _resume(checkpoints, modules, parts)
    ctx.step = step
    set_resume(lambda: resume_note(checkpoints))

    if step >= steps:
        done = trainer.already_complete(step)
        if done is not None:
            info(done, show)
            return trainer.summary(step)
    if latest is not None:
        info(f"{out}: continuing at step {step} of {steps} (from {latest.name})", show)
    elif resumed:
        info(f"{out} has no checkpoint yet: starting from step 0", show)

    trainer.prepare(ctx)
    metrics = MetricsLog(out / "metrics.jsonl", resume_step=step, enabled=dist.is_main)
    batches = _batches(trainer, rows, cfg, dist, accumulation, step)
    save = _saver(trainer, ctx, checkpoints, modules, parts, show)
    tracker = open_trackers(cfg.tracker, out, record) if dist.is_main else Tracker()
    try:
        step = _steps(trainer, ctx, cfg, dist, batches, bar_start=step, steps=steps, save=save, metrics=metrics,
                      tracker=tracker, checkpoints=checkpoints, ema=ema, parts=parts, show=show)
    finally:
        tracker.close()
        stop_loader_workers(batches)

    if dist.is_main:
        trainer.write_output(step, ctx)
    dist.barrier()
    return trainer.summary(step)


def _evaluate(trainer: Trainer, ctx: StepContext, step: int, metrics: MetricsLog, tracker: Tracker) -> None:
    """One evaluation; its row is written only once it is complete (a kill leaves no half of it)."""
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # training's random numbers stay as they were
        row = trainer.evaluate(step, ctx)
    if ctx.dist.is_main and row:
        metrics.write(step, row)
        tracker.log_scalars(step, row)


def _evaluation_missing(trainer: Trainer, step: int, steps: int, metrics: MetricsLog, dist: Dist) -> bool:
    """At a resume: an evaluation is due at `step` and metrics.jsonl has no row of it (rank 0 decides)."""
    due = step > 0 and trainer.evaluates(step, steps)
    missing = due and not any(r.get("step") == step and trainer.evaluated(r) for r in metrics.rows)
    return bool(distributed.share(dist, missing))


def _train_step(trainer: Trainer, ctx: StepContext, batches, step: int, checkpoints: Checkpoints,
                ema: EMA | None, parts: Parts) -> dict[str, float]:
    """One optimizer step over `accumulation` micro-batches; the step's mean loss terms and metrics."""
    dist, accumulation = ctx.dist, ctx.accumulation
    sums: dict[str, float] = {}
    for micro in range(accumulation):
        ctx.micro = micro
        batch = next(batches)
        trainer.seed_micro_batch(ctx)
        for key, value in trainer.micro_step(batch, ctx).items():
            sums[key] = sums.get(key, 0.0) + float(value) / accumulation

    # NaN guard: stop before the bad step touches the weights; the last checkpoint stays good.
    finite = torch.tensor([1.0 if all(math.isfinite(v) for v in sums.values()) else 0.0], device=dist.device)
    if dist.world > 1:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    if finite.item() < 1:
        bad = ", ".join(f"{k}={v:.4g}" for k, v in sums.items())
        raise TrainingDiverged(f"loss is not finite at step {step} ({bad}); stopped. The last good checkpoint "
                               f"is {checkpoints.latest() or 'none'}; lower --lr or check the data")
    sums.update(trainer.optimizer_step(ctx))
    if ema is not None:
        ema.update(parts.ema_of, step)
    return sums


def _steps(trainer: Trainer, ctx: StepContext, cfg: TrainConfig, dist: Dist, batches, *, bar_start: int, steps: int,
           save, metrics: MetricsLog, tracker: Tracker, checkpoints: Checkpoints, ema: EMA | None, parts: Parts,
           show: bool) -> int:
    """The steps from `bar_start` to `steps`; on SIGTERM / SIGINT the step in hand is finished,
    saved, and `Interrupted` says where the run stopped."""
    step = last_saved = bar_start
    window: dict[str, float] = {}
    window_n, window_t0 = 0, time.perf_counter()
    if _evaluation_missing(trainer, step, steps, metrics, dist):
        _evaluate(trainer, ctx, step, metrics, tracker)
    with stop_on_signals() as stop, progress_bar(trainer.name, total=steps, completed=step, unit="step",
                                                 show=show) as bar:
        while step < steps:
            ctx.step = step
            sums = _train_step(trainer, ctx, batches, step, checkpoints, ema, parts)
            step += 1
            ctx.step = step
            bar.advance(1)

            for key, value in sums.items():
                window[key] = window.get(key, 0.0) + value
            window_n += 1
            if step % cfg.log_every == 0 or step == steps:
                elapsed = time.perf_counter() - window_t0
                row = _mean_over_ranks({k: v / window_n for k, v in window.items()}, dist)
                row["images_per_s"] = window_n * cfg.batch_size / max(elapsed, 1e-9)
                metrics.write(step, row)
                if dist.is_main:
                    tracker.log_scalars(step, row)
                bar.describe(trainer.describe(row))
                window, window_n, window_t0 = {}, 0, time.perf_counter()
            if trainer.evaluates(step, steps):
                started = time.perf_counter()
                _evaluate(trainer, ctx, step, metrics, tracker)
                window_t0 += time.perf_counter() - started  # images_per_s counts training only
            if dist.is_main and (step % cfg.sample_every == 0 or step == steps):
                for tag, image in (trainer.sample(step, ctx) or {}).items():
                    tracker.log_image(tag, image, step, caption=f"step {step}")
            if step % cfg.checkpoint_every == 0 or step == steps:
                save(step)
                last_saved = step
            if step < steps and stop_agreed(stop, dist):
                if last_saved != step:
                    save(step)
                raise Interrupted(f"{trainer.name}: {stop.name} received; stopped at step {step} of {steps}, "
                                  f"saved as {checkpoints.folder / checkpoints.name(step)}. Rerun the same command "
                                  f"to continue", stop.signum)
    if last_saved != step:
        save(step)
    return step
