"""The linear probe of `sendvae probe`: how linearly separable image attributes are in a latent.

Send-VAE ranks VAEs by training one linear layer on flattened posterior means (D = C*H*W, e.g.
32*16*16 = 8,192) to predict binary attributes, and reporting F1 at threshold 0.5. The numbers
are only comparable between VAEs if the protocol is fixed, so it is, and it is deterministic
(same inputs + seed -> identical figures on the same machine):

* Standardisation with TRAIN statistics per feature: latents of different VAEs have very
  different scales and offsets, and AdamW with one learning rate only behaves the same on all
  of them once every feature has mean 0 and std 1. Mean and (population, ddof=0) std are
  accumulated in float64 over slabs of train rows (Chan's pairwise merge of per-slab moments, so
  large offsets do not cancel); a std below 1e-6 counts as 1, so a constant feature becomes 0
  instead of dividing by ~0. Rows are standardised on the device in float32 at batch time:
  x = (x.float() - mean) * inv_std (the table itself stays float16).
* Model: one `torch.nn.Linear(D, A)`, initialised like torch's default (uniform in
  +-1/sqrt(D)) but from a `torch.Generator` seeded by `seed`, so the caller's global RNG is
  neither read nor advanced. Loss: `BCEWithLogitsLoss` (mean over rows and attributes).
  Optimiser: AdamW (lr 1e-3, weight decay 1e-4 on weight and bias, default betas; torch's
  fused implementation on CPU and CUDA).
* Mini-batches (256) in a shuffled order drawn per epoch from numpy
  `default_rng([seed, epoch])` (epochs count from 1): the order of epoch e does not depend on
  how many batches earlier epochs had or on any other RNG use.
* Early stopping on the VALIDATION split: after each epoch the validation BCE (mean) is
  computed; the weights of the epoch with the lowest one are kept; training stops after
  `patience` epochs without a strictly lower loss, or after `epochs`.
* The kept weights are evaluated on the TEST split (and, for reference, validation):
  prediction = logit > 0, i.e. sigmoid > 0.5; metrics from `attribute_metrics`.

Memory stays bounded for big feature tables (e.g. 200,000 x 8,192 float16 = 3.3 GB in an HDF5
file with one-row chunks). The features are any 2-D array-like whose row slices `x[a:b]` give
numpy arrays (numpy, `h5py.Dataset`); they are only ever read in contiguous row ranges
("slabs": at most 8,192 rows, 256 MiB and a quarter of `memory_gb`, but at least one batch),
because contiguous reads are what HDF5 does fast. A first pass over every slab checks that all
rows are finite and accumulates the train statistics. Then:

* in memory, when the table (float16, or float32 for wider inputs) fits in `memory_gb`
  (10^9 bytes): the first pass also copies it into one numpy array (a C-contiguous numpy input
  of that dtype is used as it is, never written to), and each epoch shuffles the train rows
  globally; on CUDA the table goes to the GPU too when it takes at most half of the
  free GPU memory, otherwise each batch is copied there;
* streamed otherwise: each epoch reads the slabs that hold train rows again, in a shuffled slab
  order, and shuffles the rows within each slab (a blockwise shuffle: a batch only mixes rows
  of slabs that follow each other in that order; rows left over at a slab's end start the next
  slab's first batch, so every batch but the last is full). The next slab is read in a
  background thread while the current one trains. Slabs only cover the rows of the split being read, so contiguous official splits
  (CelebA, shapes) cost one read of the train part per epoch plus one of the validation part.

The two paths see the rows in different orders, so their figures differ slightly; each is
deterministic. Validation and test rows are evaluated in row order, in chunks, without grad.

Progress: `progress(event, **fields)` is called with
  "read"      done, total          rows of the first pass (load / statistics)
  "epoch"     epoch, batches        an epoch starts
  "batch"     epoch, done, total    after each training step
  "epoch_end" epoch, train_loss, val_loss, best_epoch, improved
  "test"      rows                  the kept weights are being evaluated
so the CLI can draw bars without this module knowing about rich.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sendvae_cli.data.source import SPLITS, TEST, TRAIN, VAL
from sendvae_cli.eval.attribute_metrics import attribute_metrics
from sendvae_cli.seeds import probe_epoch_rng
from sendvae_cli.train.optim import adamw

Progress = Callable[..., None]

SLAB_ROWS = 8192
SLAB_BYTES = 256 * 2**20
EVAL_BYTES = 64 * 2**20  # float32 rows standardised at once during evaluation
STATS_BYTES = 32 * 2**20  # float64 rows converted at once for the statistics
READ_BYTES = 4 * 2**20  # one read call of a streamed slab: see _read_range
STD_FLOOR = 1e-6
GPU_TABLE_SHARE = 0.5  # the in-memory table goes to the GPU if it takes at most this share of free memory


@dataclass
class ProbeSettings:
    epochs: int = 200
    patience: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"  # a torch device string
    memory_gb: float = 4.0  # feature tables up to this size (float16) are loaded into memory

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        for name in ("epochs", "patience", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must not be negative, got {self.weight_decay}")
        if self.seed < 0:
            raise ValueError(f"seed must not be negative, got {self.seed}")
        if self.memory_gb < 0:
            raise ValueError(f"memory_gb must not be negative, got {self.memory_gb}")


@dataclass
class ProbeResult:
    metrics: dict  # attribute_metrics on the test split
    val_metrics: dict  # the same on the validation split
    best_epoch: int
    epochs_run: int
    history: list[dict]  # per epoch: {"epoch", "train_loss", "val_loss"}
    # {"load", "stats", "train", "eval"}: the first pass's reads, its checks and statistics, the
    # training steps, the validation and test passes; plus "stream_read", the time the streaming
    # path spent reading slabs afterwards (in a background thread, overlapping train and eval).
    seconds: dict
    rows: dict  # {"train": n, "val": n, "test": n}
    in_memory: bool
    slab_rows: int = 0  # rows per contiguous read
    table_on_device: bool = False  # the in-memory table was moved to the (CUDA) device
    # Arrays for callers and tests, left out of to_dict: the test rows (table indices, in order),
    # their logits and 0/1 predictions, and the kept probe with the standardisation it expects.
    test_rows: np.ndarray | None = field(default=None, repr=False)
    test_scores: np.ndarray | None = field(default=None, repr=False)
    test_predictions: np.ndarray | None = field(default=None, repr=False)
    weight: np.ndarray | None = field(default=None, repr=False)  # (A, D) on standardised features
    bias: np.ndarray | None = field(default=None, repr=False)  # (A,)
    feature_mean: np.ndarray | None = field(default=None, repr=False)  # (D,) float64
    feature_std: np.ndarray | None = field(default=None, repr=False)  # (D,) float64, floored to 1

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "val_metrics": self.val_metrics, "best_epoch": self.best_epoch,
                "epochs_run": self.epochs_run, "history": self.history, "seconds": self.seconds,
                "rows": self.rows, "in_memory": self.in_memory, "slab_rows": self.slab_rows,
                "table_on_device": self.table_on_device}


# -- inputs -----------------------------------------------------------------------------------------
def _check_inputs(features: Any, attributes: Any, splits: Any) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    shape = getattr(features, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"features must be a 2-D (rows, features) array, got shape {shape}")
    if np.dtype(features.dtype).kind not in "fiu":
        raise ValueError(f"features must be numbers, got dtype {features.dtype}")
    attributes, splits = np.asarray(attributes), np.asarray(splits)
    if attributes.ndim != 2:
        raise ValueError(f"attributes must be a 2-D (rows, attributes) array, got shape {attributes.shape}")
    if splits.ndim != 1:
        raise ValueError(f"splits must be a 1-D array, got shape {splits.shape}")
    if not (shape[0] == len(attributes) == len(splits)):
        raise ValueError(f"features, attributes and splits must have the same number of rows, "
                         f"got {shape[0]}, {len(attributes)} and {len(splits)}")
    if shape[1] == 0 or attributes.shape[1] == 0:
        raise ValueError(f"need at least one feature and one attribute, got {shape[1]} and {attributes.shape[1]}")
    bad = np.argwhere((attributes != 0) & (attributes != 1))
    if len(bad):
        r, c = bad[0]
        raise ValueError(f"attributes must be 0 or 1: row {r}, attribute {c} holds {attributes[r, c]}")
    bad = np.flatnonzero(~np.isin(splits, (TRAIN, VAL, TEST)))
    if len(bad):
        raise ValueError(f"splits must be {TRAIN} (train), {VAL} (val) or {TEST} (test): "
                         f"row {bad[0]} holds {splits[bad[0]]}")
    rows = {name: np.flatnonzero(splits == code) for code, name in enumerate(SPLITS)}
    for name, chosen in rows.items():
        if len(chosen) == 0:
            raise ValueError(f"the {name} split has no rows: the probe needs train, val and test rows")
    return attributes.astype(np.float32), splits, rows


def _slab_rows(dim: int, itemsize: int, memory_gb: float, batch_size: int) -> int:
    """Rows per contiguous read: <= SLAB_ROWS, <= SLAB_BYTES, and <= a quarter of the memory budget
    (a slab being trained on, the next one being read, and their float32 batches); but at least
    one batch, so that a tiny budget (memory_gb=0 to force streaming) still reads whole batches."""
    budget = min(SLAB_BYTES, memory_gb * 1e9 / 4)
    return int(max(batch_size, min(SLAB_ROWS, budget // (dim * itemsize))))


def _groups(rows: np.ndarray, span: int) -> list[np.ndarray]:
    """Sorted `rows` cut where they cross a multiple of `span`: each part lies within `span`
    consecutive rows, so one contiguous read [part[0], part[-1] + 1) fetches it."""
    if len(rows) == 0:
        return []
    return np.split(rows, np.flatnonzero(np.diff(rows // span)) + 1)


class _Moments:
    """Per-feature count, mean and sum of squared deviations, merged slab by slab in float64
    (Chan et al.: exact for any offset, unlike sum and sum of squares)."""

    def __init__(self, dim: int):
        self.count, self.mean, self.m2 = 0, np.zeros(dim), np.zeros(dim)

    def update(self, x: np.ndarray) -> bool:
        """Add rows `x`; False (and the moments no longer meaningful) if any value is not finite:
        a NaN or infinity always makes its column's sum non-finite, so no separate check is needed."""
        n = len(x)
        if n == 0:
            return True
        x = x.astype(np.float64)
        mean = x.mean(axis=0)
        if not np.isfinite(mean).all():
            return False
        x -= mean  # in place: the float64 copy is ours
        m2 = np.square(x, out=x).sum(axis=0)
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * (n / total)
        self.m2 += m2 + np.square(delta) * (self.count * n / total)
        self.count = total
        return True

    def std(self) -> np.ndarray:
        std = np.sqrt(self.m2 / self.count)
        return np.where(std < STD_FLOOR, 1.0, std)


