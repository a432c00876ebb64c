"""The main job's two small helpers (scripts/main_job.sh runs them; each is one plain command).

    python scripts/main_job_report.py reference --out runs/main/shapes-ref.npz --num-images 500
        rows of the built-in `shapes` data as an ADM-style batch (`arr_0`: uint8 N x H x W x 3),
        the reference that `sendvae fid --ref` reads. Rows are taken from the end of the data
        set, so they are not the rows the VAE and the SiT trained on.

    python scripts/main_job_report.py summary --out runs/main
        the summary: each step's output and time (OUT/steps.tsv), FD, probe macro-F1 and PSNR
        from the JSON files the commands wrote, printed as a table and saved as OUT/summary.json,
        and OUT/summary.png: the reconstructions, the samples per class and the probe chart,
        one above the other.

Only Pillow and numpy (and sendvae for the data); nothing here trains or measures anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def write_reference(out: Path, num_images: int, resolution: int) -> None:
    import numpy as np

    from sendvae_cli.data.open import open_images
    from sendvae_cli.registry import get_registry

    if out.is_file():
        print(f"{out} exists; nothing to do")
        return
    source = open_images("shapes", registry=get_registry(), resolution=resolution)
    rows = range(len(source) - num_images, len(source))
    images = np.stack([source[i][0].permute(1, 2, 0).numpy() for i in rows]).astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez(tmp, arr_0=images)
    tmp.replace(out)
    print(f"wrote {out}: {len(images)} shapes images at {resolution} px (rows {rows.start}-{rows.stop - 1})")


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _fd(fid: dict | None) -> tuple[str, float | None]:
    """(name, value) of the Frechet distance in a `sendvae fid` JSON (FID, or FD_<extractor>)."""
    if not fid:
        return "FD", None
    value = (fid.get("metrics") or {}).get("fd")
    return fid.get("fd_name", "FD"), (float(value) if value is not None else None)


def collect(out: Path) -> dict:
    by_name: dict[str, dict] = {}  # a step run again (a continued train-sit) keeps its place, with its last time
    table = out / "steps.tsv"
    if table.is_file():
        for line in table.read_text().splitlines():
            name, output, seconds = line.split("\t")[:3]
            by_name[name] = {"step": name, "output": output, "seconds": float(seconds)}
    steps = list(by_name.values())
    fid = _read_json(out / "samples" / "samples.npz.fid.json") or _read_json(out / "fid.json")
    fd_name, fd = _fd(fid)
    probe = _read_json(out / "probe" / "probe.json")
    f1 = {r["label"]: r["metrics"]["macro_f1"] for r in probe["results"]} if probe else {}
    recon = _read_json(out / "recon" / "recon.json")
    psnr = {r.get("label", "vae"): r.get("psnr", (r.get("metrics") or {}).get("psnr")) for r in recon["results"]} if recon else {}
    return {"steps": steps, "total_seconds": round(sum(s["seconds"] for s in steps), 1),
            "fd_name": fd_name, "fd": fd, "probe_macro_f1": f1, "psnr": psnr}


def _panel(title: str, path: Path | None, width: int):
    from PIL import Image, ImageDraw

    body = None
    if path is not None and path.is_file():
        body = Image.open(path).convert("RGB")
        if body.width != width:
            body = body.resize((width, max(1, round(body.height * width / body.width))), Image.NEAREST)
    height = 24 + (body.height if body else 24)
    panel = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(panel)
    draw.text((6, 6), title, fill="black")
    if body:
        panel.paste(body, (0, 24))
    else:
        draw.text((6, 30), f"(missing: {path})", fill="red")
    return panel


def compose(out: Path, summary: dict, width: int = 768) -> Path:
    from PIL import Image

    recon_images = sorted((out / "recon" / "images").glob("*.png")) if (out / "recon" / "images").is_dir() else []
    vae_grids = sorted((out / "vae" / "samples").glob("recon-*.png")) if (out / "vae" / "samples").is_dir() else []
    recon = recon_images[0] if recon_images else (vae_grids[-1] if vae_grids else None)
    psnr = ", ".join(f"{v:.2f} dB" for v in summary["psnr"].values() if v is not None) or "n/a"
    f1 = ", ".join(f"{k} {v:.3f}" for k, v in summary["probe_macro_f1"].items()) or "n/a"
    fd = f"{summary['fd']:.2f}" if summary["fd"] is not None else "n/a"
    panels = [
        _panel(f"Reconstructions (originals above, Send-VAE below), PSNR {psnr}", recon, width),
        _panel(f"Samples, one row per class (SiT + REPA, CFG); {summary['fd_name']} {fd}", out / "grid" / "grid.png", width),
        _panel(f"Attribute probes, macro-F1: {f1}", out / "probe" / "probe.png", width),
    ]
    sheet = Image.new("RGB", (width, sum(p.height for p in panels)), "white")
    y = 0
    for panel in panels:
        sheet.paste(panel, (0, y))
        y += panel.height
    path = out / "summary.png"
    sheet.save(path, optimize=False)
    return path


def summary_command(out: Path) -> None:
    summary = collect(out)
    for s in summary["steps"]:
        print(f"  {s['step']:<14} {s['seconds']:8.1f} s   {s['output']}")
    print(f"  {'total':<14} {summary['total_seconds']:8.1f} s")
    fd = f"{summary['fd']:.3f}" if summary["fd"] is not None else "n/a"
    print(f"  {summary['fd_name']} of the samples vs held-out shapes: {fd}")
    for label, value in summary["probe_macro_f1"].items():
        print(f"  probe macro-F1 ({label}): {value:.3f}")
    for label, value in summary["psnr"].items():
        print(f"  reconstruction PSNR ({label}): {value:.2f} dB" if value is not None else f"  PSNR ({label}): n/a")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(f"  picture: {compose(out, summary)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    ref = sub.add_parser("reference", help="held-out shapes images as an ADM .npz for `sendvae fid --ref`")
    ref.add_argument("--out", type=Path, required=True)
    ref.add_argument("--num-images", type=int, default=500)
    ref.add_argument("--resolution", type=int, default=64)
    summ = sub.add_parser("summary", help="print the summary and compose OUT/summary.png")
    summ.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.what == "reference":
        write_reference(args.out, args.num_images, args.resolution)
    else:
        summary_command(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
