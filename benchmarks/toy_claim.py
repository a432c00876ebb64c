"""A toy test of the paper's claim: does aligning the VAE (mapper + noise injection) help the
generator trained on its latent, at equal steps?

Arms (same data, same steps, same SiT, same seeds; only the VAE's alignment differs):

    aligned     train-vae as the main job: the tiny preset's alignment (weight 0.3, from half-way),
                noise injection on
    unaligned   the same with --align-weight 0 (the mapper gets no weight in the loss)
    no-noise    aligned without noise injection (--no-noise; optional, --arms)

The teacher's tokens of each seed's training images are extracted once and read by every training.
For each arm and seed, the README main job's settings: train-vae -> cache-latents -> train-sit (REPA with the same teacher) ->
sample (class-balanced, CFG) -> fid (the teacher's feature space, against held-out shapes) ->
probe (macro-F1 on shapes attributes) -> recon (PSNR). Every command is printed before it runs
and shells out to `sendvae` (or `python -m sendvae_cli`), so any one can be rerun by hand; all of
them resume, so rerunning this script continues where it stopped.

    python benchmarks/toy_claim.py --out runs/toy-claim                       # CPU scale
    python benchmarks/toy_claim.py --out runs/toy-claim --seeds 0 1 2 --vae-steps 4000 \\
        --sit-steps 20000 --num-samples 1000 --device cuda                    # GPU scale

It prints a table (mean and spread over seeds per arm) and writes OUT/toy_claim.json. Beside FD,
probe and PSNR, `shape_judge.py`'s CNN (trained once on real shapes, in OUT/judge) scores the
share of samples that show their class and of reconstructions that keep their colour. Not part
of CI: at the default scale (two arms, two seeds) it takes 30 to 50 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from main_job_report import _fd, write_reference  # noqa: E402  (the same reference as the main job)
sys.path.insert(0, str(ROOT / "benchmarks"))
import shape_judge  # noqa: E402

HELD_OUT_SEED = 1000  # recon's images: a draw of shapes that no training run uses
ARMS = {
    "aligned": [],
    "unaligned": ["--align-weight", "0"],
    "no-noise": ["--no-noise"],
}


def run(cmd: list[str], log: Path) -> float:
    """Print and run one command (its output goes to the terminal and to LOG); seconds taken."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - t0


def one_run(args, arm: str, seed: int, ref: Path, arm_args: list[str] | None = None) -> dict:
    """One VAE and its generator; `arm_args`: the arm's train-vae arguments (default ARMS[arm])."""
    sendvae = shlex.split(args.sendvae)
    out = args.out / f"{arm}-seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    common = ["--device", args.device, "--quiet"]
    seconds = {}
    # The seed draws the shapes rows too, so each seed has its own images and teacher tokens
    # (shared by the arms of that seed).
    tokens = args.out / f"teacher-seed{seed}.h5"
    seconds["extract"] = run(sendvae + [
        "extract", "shapes", "--teacher", args.teacher, "--resolution", "64", "--num-images", str(args.num_images),
        "--seed", str(seed), *common, "--out", str(tokens)], log)
    seconds["train-vae"] = run(sendvae + [
        "train-vae", "shapes", "--preset", "tiny", "--teacher", args.teacher, "--teacher-features", str(tokens),
        "--lpips-weight", "0",
        "--num-images", str(args.num_images), "--steps", str(args.vae_steps), "--precision", args.vae_precision,
        "--align-start", str(args.vae_steps // 2),
        "--seed", str(seed),
        *(ARMS[arm] if arm_args is None else arm_args), *args.vae_args, *common, "--out", str(out / "vae")], log)
    seconds["cache-latents"] = run(sendvae + [
        "cache-latents", "shapes", "--vae", str(out / "vae" / "export"), "--resolution", "64", "--num-images", str(args.num_images),
        "--seed", str(seed), *common, "--out", str(out / "latents.h5")], log)
    seconds["train-sit"] = run(sendvae + [
        "train-sit", str(out / "latents.h5"), "--preset", "tiny", "--model", args.sit_model, "--teacher", args.teacher,
        "--teacher-features", str(tokens), "--steps", str(args.sit_steps), "--seed", str(seed), *args.sit_args, *common,
        "--out", str(out / "sit")], log)
    seconds["sample"] = run(sendvae + [
        "sample", str(out / "sit"), "-n", str(args.num_samples), "--labels", "balanced", "--cfg", str(args.cfg),
        "--steps", str(args.sample_steps), "--seed", str(seed), *common, "--out", str(out / "samples")], log)
    seconds["fid"] = run(sendvae + [
        "fid", str(out / "samples" / "samples.npz"), "--ref", str(ref), "--extractor", args.teacher,
        "--json", str(out / "fid.json"), "--device", args.device, "--quiet"], log)
    seconds["probe"] = run(sendvae + [
        "probe", "shapes", "--vae", f"{arm}={out / 'vae' / 'export'}", "--num-images", str(args.probe_images),
        "--device", args.device, "--quiet", "--out", str(out / "probe")], log)
    seconds["recon"] = run(sendvae + [
        "recon", "shapes", "--vae", f"{arm}={out / 'vae' / 'export'}", "--num-images", str(args.recon_images),
        "--seed", str(HELD_OUT_SEED), "--extractor", args.teacher, "--no-lpips", "--device", args.device, "--quiet", "--out", str(out / "recon")], log)

    fd_name, fd = _fd(json.loads((out / "fid.json").read_text()))
    probe = json.loads((out / "probe" / "probe.json").read_text())["results"][0]
    recon = json.loads((out / "recon" / "recon.json").read_text())["results"][0]
    return {"arm": arm, "seed": seed, "fd_name": fd_name, "fd": fd, "probe_macro_f1": probe["metrics"]["macro_f1"],
            "probe_micro_f1": probe["metrics"].get("micro_f1"), "psnr": recon["metrics"]["psnr"],
            "rfd": recon["metrics"].get("rfd"),
            "seconds": {k: round(v, 1) for k, v in seconds.items()}, "out": str(out)}


def spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f} ({', '.join(f'{v:.3f}' for v in values)})"


