"""The paper's thesis at toy scale: does the linear separability of attributes in a VAE's latent
predict how good a generator trained on it gets?

Six VAE recipes on shapes (tiny preset, the real tv-mobilenet-v2 teacher), each with each seed,
each followed by the same small SiT: toy_claim.py's chain (train-vae -> cache-latents ->
train-sit -> sample -> fid, probe, recon, and shape_judge.py's scores), with train-vae's
in-training evaluation on (`--eval-data shapes`, its last row is the "in-training probe"):

    align-0      --align-weight 0 (the mapper gets no weight: no alignment)
    align-0.3    the tiny preset: alignment weight 0.3 from half-way, mapper depth 1, noise on
    align-1      --align-weight 1
    depth-0      --mapper-depth 0 (patch embedding + projector)
    depth-2      --mapper-depth 2
    no-noise     --no-noise

Per VAE: probe macro-F1 (`sendvae probe`, 2,000 images), the in-training probe's last macro-F1,
recon PSNR and rFD, generator FD (teacher space) and the judge's share of samples showing their
class. Then the Pearson and Spearman correlations of each probe with generator FD and with the
judge's share, with 95% bootstrap intervals (VAEs resampled with replacement), a table, OUT/toy_thesis.json
and OUT/toy_thesis.png (scatter plots).

    python benchmarks/toy_thesis.py --out runs/toy-thesis                 # 12 chains: hours on 2 CPU cores
    python benchmarks/toy_thesis.py --out runs/toy-thesis --device cuda   # minutes on a GPU

Table 2 of the paper (SiT-B/1, gFID) would pick mapper depth 1 (8.42 against 9.20 at depth 0 and
9.47 at depth 2), noise on (7.57 against 8.42) and alignment on (11.40 without): align-0.3 or
align-1 here. Every command resumes, so a rerun continues where it stopped. Not part of CI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy_claim  # noqa: E402

RECIPES = {
    "align-0": ["--align-weight", "0"],
    "align-0.3": [],
    "align-1": ["--align-weight", "1"],
    "depth-0": ["--mapper-depth", "0"],
    "depth-2": ["--mapper-depth", "2"],
    "no-noise": ["--no-noise"],
}
PREDICTORS = {"probe_macro_f1": "probe macro-F1", "in_training_probe": "in-training probe macro-F1"}
OUTCOMES = {"fd": "generator FD (lower is better)", "sample_class_accuracy": "judge: samples of their class"}
BOOTSTRAP = 2000


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank (Spearman's convention)."""
    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranked[tied] = ranked[tied].mean()
    return ranked


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    scale = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / scale) if scale > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(ranks(x), ranks(y))


def correlation(x, y, seed: int = 0, rounds: int = BOOTSTRAP) -> dict:
    """Pearson and Spearman of paired values, each with a 95% percentile bootstrap interval over the
    pairs (resamples where one side is constant have no correlation and are left out)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(seed)
    out = {"n": int(len(x))}
    for name, fn in (("pearson", pearson), ("spearman", spearman)):
        draws = [fn(x[i], y[i]) for i in rng.integers(0, len(x), size=(rounds, len(x)))]
        draws = np.array([d for d in draws if np.isfinite(d)])
        low, high = (np.percentile(draws, [2.5, 97.5]) if len(draws) else (float("nan"),) * 2)
        out[name] = {"r": fn(x, y), "low": float(low), "high": float(high)}
    return out


def in_training_probe(run: Path) -> float | None:
    """The last evaluation row's probe macro-F1 in a train-vae run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in rows if "eval/probe_macro_f1" in r]
    return evals[-1]["eval/probe_macro_f1"] if evals else None


def correlations(rows: list[dict]) -> dict:
    table = {}
    for p in PREDICTORS:
        for o in OUTCOMES:
            pairs = [(r[p], r[o]) for r in rows if r.get(p) is not None and r.get(o) is not None]
            if len(pairs) >= 3:
                table[f"{p} ~ {o}"] = correlation(*zip(*pairs))
    return table


def scatter(rows: list[dict], path: Path) -> Path:
    from sendvae_cli.eval.curves import panels

    series, labels = [], []
    for p, p_name in PREDICTORS.items():
        for o, o_name in OUTCOMES.items():
            series.append((o_name, [r[p] for r in rows], [r.get(o) for r in rows]))
            labels.append(p_name)
    return panels(path, f"toy thesis: {len(rows)} VAEs ({len({r['arm'] for r in rows})} recipes x seeds)", series,
                  x_label=labels, connect=False)


def main(argv: list[str] | None = None) -> int:
    p = toy_claim.parser("The thesis at toy scale: probe F1 against the generator, over VAE recipes.",
                         "runs/toy-thesis")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--eval-images", type=int, default=1000, help="train-vae --eval-images")
    args = toy_claim.parse(p, argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ref = args.out / "shapes-ref.npz"
    toy_claim.write_reference(ref, args.ref_images, 64)
    evaluation = ["--eval-data", "shapes", "--eval-images", str(args.eval_images), "--eval-extractor", args.teacher]
    rows = []
    for recipe in args.recipes:
        for seed in args.seeds:
            row = toy_claim.one_run(args, recipe, seed, ref, arm_args=RECIPES[recipe] + evaluation)
            row["in_training_probe"] = in_training_probe(Path(row["out"]) / "vae")
            rows.append(row)
    if args.judge:
        toy_claim.judge_scores(args, rows)
    else:
        for row in rows:
            row["sample_class_accuracy"] = None
    table = correlations(rows)
    print(f"\n{'recipe':<10} {'seed':>4} {'probe F1':>9} {'in-train':>9} {'PSNR':>7} {'rFD':>9} {'FD':>9} {'judge':>6}")
    for r in rows:
        cells = [r["probe_macro_f1"], r["in_training_probe"], r["psnr"], r.get("rfd"), r["fd"],
                 r["sample_class_accuracy"]]
        print(f"{r['arm']:<10} {r['seed']:>4} " + " ".join(
            f"{'-' if v is None else format(v, '.4g'):>{w}}" for v, w in zip(cells, (9, 9, 7, 9, 9, 6))))
    print()
    for name, c in table.items():
        print(f"{name:<45} " + "  ".join(f"{k} {c[k]['r']:+.3f} [{c[k]['low']:+.3f}, {c[k]['high']:+.3f}]"
                                         for k in ("pearson", "spearman")) + f"  (n={c['n']})")
    chart = scatter(rows, args.out / "toy_thesis.png")
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "recipes": {k: RECIPES[k] for k in args.recipes}, "runs": rows, "correlations": table}
    (args.out / "toy_thesis.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {args.out / 'toy_thesis.json'} and {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
