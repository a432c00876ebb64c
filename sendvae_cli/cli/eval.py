"""`sendvae fid`, `sendvae probe` and `sendvae recon`: judging images and VAEs (docs/fid.md,
docs/probe.md, docs/recon.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sendvae_cli.cli import options as o
from sendvae_cli.cli.app import app, registry, user_errors
from sendvae_cli.errors import UserError

PROBE_PANEL = "Probe"
LPIPS_PANEL = "LPIPS"


@app.command()
@user_errors
def fid(
    samples: Annotated[str, typer.Argument(metavar="SAMPLES", help="A folder of images or an ADM .npz (arr_0: uint8 N x H x W x 3).", show_default=False)],
    ref: Annotated[str, typer.Option("--ref", help="Reference: a folder of images, an ADM reference batch .npz (mu, sigma, mu_s, sigma_s, arr_0), or statistics saved by --save-stats.", rich_help_panel=o.DATA_PANEL, show_default=False)],
    extractor: o.Extractor = "inception",
    save_stats: Annotated[Optional[Path], typer.Option(help="Write the statistics of the reference (and its precision/recall features) here, for reuse as --ref.", rich_help_panel=o.DATA_PANEL, show_default=False)] = None,
    num_samples: Annotated[Optional[int], typer.Option(help="Use only the first N samples (default: all; papers use 50,000).", rich_help_panel=o.DATA_PANEL, show_default=False)] = None,
    inception_weights: o.InceptionWeights = None,
    teacher_weights: o.ExtractorWeights = None,
    random_weights: Annotated[bool, typer.Option(help="Build the extractor untrained: a smoke test (warned about), figures mean nothing.", rich_help_panel=o.EXTRACTOR_PANEL)] = False,
    seed: Annotated[int, typer.Option(help="Seed for --random-weights.", rich_help_panel=o.EXTRACTOR_PANEL)] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="JSON file with every figure and the protocol (default: SAMPLES.fid.json beside SAMPLES).", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per forward pass (default: 250 on GPU, 32 on CPU).", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    workers: o.Workers = None,
    device: o.Device = "auto",
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse reference statistics cached by content and extractor ($SENDVAE_CACHE/fid).", rich_help_panel=o.RUN_PANEL)] = True,
    quiet: o.Quiet = False,
) -> None:
    """FID, sFID, Inception Score, precision and recall as the ADM suite computes them, or the Fréchet distance in a teacher's space, and KID and any metric a plugin registers (docs/fid.md)."""
    from rich.console import Console

    from sendvae_cli.eval.fid import FidOptions, evaluate, fid_table

    o.exclusive_weights("--teacher-weights", teacher_weights, random_weights)
    o.existing(("--teacher-weights", teacher_weights))
    found = registry() if extractor != "inception" else None
    options = FidOptions(samples=samples, ref=ref, save_stats=save_stats, inception_weights=inception_weights,
                         extractor=extractor, teacher_weights=teacher_weights, random_weights=random_weights,
                         seed=seed, batch_size=batch_size, device=device, num_samples=num_samples, json_out=json_out,
                         workers=workers, cache=cache, quiet=quiet)
    result = evaluate(options, registry=found)
    if result is not None:  # None: a process of a torchrun job other than rank 0
        Console().print(fid_table(result))


