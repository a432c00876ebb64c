"""What `train-vae --eval-every` costs, and what its probe budget costs in probe quality.

One run of the README's main job VAE (tiny preset, tv-mobilenet-v2 teacher tokens from `extract`,
64 px) for `--steps` steps with `--eval-data shapes --eval-every STEPS` and the evaluation's
defaults (the tiny preset's 250 held-out images, `--eval-images`; `sendvae probe`'s probe
settings; rFD through the teacher). From its metrics.jsonl:

    training seconds between evaluations   the steps' wall time (the log windows' images / images_per_s),
                                           scaled to the preset's --eval-every (300 steps)
    one evaluation                         eval/seconds (of which eval/probe_seconds trains the probe);
                                           the first evaluation also extracts the originals' features
                                           once, which is not counted here

Then, on the exported VAE, the probe on more images (the probe's settings stay `sendvae probe`'s):

    budget        the row's probe (--eval-images, split 80/10/10 train/val/test)
    1,000 images  `sendvae eval-vae --eval-images 1000` (the paper preset's held-out set)
    full          `sendvae probe shapes` (10,000 images: 8,000 / 1,000 / 1,000)

    python benchmarks/eval_overhead.py --out runs/eval-overhead        # 5 to 20 minutes on 2 CPU cores

Prints a table and writes OUT/eval_overhead.json. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

EVAL_EVERY = 300  # the tiny preset's --eval-every


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(cmd: list[str]) -> float:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - started


def training_seconds(rows: list[dict], batch: int) -> float:
    """Wall time of the logged steps: each loss row covers the steps since the previous one."""
    seconds, last = 0.0, 0
    for r in rows:
        if "images_per_s" in r:
            seconds += (r["step"] - last) * batch / r["images_per_s"]
            last = r["step"]
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/eval-overhead"))
    p.add_argument("--steps", type=int, default=EVAL_EVERY)
    p.add_argument("--teacher", default="tv-mobilenet-v2")
    p.add_argument("--eval-images", type=int, default=250, help="the tiny preset's")
    p.add_argument("--device", default="cpu")
    p.add_argument("--sendvae", default=f"{shlex.quote(sys.executable)} -m sendvae_cli")
    args = p.parse_args(argv)
    sendvae = shlex.split(args.sendvae)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    common = ["--device", args.device, "--quiet"]
    tokens = out / "teacher.h5"
    run(sendvae + ["extract", "shapes", "--teacher", args.teacher, "--resolution", "64", "--num-images", "2000",
                   *common, "--out", str(tokens)])
    run(sendvae + ["train-vae", "shapes", "--preset", "tiny", "--teacher", args.teacher, "--teacher-features",
                   str(tokens), "--lpips-weight", "0", "--num-images", "2000", "--steps", str(args.steps),
                   "--align-start", str(args.steps // 2), "--precision", "fp32", "--workers", "0",
                   "--eval-data", "shapes", "--eval-every", str(args.steps), "--eval-images", str(args.eval_images),
                   *common, "--out", str(out / "vae")])
    rows = [json.loads(line) for line in (out / "vae" / "metrics.jsonl").read_text().splitlines()]
    (row,) = [r for r in rows if "eval/probe_macro_f1" in r]
    train_s = training_seconds(rows, batch=8) * EVAL_EVERY / args.steps

    more = out / "1000-images.json"
    more_s = run(sendvae + ["eval-vae", str(out / "vae" / "export"), "--eval-data", "shapes", "--eval-extractor",
                            args.teacher, "--eval-images", "1000", "--json", str(more), *common])
    full_s = run(sendvae + ["probe", "shapes", "--vae", str(out / "vae" / "export"), *common,
                            "--out", str(out / "probe")])
    more_row = json.loads(more.read_text())["rows"][0]["row"]
    full = json.loads((out / "probe" / "probe.json").read_text())["results"][0]
    result = {
        "cpu": cpu_name(),
        "steps": args.steps,
        "eval_images": args.eval_images,
        "training_seconds_per_eval_every": round(train_s, 1),
        "evaluation_seconds": round(row["eval/seconds"], 1),
        "probe_seconds_of_it": round(row["eval/probe_seconds"], 1),
        "overhead": round(row["eval/seconds"] / train_s, 3),
        "probe": {
            "budget": {"macro_f1": row["eval/probe_macro_f1"], "best_epoch": row["eval/probe_best_epoch"],
                       "seconds": round(row["eval/probe_seconds"], 1)},
            "1000_images": {"macro_f1": more_row["eval/probe_macro_f1"], "best_epoch": more_row["eval/probe_best_epoch"],
                            "seconds": round(more_row["eval/probe_seconds"], 1), "command_seconds": round(more_s, 1)},
            "full": {"macro_f1": full["metrics"]["macro_f1"], "best_epoch": full["best_epoch"],
                     "command_seconds": round(full_s, 1)},
        },
    }
    (out / "eval_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
