"""A judge for the toy scale: does a sample show its class, does a reconstruction keep its colour?

FD in MobileNetV2's space and PSNR say how far images are from the data, not whether a class-2
sample is a triangle or a reconstructed green cross is still green. This script trains a small
CNN with two heads (shape: 5 classes, colour: 8) on real `shapes` images (64 px, rows of seed 7,
which no run of the main job or the toy claim trains on), checks it on other real rows (seed 8),
and then scores:

    --samples NPZ ...   ADM-style sample batches (`arr_0` images, `arr_1` labels, as `sendvae
                        sample` writes them): the share of samples the judge classifies as their
                        label, overall and per class (chance: 0.2)
    --vae EXPORT ...    reconstructions of held-out rows (seed 1000, as `recon --seed 1000`):
                        PSNR, and the share whose shape and whose colour the judge still reads
                        right (on the originals it reads all of them)

    --regenerate RUN --latents H5
                        where along the flow a generator falls short: the first rows of the
                        latent cache it trained on, noised to flow time t (--times), integrated
                        back to 0 with its own velocity (Euler, CFG --cfg) and decoded; the share
                        whose shape the judge reads as the row's label, for each t. From t = 0 it
                        is the VAE's; from t = 1 it is plain sampling with those labels

    python benchmarks/shape_judge.py --out runs/judge --samples runs/main/samples/samples.npz \\
        --vae runs/main/vae/export
    python benchmarks/shape_judge.py --out runs/judge --regenerate runs/main/sit --latents runs/main/latents.h5

The judge is trained once per OUT (weights in OUT/judge.safetensors, its held-out accuracy in
OUT/judge.json; about 4 minutes on 2 CPU cores) and read back on later calls.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

TRAIN_SEED, CHECK_SEED, HELD_OUT_SEED = 7, 8, 1000
RESOLUTION = 64
STEPS, IMAGES = 1500, 8000  # batch 64: about 4 minutes on 2 CPU cores


class Judge(nn.Module):
    def __init__(self):
        super().__init__()
        layers, width = [], 3
        for out in (32, 64, 64, 128):
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            width = out
        layers[-1] = nn.AdaptiveMaxPool2d(1)  # where the shape is should not matter
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.shape = nn.Linear(width, 5)
        self.colour = nn.Linear(width, 8)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8-valued (B, 3, H, W) images -> (shape logits, colour logits)."""
        h = self.features(images.float() / 127.5 - 1)
        return self.shape(h), self.colour(h)