@app.command()
@user_errors
def probe(
    data: Annotated[str, typer.Argument(metavar="DATA", help="An attribute dataset (celeba, deepfashion, awa, shapes) or a CSV of image paths and attribute columns.", show_default=False)],
    vae: Annotated[Optional[list[str]], typer.Option("--vae", help="[LABEL=]VAE to probe: exported folder (train-vae), base name, diffusers folder or .pt; repeat to compare.", rich_help_panel="Features", show_default=False)] = None,
    features: Annotated[Optional[list[str]], typer.Option("--features", help="[LABEL=]teacher:NAME (pooled patch tokens, for reference) or vae:REF; repeatable.", rich_help_panel="Features", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder: probe.json, probe.png, results/, features/ (default runs/probe-DATA).", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    root: Annotated[Optional[Path], typer.Option(help="Where the dataset lives (its official layout, see docs/data.md).", rich_help_panel=o.DATA_PANEL, show_default=False)] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Image side after ADM centre crop (default: the training resolution exported VAEs record, else 256).", rich_help_panel=o.DATA_PANEL, show_default=False)] = None,
    num_images: Annotated[Optional[int], typer.Option(help="Use about N images, keeping the split proportions (shapes: its size, default 10000).", rich_help_panel=o.DATA_PANEL, show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed for generated data, random weights, the probe's initialisation and batch order.", rich_help_panel=o.DATA_PANEL)] = 0,
    strict: o.Strict = False,
    random_weights: Annotated[bool, typer.Option(help="Build teachers and VAE bases given by name untrained (smoke runs, baselines).", rich_help_panel="Features")] = False,
    teacher_weights: Annotated[Optional[Path], typer.Option(help="Local weights file or folder for the teacher of --features teacher:NAME.", rich_help_panel="Features", show_default=False)] = None,
    epochs: Annotated[int, typer.Option(help="Most epochs of probe training (early stopping usually ends it sooner).", rich_help_panel=PROBE_PANEL)] = 200,
    patience: Annotated[int, typer.Option(help="Stop after this many epochs without a lower validation loss.", rich_help_panel=PROBE_PANEL)] = 10,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.", rich_help_panel=PROBE_PANEL)] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.", rich_help_panel=PROBE_PANEL)] = 1e-4,
    probe_batch_size: Annotated[int, typer.Option(help="Feature rows per probe training step.", rich_help_panel=PROBE_PANEL)] = 256,
    memory_gb: Annotated[float, typer.Option(help="Feature tables up to this size (float16) are held in memory; larger ones stream from the cache.", rich_help_panel=PROBE_PANEL)] = 4.0,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Feature caches (default OUT/features); share one between probe runs to reuse features.", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    batch_size: o.BatchSize = None,
    workers: o.Workers = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (encoding and probe training).", rich_help_panel=o.RUN_PANEL)] = "auto",
    block_rows: o.BlockRows = 1024,
    quiet: o.Quiet = False,
) -> None:
    """Attribute linear probes on VAE latents: rank VAEs before training a generator (docs/probe.md)."""
    from sendvae_cli.eval.requests import parse_request

    requests = [parse_request(v, "--vae") for v in vae or []] + [parse_request(f, "--features") for f in features or []]
    if not requests:
        raise UserError("--vae: missing; pass the VAE(s) to probe (repeat --vae to compare), or --features teacher:NAME")
    o.positive(("--epochs", epochs), ("--patience", patience), ("--probe-batch-size", probe_batch_size),
               ("--block-rows", block_rows), ("--batch-size", batch_size), ("--lr", lr), ("--memory-gb", memory_gb))
    if weight_decay < 0:
        raise UserError(f"--weight-decay {weight_decay}: expected 0 or more")
    workers = o.workers_or_default(workers)
    o.existing(("--root", root), ("--teacher-weights", teacher_weights))
    o.exclusive_weights("--teacher-weights", teacher_weights, random_weights)
    found = registry()

    from rich.console import Console

    from sendvae_cli.eval.linear_probe import ProbeSettings
    from sendvae_cli.eval.probe import ProbeOptions, epoch_cap_warnings, probe_table, render_attribute_f1, run_probe
    from sendvae_cli.eval.requests import data_name

    name = data_name(data)
    settings = ProbeSettings(epochs=epochs, patience=patience, lr=lr, weight_decay=weight_decay,
                             batch_size=probe_batch_size, seed=seed, memory_gb=memory_gb)
    options = ProbeOptions(data=data, requests=requests, out=out or Path("runs") / f"probe-{name}", root=root,
                           resolution=resolution, num_images=num_images, seed=seed, random_weights=random_weights,
                           teacher_weights=teacher_weights, strict=strict, cache_dir=cache_dir, batch_size=batch_size, workers=workers, device=device,
                           block_rows=block_rows, settings=settings, quiet=quiet)
    summary = run_probe(options, found)
    if summary is not None:
        Console().print(probe_table(summary))
        Console().print(render_attribute_f1(summary))
        from sendvae_cli.progress import warn

        for line in epoch_cap_warnings(summary):
            warn(line)
        if not quiet:
            Console(stderr=True).print(f"wrote {options.out / 'probe.json'} and {options.out / 'probe.png'}",
                                       highlight=False)