# -- where rows come from -----------------------------------------------------------------------------
def _read_range(features: Any, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as numpy, in calls of at most READ_BYTES: h5py holds the GIL for a whole
    read call, so a slab read in the background in one call would stall the training thread for
    its full duration; between small calls the GIL changes hands and both progress."""
    dim = features.shape[1]
    step = max(1, READ_BYTES // (dim * np.dtype(features.dtype).itemsize))
    if stop - start <= step:
        return np.asarray(features[start:stop])
    out = np.empty((stop - start, dim), features.dtype)
    for s in range(start, stop, step):
        e = min(stop, s + step)
        if hasattr(features, "read_direct"):
            features.read_direct(out, np.s_[s:e], np.s_[s - start : e - start])
        else:
            out[s - start : e - start] = features[s:e]
    return out


class _Rows:
    """Rows of the feature table as raw (float16 / float32) torch tensors on the device: from the
    in-memory table, or read slab by slab from the source with the next slab prefetched."""

    def __init__(self, features: Any, table: np.ndarray | None, device: torch.device, slab_rows: int,
                 batch_size: int):
        self.features, self.table, self.device = features, table, device
        self.slab_rows, self.batch_size = slab_rows, batch_size
        self.device_table: torch.Tensor | None = None
        if table is not None and device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if table.nbytes <= GPU_TABLE_SHARE * free:
                self.device_table = torch.from_numpy(table).to(device)
        self.read_seconds = 0.0

    def _read(self, group: np.ndarray) -> np.ndarray:
        start, stop = int(group[0]), int(group[-1]) + 1
        began = time.perf_counter()
        block = _read_range(self.features, start, stop)
        self.read_seconds += time.perf_counter() - began
        return block if len(group) == stop - start else block[group - start]

    def _slabs(self, groups: Sequence[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, their features) per group, the next group read in a background thread while the
        caller works on the current one (torch releases the GIL in its kernels, so they overlap)."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self._read, groups[0]) if groups else None
            for i, group in enumerate(groups):
                block = pending.result()
                pending = pool.submit(self._read, groups[i + 1]) if i + 1 < len(groups) else None
                yield group, block

    def _to_device(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def train_batches(self, rows: np.ndarray, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(table rows, raw features) of one epoch's mini-batches, in a shuffled order."""
        size = self.batch_size
        if self.table is not None:  # global shuffle
            order = rng.permutation(rows)
            if self.device_table is not None:
                index = torch.from_numpy(order).to(self.device)
            for s in range(0, len(order), size):
                chosen = order[s : s + size]
                if self.device_table is not None:
                    yield chosen, self.device_table.index_select(0, index[s : s + size])
                else:
                    yield chosen, self._to_device(self.table[chosen])
            return
        # Blockwise shuffle: slabs in a random order, rows shuffled within each slab.
        groups = _groups(rows, self.slab_rows)
        groups = [groups[i] for i in rng.permutation(len(groups))]
        carry_rows, carry = rows[:0], None  # rows left over from the previous slab(s)
        for group, block in self._slabs(groups):
            perm = rng.permutation(len(group))
            start = 0
            if carry is not None:  # they start this slab's first batch
                start = min(len(perm), size - len(carry_rows))
                chosen = perm[:start]
                carry_rows = np.concatenate([carry_rows, group[chosen]])
                carry = np.concatenate([carry, block[chosen]])
                if len(carry_rows) < size:  # a slab smaller than what the batch still needs
                    continue
                yield carry_rows, self._to_device(carry)
            stop = start + (len(perm) - start) // size * size
            for s in range(start, stop, size):
                chosen = perm[s : s + size]
                yield group[chosen], self._to_device(block[chosen])
            chosen = perm[stop:]
            carry_rows, carry = group[chosen], (block[chosen] if len(chosen) else None)
        if carry is not None:
            yield carry_rows, self._to_device(carry)

    def chunks(self, rows: np.ndarray, chunk_rows: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(table rows, raw features) in row order, at most `chunk_rows` at a time."""
        if self.table is not None:
            for group in _groups(rows, chunk_rows):
                if self.device_table is not None:
                    yield group, self.device_table[torch.from_numpy(group).to(self.device)]
                else:
                    contiguous = len(group) == group[-1] - group[0] + 1
                    x = self.table[group[0] : group[-1] + 1] if contiguous else self.table[group]
                    yield group, self._to_device(x)
            return
        for group, block in self._slabs(_groups(rows, self.slab_rows)):
            for s in range(0, len(group), chunk_rows):
                yield group[s : s + chunk_rows], self._to_device(block[s : s + chunk_rows])


# -- the probe ------------------------------------------------------------------------------------------
def _first_pass(features: Any, splits: np.ndarray, table: np.ndarray | None, storage: np.dtype, slab_rows: int,
                notify: Progress) -> tuple[_Moments, float, float]:
    """Read every row once in contiguous slabs: check it is finite, fill the in-memory table if
    there is one, and accumulate the train statistics. Returns (moments, read s, stats s)."""
    total, dim = features.shape
    moments = _Moments(dim)
    step = max(1, STATS_BYTES // (8 * dim))
    read_s = stats_s = 0.0
    for start in range(0, total, slab_rows):
        stop = min(total, start + slab_rows)
        began = time.perf_counter()
        if table is features:
            block = table[start:stop]
        elif table is not None and hasattr(features, "read_direct") and features.dtype == storage:
            features.read_direct(table, np.s_[start:stop], np.s_[start:stop])  # h5py: no intermediate copy
            block = table[start:stop]
        else:
            block = np.asarray(features[start:stop]).astype(storage, copy=False)
            if table is not None:
                table[start:stop] = block
        read_s += time.perf_counter() - began
        began = time.perf_counter()
        for s in range(0, len(block), step):
            part = block[s : s + step]
            train = splits[start + s : start + s + len(part)] == TRAIN
            # Train rows are checked through their statistics, the others directly.
            finite = moments.update(part if train.all() else part[train])
            if finite and not train.all():
                finite = bool(np.isfinite(part[~train]).all())
            if not finite:
                row = start + s + int(np.argmin(np.isfinite(part).all(axis=1)))
                raise ValueError(f"features row {row} holds a non-finite value (NaN or infinity)")
        stats_s += time.perf_counter() - began
        notify("read", done=stop, total=total)
    return moments, read_s, stats_s


def _linear_probe(dim: int, attributes: int, seed: int, device: torch.device) -> torch.nn.Linear:
    """Default torch Linear init (uniform +-1/sqrt(fan_in)), drawn from our own generator."""
    generator = torch.Generator().manual_seed(seed)
    probe = torch.nn.utils.skip_init(torch.nn.Linear, dim, attributes)
    bound = 1.0 / math.sqrt(dim)
    with torch.no_grad():
        probe.weight.uniform_(-bound, bound, generator=generator)
        probe.bias.uniform_(-bound, bound, generator=generator)
    return probe.to(device)


@dataclass
class _Fit:
    """The probe, its optimiser and what it reads: one epoch of training, or an evaluation."""

    probe: torch.nn.Linear
    optimizer: torch.optim.Optimizer
    source: _Rows
    targets: torch.Tensor  # (N, A) float32 on the device
    mean: torch.Tensor
    inv_std: torch.Tensor
    chunk_rows: int

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        # copy=True: the float32 in-memory table (or a float32 source) must never be changed in place.
        return x.to(torch.float32, copy=True).sub_(self.mean).mul_(self.inv_std)

    def train_epoch(self, train_rows: np.ndarray, rng: np.random.Generator, epoch: int, batches: int,
                    notify: Progress) -> float:
        """One pass over the train rows in `rng`'s order; the mean training BCE."""
        device = self.targets.device
        self.probe.train()
        total = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync per step
        for done, (part, x) in enumerate(self.source.train_batches(train_rows, rng), 1):
            y = self.targets[torch.from_numpy(part).to(device)]
            loss = F.binary_cross_entropy_with_logits(self.probe(self.standardise(x)), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach().double() * len(part)
            notify("batch", epoch=epoch, done=done, total=batches)
        return float(total) / len(train_rows)

    @torch.no_grad()
    def evaluate(self, chosen: np.ndarray) -> tuple[float, np.ndarray]:
        """(mean BCE, logits (n, A) float32) of the current weights on the given rows."""
        device = self.targets.device
        self.probe.eval()
        loss, logits = torch.zeros((), dtype=torch.float64, device=device), []
        for part, x in self.source.chunks(chosen, self.chunk_rows):
            out = self.probe(self.standardise(x))
            y = self.targets[torch.from_numpy(part).to(device)]
            loss += F.binary_cross_entropy_with_logits(out, y, reduction="sum").double()
            logits.append(out.cpu())
        return float(loss) / (len(chosen) * self.targets.shape[1]), torch.cat(logits).numpy()


@dataclass
class _Training:
    """What the epochs leave: the history and the best epoch (lowest validation BCE) with its weights."""

    history: list[dict] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    best_val_logits: np.ndarray | None = None
    train_s: float = 0.0
    eval_s: float = 0.0


def _train(fit: _Fit, rows: dict[str, np.ndarray], settings: ProbeSettings, notify: Progress) -> _Training:
    """Epochs until `patience` of them pass without a lower validation BCE (or `epochs` run out)."""
    batches = math.ceil(len(rows["train"]) / settings.batch_size)
    run = _Training()
    for epoch in range(1, settings.epochs + 1):
        notify("epoch", epoch=epoch, batches=batches)
        began = time.perf_counter()
        rng = probe_epoch_rng(settings.seed, epoch)
        train_loss = fit.train_epoch(rows["train"], rng, epoch, batches, notify)
        run.train_s += time.perf_counter() - began

        began = time.perf_counter()
        val_loss, val_logits = fit.evaluate(rows["val"])
        run.eval_s += time.perf_counter() - began
        if not math.isfinite(val_loss):
            raise ValueError(f"the probe diverged: validation loss {val_loss} after epoch {epoch} "
                             f"(try a smaller learning rate than {settings.lr})")
        run.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        improved = val_loss < run.best_loss
        if improved:
            run.best_loss, run.best_epoch, run.best_val_logits = val_loss, epoch, val_logits
            run.best_state = {k: v.detach().clone() for k, v in fit.probe.state_dict().items()}
        notify("epoch_end", epoch=epoch, train_loss=train_loss, val_loss=val_loss, best_epoch=run.best_epoch,
               improved=improved)
        if epoch - run.best_epoch >= settings.patience:
            break
    return run


def fit_probe(features: Any, attributes: Any, splits: Any, settings: ProbeSettings,
              progress: Progress | None = None) -> ProbeResult:
    """Train the linear probe on the train rows, stop early on the val rows, evaluate on the test
    rows. `features` (N, D) is any row-sliceable 2-D array (numpy, h5py.Dataset), `attributes`
    (N, A) 0/1, `splits` (N,) TRAIN / VAL / TEST. Raises ValueError on inconsistent inputs."""
    settings.check()
    notify: Progress = progress or (lambda event, **fields: None)
    targets_np, splits, rows = _check_inputs(features, attributes, splits)
    count, dim = (int(v) for v in features.shape)
    device = torch.device(settings.device)
    # float16 caches stay float16 in memory; anything wider is kept as float32.
    storage = np.dtype(np.float16) if np.dtype(features.dtype) == np.float16 else np.dtype(np.float32)
    in_memory = count * dim * storage.itemsize <= settings.memory_gb * 1e9
    slab_rows = _slab_rows(dim, np.dtype(features.dtype).itemsize, settings.memory_gb, settings.batch_size)

    table = None
    if in_memory:  # a numpy array already in the right form is used as it is (never written to)
        ready = isinstance(features, np.ndarray) and features.dtype == storage and features.flags.c_contiguous
        table = features if ready else np.empty((count, dim), storage)
    moments, load_s, stats_s = _first_pass(features, splits, table, storage, slab_rows, notify)
    mean = torch.as_tensor(moments.mean, dtype=torch.float32, device=device)
    inv_std = torch.as_tensor(1.0 / moments.std(), dtype=torch.float32, device=device)
    source = _Rows(features, table, device, slab_rows, settings.batch_size)
    targets = torch.from_numpy(targets_np).to(device)
    probe = _linear_probe(dim, targets_np.shape[1], settings.seed, device)
    optimizer = adamw(probe.parameters(), device, lr=settings.lr, weight_decay=settings.weight_decay)
    fit = _Fit(probe, optimizer, source, targets, mean, inv_std, chunk_rows=max(1, EVAL_BYTES // (4 * dim)))
    run = _train(fit, rows, settings, notify)

    began = time.perf_counter()
    best_state, best_val_logits = run.best_state, run.best_val_logits
    assert best_state is not None and best_val_logits is not None  # epochs >= 1 and every val_loss finite
    probe.load_state_dict(best_state)
    notify("test", rows=len(rows["test"]))
    _, test_logits = fit.evaluate(rows["test"])
    truth = {name: targets_np[rows[name]] for name in ("val", "test")}
    metrics = attribute_metrics(truth["test"], test_logits > 0, test_logits)
    val_metrics = attribute_metrics(truth["val"], best_val_logits > 0, best_val_logits)
    eval_s = run.eval_s + time.perf_counter() - began
    return ProbeResult(
        metrics=metrics, val_metrics=val_metrics, best_epoch=run.best_epoch, epochs_run=len(run.history),
        history=run.history, seconds={"load": load_s, "stats": stats_s, "train": run.train_s, "eval": eval_s,
                                       "stream_read": source.read_seconds},
        rows={name: len(chosen) for name, chosen in rows.items()}, in_memory=in_memory, slab_rows=slab_rows,
        table_on_device=source.device_table is not None, test_rows=rows["test"], test_scores=test_logits,
        test_predictions=(test_logits > 0).astype(np.uint8),
        weight=best_state["weight"].cpu().numpy(), bias=best_state["bias"].cpu().numpy(),
        feature_mean=moments.mean, feature_std=moments.std())