def shapes_rows(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(uint8 images, shape labels, colour labels) of the first `count` rows of a shapes draw."""
    from sendvae_cli.data.open import open_images
    from sendvae_cli.data.shapes import draw_row
    from sendvae_cli.registry import get_registry

    source = open_images("shapes", registry=get_registry(), resolution=RESOLUTION, seed=seed, num_images=count)
    images = torch.stack([source[i][0] for i in range(count)]).to(torch.uint8)
    factors = torch.tensor([draw_row(seed, i).factors[:2] for i in range(count)])
    return images, factors[:, 0], factors[:, 1]


@torch.no_grad()
def predict(judge: Judge, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    shapes, colours = [], []
    for lo in range(0, len(images), batch):
        s, c = judge(images[lo:lo + batch])
        shapes.append(s.argmax(1))
        colours.append(c.argmax(1))
    return torch.cat(shapes), torch.cat(colours)


def train_judge(out: Path, steps: int, images: int, seed: int = 0) -> Judge:
    """The judge in `out`, trained there first if it is not (`seed`: its initialisation and batch
    order; judges of other seeds read borderline images differently, so figures near a threshold
    are worth reading with two)."""
    from safetensors.torch import load_file, save_file

    weights, report = out / "judge.safetensors", out / "judge.json"
    judge = Judge()
    if weights.is_file():
        facts = json.loads(report.read_text())
        if facts.get("seed", 0) != seed:
            sys.exit(f"--out {out}: holds the judge of seed {facts.get('seed', 0)}, not {seed}; "
                     f"give each --seed its own folder")
        judge.load_state_dict(load_file(str(weights)))
        print(f"judge: {weights} ({facts})")
        return judge.eval()
    x, shape, colour = shapes_rows(TRAIN_SEED, images)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        rows = torch.randint(0, images, (64,), generator=generator)
        s, c = judge(x[rows])
        loss = nn.functional.cross_entropy(s, shape[rows]) + nn.functional.cross_entropy(c, colour[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    judge.eval()
    x, shape, colour = shapes_rows(CHECK_SEED, 1000)
    s, c = predict(judge, x)
    facts = {"steps": steps, "images": images, "seed": seed, "check_rows": 1000,
             "shape_accuracy": round(float((s == shape).float().mean()), 4),
             "colour_accuracy": round(float((c == colour).float().mean()), 4)}
    out.mkdir(parents=True, exist_ok=True)
    save_file(judge.state_dict(), str(weights))
    report.write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    print(f"judge: trained, on 1,000 real rows it reads {facts}")
    return judge


def score_samples(judge: Judge, path: Path) -> dict:
    with np.load(path) as batch:
        images = torch.from_numpy(batch["arr_0"]).permute(0, 3, 1, 2)
        labels = torch.from_numpy(batch["arr_1"]).long()
    shape, _ = predict(judge, images)
    per_class = [round(float((shape[labels == k] == k).float().mean()), 3) for k in range(5) if (labels == k).any()]
    return {"samples": str(path), "count": len(labels),
            "class_accuracy": round(float((shape == labels).float().mean()), 4), "per_class": per_class}


@torch.no_grad()
def score_vae(judge: Judge, export: Path, rows: int) -> dict:
    from sendvae_cli.vae.open import open_vae

    vae = open_vae(str(export)).model.eval()
    x, shape, colour = shapes_rows(HELD_OUT_SEED, rows)
    recon = torch.cat([vae(x[lo:lo + 64].float() / 127.5 - 1, sample=False)[0] for lo in range(0, rows, 64)])
    recon = ((recon.clamp(-1, 1) + 1) * 127.5).round()
    mse = ((recon - x.float()) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    s, c = predict(judge, recon)
    return {"vae": str(export), "rows": rows, "psnr": round(float((10 * torch.log10(255**2 / mse)).mean()), 3),
            "shape_accuracy": round(float((s == shape).float().mean()), 4),
            "colour_accuracy": round(float((c == colour).float().mean()), 4)}


@torch.no_grad()
def score_regeneration(judge: Judge, run: Path, latents: Path, rows: int, times: list[float], cfg: float,
                       steps: int = 25) -> dict:
    """The judge's shape accuracy on training latents noised to each t and integrated back to 0."""
    import h5py

    from sendvae_cli.flow.samplers import ode_sample
    from sendvae_cli.generate.source import open_generator

    gen = open_generator(run)
    model, vae = gen.model.float().eval(), gen.vae.float().eval()
    mu, sigma = gen.latent_mean.view(1, -1, 1, 1), gen.latent_std.view(1, -1, 1, 1)
    with h5py.File(latents, "r") as cache:
        mean = torch.from_numpy(cache["mean"][:rows].astype(np.float32))
        labels = torch.from_numpy(cache["labels"][:rows].astype(np.int64))
    z = (mean - mu) / sigma  # the posterior mean, normalised as the model saw it
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    accuracy = {}
    for t0 in times:
        x = (1 - t0) * z + t0 * noise
        if t0 > 0:  # the sampler's uniform grid from t0, as many steps per unit of time as `steps` from 1
            x = ode_sample(model, x, labels, steps=max(1, round(steps * t0)), cfg_scale=cfg,
                           null_class=model.null_class, start=t0).float()
        images = torch.cat([vae.decode(x[lo:lo + 64] * sigma + mu) for lo in range(0, rows, 64)])
        shape, _ = predict(judge, ((images.clamp(-1, 1) + 1) * 127.5).round())
        accuracy[f"{t0:g}"] = round(float((shape == labels).float().mean()), 4)
    return {"regenerate": str(run), "latents": str(latents), "rows": rows, "cfg": cfg,
            "shape_accuracy_from_t": accuracy}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Shape/colour judge for the toy scale's samples and reconstructions.")
    p.add_argument("--out", type=Path, default=Path("runs/judge"))
    p.add_argument("--samples", type=Path, nargs="*", default=[])
    p.add_argument("--vae", type=Path, nargs="*", default=[])
    p.add_argument("--recon-rows", type=int, default=256)
    p.add_argument("--steps", type=int, default=STEPS, help="judge training steps (batch 64)")
    p.add_argument("--images", type=int, default=IMAGES, help="real rows the judge trains on")
    p.add_argument("--seed", type=int, default=0, help="the judge's training seed (one judge per --out)")
    p.add_argument("--regenerate", type=Path, nargs="*", default=[], help="train-sit runs or exports")
    p.add_argument("--latents", type=Path, help="the latent cache the --regenerate runs trained on")
    p.add_argument("--times", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7, 0.85, 1.0])
    p.add_argument("--cfg", type=float, default=4.0, help="guidance for --regenerate (the main job's)")
    p.add_argument("--regenerate-rows", type=int, default=250)
    p.add_argument("--json", type=Path, help="also write the scores here")
    args = p.parse_args(argv)
    if args.regenerate and args.latents is None:
        p.error("--regenerate needs --latents: the latent cache the run trained on")
    if any(not 0 <= t <= 1 for t in args.times):
        p.error(f"--times {' '.join(map(str, args.times))}: expected flow times in [0, 1]")
    for path in [*args.samples, *args.vae, *args.regenerate, *([args.latents] if args.regenerate else [])]:
        if not path.exists():
            p.error(f"{path}: no such file or folder")
    judge = train_judge(args.out, args.steps, args.images, args.seed)
    scores = [score_samples(judge, path) for path in args.samples]
    scores += [score_vae(judge, path, args.recon_rows) for path in args.vae]
    scores += [score_regeneration(judge, run, args.latents, args.regenerate_rows, args.times, args.cfg)
               for run in args.regenerate]
    for row in scores:
        print(json.dumps(row, sort_keys=True))
    if args.json:
        args.json.write_text(json.dumps(scores, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