@app.command()
@user_errors
def recon(
    data: Annotated[str, typer.Argument(metavar="DATA", help="A folder of images or a dataset name, e.g. shapes.", show_default=False)],
    vae: Annotated[Optional[list[str]], typer.Option("--vae", help="[LABEL=]VAE to measure: exported folder (train-vae), base name, diffusers folder or .pt; repeat to compare.", rich_help_panel=o.VAE_PANEL, show_default=False)] = None,
    extractor: o.Extractor = "inception",
    out: Annotated[Optional[Path], typer.Option(help="Output folder: recon.json, images/, results/, cache/ (default runs/recon-DATA).", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Image side after ADM centre crop (default: the training resolution exported VAEs record, else 256).", rich_help_panel=o.DATA_PANEL, show_default=False)] = None,
    num_images: o.NumImages = None,
    root: o.Root = None,
    seed: o.Seed = 0,
    strict: o.Strict = False,
    lpips: Annotated[bool, typer.Option("--lpips/--no-lpips", help="Measure LPIPS (VGG16; needs its two weight files, see docs/recon.md).", rich_help_panel=LPIPS_PANEL)] = True,
    lpips_vgg_weights: Annotated[Optional[Path], typer.Option(help="Local vgg16-397923af.pth (torchvision's VGG16), or a folder holding it.", rich_help_panel=LPIPS_PANEL, show_default=False)] = None,
    lpips_lin_weights: Annotated[Optional[Path], typer.Option(help="Local vgg.pth (LPIPS v0.1 lin layers), or a folder holding it.", rich_help_panel=LPIPS_PANEL, show_default=False)] = None,
    inception_weights: o.InceptionWeights = None,
    teacher_weights: o.ExtractorWeights = None,
    random_weights: Annotated[bool, typer.Option(help="Build VAE bases given by name, the extractor and LPIPS untrained: a smoke test (warned about).", rich_help_panel=o.VAE_PANEL)] = False,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Row caches (default OUT/cache); share one between runs to reuse them.", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per forward pass and process (default: 32 on GPU, 8 on CPU).", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    workers: o.Workers = None,
    device: o.Device = "auto",
    block_rows: o.BlockRows = 1024,
    quiet: o.Quiet = False,
) -> None:
    """Reconstruction quality of VAEs side by side: PSNR, SSIM, LPIPS and rFID / rFD (docs/recon.md)."""
    from sendvae_cli.eval.requests import parse_request

    requests = [parse_request(v, "--vae") for v in vae or []]
    if not requests:
        raise UserError("--vae: missing; pass the VAE(s) to measure (repeat --vae to compare)")
    o.positive(("--block-rows", block_rows), ("--batch-size", batch_size), ("--num-images", num_images))
    workers = o.workers_or_default(workers)
    o.existing(("--root", root), ("--teacher-weights", teacher_weights))
    o.exclusive_weights("--teacher-weights", teacher_weights, random_weights)
    if not lpips and (lpips_vgg_weights or lpips_lin_weights):
        raise UserError("--lpips-vgg-weights / --lpips-lin-weights: go with LPIPS, not with --no-lpips")
    found = registry()

    from rich.console import Console

    from sendvae_cli.eval.requests import data_name
    from sendvae_cli.eval.recon import ReconOptions, recon_table, run_recon

    options = ReconOptions(data=data, requests=requests, out=out or Path("runs") / f"recon-{data_name(data)}",
                           extractor=extractor, inception_weights=inception_weights, teacher_weights=teacher_weights,
                           lpips=lpips, lpips_vgg_weights=lpips_vgg_weights, lpips_lin_weights=lpips_lin_weights,
                           random_weights=random_weights, root=root, resolution=resolution, num_images=num_images,
                           seed=seed, strict=strict, cache_dir=cache_dir, batch_size=batch_size, workers=workers,
                           device=device, block_rows=block_rows, quiet=quiet)
    summary = run_recon(options, found)
    if summary is not None:
        Console().print(recon_table(summary))
        if not quiet:
            Console(stderr=True).print(f"wrote {options.out / 'recon.json'} and {options.out / 'images'}/",
                                       highlight=False)


@app.command("eval-vae")
@user_errors
def eval_vae(
    vae: Annotated[list[str], typer.Argument(metavar="VAE...", help="[LABEL=]VAE: an exported folder (train-vae's OUT/export or OUT/best), base name, diffusers folder or .pt; several are compared.", show_default=False)],
    eval_data: Annotated[str, typer.Option(help="The attribute dataset of the held-out images (celeba, deepfashion, awa, shapes, or a CSV), as train-vae --eval-data.", rich_help_panel=o.DATA_PANEL, show_default=False)],
    eval_root: Annotated[Optional[Path], typer.Option(help="Where --eval-data lives (a dataset on disk).", rich_help_panel=o.DATA_PANEL, show_default=False)] = None,
    eval_images: Annotated[Optional[int], typer.Option(help="Held-out images (default 1000), as train-vae --eval-images.", rich_help_panel=o.DATA_PANEL, show_default=False)] = None,
    eval_extractor: Annotated[str, typer.Option(help="Feature space of rFD: inception or a teacher name; a train-vae run's is its --eval-extractor, else its teacher.", rich_help_panel=o.EXTRACTOR_PANEL)] = "inception",
    eval_probe_epochs: Annotated[int, typer.Option(help="Most epochs of the probe's training, as train-vae --eval-probe-epochs.", rich_help_panel=PROBE_PANEL)] = 200,
    resolution: Annotated[Optional[int], typer.Option(help="Image side (default: the resolution an exported VAE was trained at, else 256).", rich_help_panel=o.DATA_PANEL, show_default=False)] = None,
    inception_weights: o.InceptionWeights = None,
    teacher_weights: o.ExtractorWeights = None,
    random_weights: Annotated[bool, typer.Option(help="Build VAE bases given by name and the extractor untrained: a smoke test (warned about).", rich_help_panel=o.VAE_PANEL)] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the rows, the held-out set and the protocol to this JSON file.", rich_help_panel=o.RUN_PANEL, show_default=False)] = None,
    device: o.Device = "auto",
    quiet: o.Quiet = False,
) -> None:
    """The evaluation row train-vae --eval-every logs (probe macro-F1, PSNR, SSIM, rFD) for finished VAEs (docs/train-vae.md)."""
    from sendvae_cli.eval.requests import check_labels, parse_request

    from dataclasses import replace

    requests = [replace(parse_request(v, "--vae"), option="VAE") for v in vae]
    check_labels(requests)
    o.positive(("--eval-images", eval_images), ("--eval-probe-epochs", eval_probe_epochs), ("--resolution", resolution))
    o.existing(("--eval-root", eval_root), ("--teacher-weights", teacher_weights))
    o.exclusive_weights("--teacher-weights", teacher_weights, random_weights)
    found = registry()

    from rich.console import Console

    from sendvae_cli.eval.vae_row import EvalOptions, render_rows, run_eval_vae

    options = EvalOptions(data=eval_data, root=str(eval_root) if eval_root else None, images=eval_images,
                          extractor=eval_extractor, probe_epochs=eval_probe_epochs,
                          teacher_weights=str(teacher_weights) if teacher_weights else None,
                          inception_weights=str(inception_weights) if inception_weights else None,
                          random_weights=random_weights)
    summary = run_eval_vae(requests, options, found, resolution=resolution, device=device, json_out=json_out,
                           quiet=quiet)
    if summary is not None:
        Console().print(render_rows(summary))
