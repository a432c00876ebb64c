"""Every seed the toolkit derives from a user's `--seed`, in one place.

A derived seed is a function of (seed, place) only, where the place is what the random numbers
are for: an optimizer step and micro-batch, a stream position, a row and epoch, a sample. So a
result never depends on the batch size, the number of processes or workers, or where a run
resumed. Each scheme is pinned by tests/test_seeds.py: changing one changes every run made with
it, so a new use gets a new function here, never a change to an old one.

Two kinds of derivation live here, kept as they were first written (their values are recorded in
runs and fixtures):
  - integer seeds for torch generators (63 bits: `torch.Generator.manual_seed` takes a signed
    64-bit value), from arithmetic, blake2b or numpy's SeedSequence;
  - numpy generators seeded by a list `[seed, place]` (numpy's SeedSequence mixes the words).
"""

from __future__ import annotations

import hashlib

import numpy as np

_63_BITS = (1 << 63) - 1


# --------------------------------------------------------------------------------------------
#                                         Training
# --------------------------------------------------------------------------------------------


def micro_batch_seed(seed: int, step: int, micro: int) -> int:
    """torch's global generator for one training micro-batch (train/loop.py, train-vae's draws).

    `micro` is the global micro-batch index (micro * world + rank). The multipliers are Knuth's
    multiplicative-hash constant (2654435761, ~2^32 / golden ratio) and two primes, so that
    neighbouring (seed, step, micro) triples land far apart; + 1 keeps seed 0 step 0 off zero.
    """
    return (seed * 2_654_435_761 + step * 40_503 + micro * 7_919 + 1) % (2**63 - 1)


def sit_micro_batch_seed(seed: int, step: int, micro: int) -> int:
    """train-sit's own per-micro-batch generator (eps, flow time and noise, label drop).

    Hashed rather than `micro_batch_seed` so that the generator's stream shares nothing with any
    other use of the seed; `micro` is the global micro-batch index as above.
    """
    digest = hashlib.blake2b(f"sit:{seed}:{step}:{micro}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _63_BITS


def view_bit(seed: int, position: int) -> int:
    """train-sit: original (0) or flipped (1) view of stream position `position`, so the view does
    not depend on how the global batch is split over micro-batches and processes."""
    return hashlib.blake2b(f"view:{seed}:{position}".encode(), digest_size=1).digest()[0] & 1


def epoch_seed(seed: int, epoch: int) -> int:
    """The row permutation of one epoch of the batch stream (train/batches.py); 1000003 is a prime
    above any epoch count, so (seed, epoch) pairs do not collide."""
    return seed * 1_000_003 + epoch


def preview_seed(seed: int) -> int:
    """train-sit's fixed preview noise: offset so that it is not the model's initialisation stream."""
    return seed + 12_345


def row_seed(seed: int, epoch: int, index: int) -> tuple[int, int]:
    """(noise seed, view bit) of latent-cache row `index` in `epoch` (caches/latent_dataset.py): a
    hash of the three, so rows never share a stream and nothing depends on the worker, the batch
    or the order rows are read in."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=9).digest()
    return int.from_bytes(digest[:8], "little") & _63_BITS, digest[8] & 1


def probe_epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The order of the linear probe's training rows in `epoch` (epochs count from 1)."""
    return np.random.default_rng([seed, epoch])


# --------------------------------------------------------------------------------------------
#                                         Sampling
# --------------------------------------------------------------------------------------------

_NOISE_STREAM = 0x5EED  # first word of a sample's seed: the noise stream, apart from the labels
_LABEL_STREAM = 0x1AB31  # keeps the label stream apart from any other use of the seed


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample `index` of a run seeded `seed` (well mixed, no (seed, i) collisions):
    its initial and SDE noise, whatever batch or process draws it."""
    state = np.random.SeedSequence([_NOISE_STREAM, seed, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def label_rng(seed: int, purpose: int) -> np.random.Generator:
    """The class labels of a sampling run; `purpose` numbers the draws (1: the extra classes of a
    balanced run, 2: its shuffle, 3: i.i.d. labels) so that none reuses another's stream."""
    return np.random.default_rng(np.random.SeedSequence([_LABEL_STREAM, purpose, seed]))


# --------------------------------------------------------------------------------------------
#                                          Data
# --------------------------------------------------------------------------------------------

SPLIT_SALT = 1234  # second word of the split's seed, so the split differs from other draws from `seed`


def split_rng(seed: int) -> np.random.Generator:
    """The seeded 80/10/10 split of a CSV without a split column (data/csv_attributes.py)."""
    return np.random.default_rng([seed, SPLIT_SALT])


def shape_row_rng(seed: int, index: int) -> np.random.Generator:
    """Row `index` of the synthetic shapes data set: drawn alone, so a row never depends on how
    many rows were asked for or which were read before it."""
    return np.random.default_rng([seed, index])