def parser(description: str, out: str) -> argparse.ArgumentParser:
    """The options of one VAE-and-generator chain (toy_thesis.py takes the same)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--teacher", default="tv-mobilenet-v2")
    p.add_argument("--num-images", type=int, default=2000, help="training rows of shapes")
    p.add_argument("--vae-precision", default=None, choices=["auto", "fp32", "bf16"],
                   help="as the main job: fp32 on a CPU (every CPU trains the same VAE); auto on CUDA")
    p.add_argument("--vae-steps", type=int, default=1200, help="as the main job (the tiny preset's)")
    p.add_argument("--sit-steps", type=int, default=3000, help="as the main job")
    p.add_argument("--sit-model", default="SiT-mini/4", help="as the main job")
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--ref-images", type=int, default=1000)
    p.add_argument("--cfg", type=float, default=4.0, help="as the main job")
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--probe-images", type=int, default=2000)
    p.add_argument("--recon-images", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--vae-arg", dest="vae_args", action="append", default=[], help="extra train-vae argument (repeat)")
    p.add_argument("--sit-arg", dest="sit_args", action="append", default=[], help="extra train-sit argument (repeat)")
    p.add_argument("--no-judge", dest="judge", action="store_false",
                   help="skip benchmarks/shape_judge.py's scores (samples of their class, recon colour kept)")
    p.add_argument("--sendvae", default=f"{shlex.quote(sys.executable)} -m sendvae_cli")
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None):
    args = p.parse_args(argv)
    if args.vae_precision is None:
        args.vae_precision = "auto" if args.device.startswith("cuda") else "fp32"
    return args


def judge_scores(args, rows: list[dict]) -> None:
    """Add the judge's scores to each run's row: samples of their class, reconstructions of their colour."""
    judge = shape_judge.train_judge(args.out / "judge", shape_judge.STEPS, shape_judge.IMAGES)
    for r in rows:
        out = Path(r["out"])
        r["sample_class_accuracy"] = shape_judge.score_samples(judge, out / "samples" / "samples.npz")["class_accuracy"]
        r["recon_colour_accuracy"] = shape_judge.score_vae(judge, out / "vae" / "export", 256)["colour_accuracy"]


def main(argv: list[str] | None = None) -> int:
    p = parser("Toy test of Send-VAE's claim: aligned vs unaligned VAE, same SiT.", "runs/toy-claim")
    p.add_argument("--arms", nargs="+", default=["aligned", "unaligned"], choices=list(ARMS))
    args = parse(p, argv)

    args.out.mkdir(parents=True, exist_ok=True)
    ref = args.out / "shapes-ref.npz"
    write_reference(ref, args.ref_images, 64)
    rows = [one_run(args, arm, seed, ref) for arm in args.arms for seed in args.seeds]
    if args.judge:  # does a sample show its class, does a reconstruction keep its colour
        judge_scores(args, rows)

    fd_name = rows[0]["fd_name"]
    columns = {"fd": fd_name + " (lower is better)", "probe_macro_f1": "probe macro-F1", "psnr": "PSNR (dB)"}
    if args.judge:
        columns |= {"sample_class_accuracy": "samples of their class", "recon_colour_accuracy": "recon colour kept"}
    print("\n" + f"{'arm':<10} " + " ".join(f"{title:<36}" for title in columns.values()))
    table = {}
    for arm in args.arms:
        mine = [r for r in rows if r["arm"] == arm]
        table[arm] = {k: spread([r[k] for r in mine]) for k in columns}
        print(f"{arm:<10} " + " ".join(f"{table[arm][k]:<36}" for k in columns))
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "runs": rows, "table": table}
    (args.out / "toy_claim.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {args.out / 'toy_claim.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
