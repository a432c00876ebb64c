"""Latent caches: random mini-batch read throughput, and `cache-latents` encode throughput.

    python benchmarks/latent_read.py [--rows 20000] [--batch-size 256] [--workers 2] [--json out.json]
    python benchmarks/latent_read.py --skip-read --encode-vae f16d32-scratch --encode-resolution 64

Read: the same random f16d32 latents (32 x 16 x 16 posterior mean and std per image) are written
three ways, then read in shuffled mini-batches through a DataLoader with the same batch size and
worker count (files warm in the page cache: this measures the reader, not the disk):

* ours: a `cache-latents` file (float16, one chunked dataset per array) through `LatentDataset`,
  which also samples mean + std * eps, picks a flip view and normalises (more work per row);
* REPA: one `.npy` per image (`00000/img-mean-std-00000000.npy`, float32 (2C, H, W)) and
  `dataset.json`, read the way REPA's dataset reads it (np.load per row, raw moments returned);
* REPA-E: one HDF5 dataset per image in one `.h5` (same names), read by name per row (the file
  opened once per worker), raw moments returned.

Each reader is also timed in-process (workers=0: the reader's own cost, no inter-process
transport), and a dataset that reads nothing gives the ceiling the DataLoader transport of
float32 batches allows on the machine.

Encode: the bare VAE encoder on batches already decoded in memory, against the `cache-latents`
pipeline (DataLoader workers rendering images, encoder, float16 conversion, crash-safe block
writes, merge with whole-set statistics) on the same images and batch size; reported without
and with the one-time VAE set-up (building or loading it, hashing its weights).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import h5py
import numpy as np
import torch

from sendvae_cli.caches.latent_dataset import LatentDataset
from sendvae_cli.caches.latents import write_latent_cache


# -- the two peer layouts, read the way their code reads them ----------------------------------
def latent_name(index: int) -> str:
    s = f"{index:08d}"
    return f"{s[:5]}/img-mean-std-{s}.npy"


class NpyFolder(torch.utils.data.Dataset):
    """REPA: the feature folder is walked once; each row is one np.load."""

    def __init__(self, root: Path):
        self.root = root
        names = {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files}
        self.names = sorted(n for n in names if n.endswith(".npy"))
        labels = dict(json.loads((root / "dataset.json").read_text())["labels"])
        self.labels = np.array([labels[n] for n in self.names], np.int64)

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        return torch.from_numpy(np.load(self.root / self.names[i])), torch.tensor(self.labels[i])


class H5PerImage(torch.utils.data.Dataset):
    """REPA-E: one HDF5 dataset per image, looked up by name (file opened once per worker)."""

    def __init__(self, path: Path):
        self.path = path
        with h5py.File(path, "r") as f:
            names = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and n.endswith(".npy") else None)
            labels = dict(json.loads(f["dataset.json"][()].decode())["labels"])
        self.names = sorted(names)
        self.labels = np.array([labels[n] for n in self.names], np.int64)
        self.file, self.pid = None, None

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        if self.pid != os.getpid():
            self.file, self.pid = h5py.File(self.path, "r"), os.getpid()
        return torch.from_numpy(np.array(self.file[self.names[i]])), torch.tensor(self.labels[i])

    def __getstate__(self):
        return dict(self.__dict__, file=None, pid=None)


class Premade(torch.utils.data.Dataset):
    """No reading at all: the same batch every time. Its rate is what the DataLoader's worker
    transport alone allows (an upper bound for any reader at this batch size and worker count)."""

    def __init__(self, rows: int, shape: tuple[int, int, int], batch_size: int):
        self.rows, self.batch = rows, torch.randn(batch_size, *shape)

    def __len__(self):
        return self.rows

    def __getitems__(self, indices):
        return [(self.batch[j], 0) for j in range(len(indices))]


def write_all(folder: Path, rows: int, shape: tuple[int, int, int], seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    c = shape[0]
    mean = rng.standard_normal((rows, *shape), dtype=np.float32)
    std = np.exp(rng.uniform(-3, 0, (rows, *shape))).astype(np.float32)
    labels = rng.integers(0, 1000, rows)
    paths = {"ours": folder / "ours.h5", "repa": folder / "repa-npy", "repa-e": folder / "repae.h5"}
    write_latent_cache(paths["ours"], mean.astype(np.float16), std.astype(np.float16), labels,
                       mean_flip=mean[..., ::-1].astype(np.float16), std_flip=std[..., ::-1].astype(np.float16))
    meta = {"labels": [[latent_name(i), int(labels[i])] for i in range(rows)]}
    for i in range(rows):
        target = paths["repa"] / latent_name(i)
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, np.concatenate([mean[i], std[i]]))
    (paths["repa"] / "dataset.json").write_text(json.dumps(meta))
    with h5py.File(paths["repa-e"], "w") as f:
        for i in range(rows):
            f.create_dataset(latent_name(i), data=np.concatenate([mean[i], std[i]]))
        f.create_dataset("dataset.json", data=np.array(json.dumps(meta).encode(), dtype="S"))
    assert c == shape[0]
    return paths


def warm_page_cache(paths: dict[str, Path]) -> None:
    """Read every byte once, so that no reader pays for the disk and the others not."""
    files = [p for path in paths.values() for p in ([path] if path.is_file() else sorted(path.rglob("*")))]
    for file in files:
        if file.is_file():
            with open(file, "rb") as f:
                while f.read(1 << 24):
                    pass


def read_rate(dataset, batch_size: int, workers: int, batches: int, seed: int = 0) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0,
                                         prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)  # workers started, files opened
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            x, _ = next(it)
        seen += len(x)
    return seen / (time.perf_counter() - start)


# -- encode ---------------------------------------------------------------------------------------
def encode_rates(vae: str, resolution: int, images: int, batch_size: int, workers: int, flip: bool,
                 repeats: int) -> dict:
    from sendvae_cli.caches.latents import CacheLatentsOptions, cache_latents, open_for_cache
    from sendvae_cli.data.open import open_images
    from sendvae_cli.distributed import pick_device
    from sendvae_cli.registry import get_registry

    registry = get_registry()
    source = open_images("shapes", registry=registry, resolution=resolution, num_images=images)
    options = CacheLatentsOptions(vae=vae, random_weights=True, flip=flip, batch_size=batch_size, workers=workers,
                                  quiet=True)
    device = pick_device("auto")
    model = open_for_cache(options, registry).model.to(device)
    batches = [torch.stack([source[i][0] for i in range(s, min(s + batch_size, len(source)))])
               for s in range(0, len(source), batch_size)]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def bare() -> float:
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                x = b.to(device).float().div_(127.5).sub_(1.0)
                if flip:
                    x = torch.cat([x, x.flip(-1)])
                posterior = model.encode(x)
                posterior.mean.cpu(), posterior.std.cpu()
        sync()
        return images / (time.perf_counter() - start)

    def pipeline() -> tuple[float, float]:
        """(whole command, encode + merge without building the VAE) in images/s."""
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            summary = cache_latents(source, Path(tmp) / "l.h5", options, registry)
            seconds = summary["seconds"]
            return images / (time.perf_counter() - start), images / (seconds["encode"] + seconds["merge"])

    bare()  # warm-up
    bare_rates, whole_rates, pipe_rates = [], [], []
    for _ in range(repeats):  # interleaved, so a change in machine load hits both
        bare_rates.append(bare())
        whole, steady = pipeline()
        whole_rates.append(whole)
        pipe_rates.append(steady)
    return {"vae": vae, "resolution": resolution, "images": images, "batch_size": batch_size, "workers": workers,
            "flip": flip, "device": str(device), "threads": torch.get_num_threads(),
            "bare_img_s": max(bare_rates), "pipeline_img_s": max(pipe_rates), "command_img_s": max(whole_rates),
            "ratio": max(pipe_rates) / max(bare_rates), "command_ratio": max(whole_rates) / max(bare_rates),
            "bare_all": bare_rates, "pipeline_all": pipe_rates, "command_all": whole_rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=40, help="mini-batches timed per reader and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is reported)")
    parser.add_argument("--dir", type=Path, help="where to write the three copies (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="read the copies already in --dir instead of writing them")
    parser.add_argument("--skip-read", action="store_true")
    parser.add_argument("--skip-encode", action="store_true")
    parser.add_argument("--encode-vae", default="f16d32-scratch")
    parser.add_argument("--encode-resolution", type=int, default=64)
    parser.add_argument("--encode-images", type=int, default=256)
    parser.add_argument("--encode-batch-size", type=int, default=32)
    parser.add_argument("--encode-workers", type=int, default=1)
    parser.add_argument("--encode-flip", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    figures: dict = {"machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                                 "torch": torch.__version__, "h5py": h5py.__version__,
                                 "hdf5": h5py.version.hdf5_version}}
    if not args.skip_read:
        folder = args.dir or Path(tempfile.mkdtemp(prefix="latent-read-"))
        folder.mkdir(parents=True, exist_ok=True)
        try:
            start = time.perf_counter()
            paths = {"ours": folder / "ours.h5", "repa": folder / "repa-npy", "repa-e": folder / "repae.h5"}
            if not (args.reuse and all(p.exists() for p in paths.values())):
                paths = write_all(folder, args.rows, (32, 16, 16))
                print(f"wrote {args.rows} rows three ways in {time.perf_counter() - start:.1f} s", file=sys.stderr)
            warm_page_cache(paths)
            readers = {
                "ours (LatentDataset: sample + flip + normalise)": LatentDataset(paths["ours"], seed=0),
                "ours, posterior mean only (no sampling)": LatentDataset(paths["ours"], sample=False, normalize=False,
                                                                       flip="none"),
                "REPA: one .npy per image": NpyFolder(paths["repa"]),
                "REPA-E: one HDF5 dataset per image": H5PerImage(paths["repa-e"]),
            }
            readers["ceiling: DataLoader transport only (no reading)"] = Premade(args.rows, (32, 16, 16),
                                                                                 args.batch_size)
            runs: dict[str, list[float]] = {name: [] for name in readers}
            alone: dict[str, list[float]] = {name: [] for name in readers}
            for round_ in range(args.rounds):  # interleaved: a change in machine load hits every reader
                for name, dataset in readers.items():
                    runs[name].append(read_rate(dataset, args.batch_size, args.workers, args.batches,
                                                seed=round_))
                    # The reader alone, in this process (workers=0): no inter-process transport.
                    alone[name].append(read_rate(dataset, args.batch_size, 0, max(4, args.batches // 4),
                                                 seed=round_))
                    print(f"round {round_}: {name:52s} {runs[name][-1]:>10,.0f} latents/s "
                          f"({alone[name][-1]:,.0f} in-process)", file=sys.stderr)
            median = {name: float(np.median(r)) for name, r in runs.items()}
            median_alone = {name: float(np.median(r)) for name, r in alone.items()}
            ours = median["ours (LatentDataset: sample + flip + normalise)"]
            raw = median["ours, posterior mean only (no sampling)"]
            figures["read"] = {
                "rows": args.rows, "batch_size": args.batch_size, "workers": args.workers, "batches": args.batches,
                "rounds": args.rounds, "median_latents_per_s": median, "all_latents_per_s": runs,
                "ours_over_repa_npy": ours / median["REPA: one .npy per image"],
                "ours_over_repae_h5": ours / median["REPA-E: one HDF5 dataset per image"],
                "ours_mean_only_over_repa_npy": raw / median["REPA: one .npy per image"],
                "ours_mean_only_over_repae_h5": raw / median["REPA-E: one HDF5 dataset per image"],
                "in_process_median_latents_per_s": median_alone, "in_process_all_latents_per_s": alone,
                "in_process_ours_over_repae_h5": median_alone["ours (LatentDataset: sample + flip + normalise)"]
                / median_alone["REPA-E: one HDF5 dataset per image"],
                "in_process_ours_mean_only_over_repae_h5": median_alone["ours, posterior mean only (no sampling)"]
                / median_alone["REPA-E: one HDF5 dataset per image"],
            }
        finally:
            if args.dir is None:
                shutil.rmtree(folder, ignore_errors=True)
    if not args.skip_encode:
        figures["encode"] = encode_rates(args.encode_vae, args.encode_resolution, args.encode_images,
                                         args.encode_batch_size, args.encode_workers, args.encode_flip, args.repeats)
        e = figures["encode"]
        print(f"encode {e['vae']} at {e['resolution']} px on {e['device']}: bare {e['bare_img_s']:.1f} img/s, "
              f"cache-latents {e['pipeline_img_s']:.1f} img/s (ratio {e['ratio']:.2f}; whole command with VAE "
              f"set-up {e['command_img_s']:.1f} img/s, ratio {e['command_ratio']:.2f})", file=sys.stderr)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
