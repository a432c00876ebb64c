"""`sendvae train-vae` end to end on CPU: tiny VAE, random teacher, real processes."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import invoke, one_line_error, run_cli, with_flag

# The tiny preset trains without the GAN; these tests keep it on so that its step is covered too.
TINY = ["shapes", "--teacher", "dinov2-s", "--random-weights", "--vae", "tiny", "--preset", "tiny", "--gan-weight", "0.1",
        "--resolution", "32", "--num-images", "64", "--batch-size", "4", "--steps", "12",
        "--checkpoint-every", "4", "--sample-every", "6", "--log-every", "2", "--workers", "1", "--quiet"]
LOSSES = ("recon", "lpips", "kl", "gan", "align", "total", "disc_loss", "grad_norm")


def losses(run):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], [r[k] for k in LOSSES]) for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "ref"
    run_cli("train-vae", *TINY, "--out", out)
    return out


def test_run_folder_contents(reference):
    assert (reference / "config.json").exists()
    config = json.loads((reference / "config.json").read_text())
    assert config["teacher"] == "dinov2-s" and config["total_steps"] == 12 and config["lr"] == 1e-3
    assert config["grad_clip"] == 0.25 and config["logvar_init"] == -4.0  # the tiny preset's
    assert (reference / "checkpoints" / "latest").read_text() == "step-000012"
    assert sorted(p.name for p in (reference / "samples").iterdir()) == ["recon-000006.png", "recon-000012.png"]
    steps = [s for s, _ in losses(reference)]
    assert steps == [2, 4, 6, 8, 10, 12]
    info = json.loads((reference / "export" / "vae.json").read_text())
    assert info["provenance"]["steps"] == 12 and len(info["latent_std"]) == 8


def test_logvar_init_is_not_applied_to_trained_weights(reference, tmp_path):
    loud = [a for a in TINY if a != "--quiet"]
    result = invoke("train-vae", *loud, "--vae", reference / "export", "--steps", "1", "--out", tmp_path / "more")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--logvar-init -4: not applied" in result.stdout + result.stderr


def test_logvar_init_none_keeps_pytorchs_init_and_a_word_is_an_error():
    from sendvae_cli.cli.vae import parse_logvar_init
    from sendvae_cli.errors import UserError
    from sendvae_cli.train.vae_config import VAETrainConfig

    def chosen(value):
        explicit = {"logvar_init": parse_logvar_init(value), "teacher": "tv-mobilenet-v2"}
        return VAETrainConfig.from_flags("tiny", explicit, data="shapes").logvar_init

    assert (chosen(None), chosen("none"), chosen("None"), chosen("-6")) == (-4.0, None, None, -6.0)
    with pytest.raises(UserError, match=r"^--logvar-init small: expected a number or 'none'$"):
        parse_logvar_init("small")


def test_exported_vae_loads_in_a_fresh_process_and_encodes(reference):
    code = (
        "import sys, torch\n"
        "from sendvae_cli.vae.open import open_vae\n"
        "loaded = open_vae(sys.argv[1])\n"
        "x = torch.zeros(1, 3, 64, 64)\n"
        "z = loaded.model.encode(x).mean\n"
        "print(tuple(z.shape), loaded.latent_std is not None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(reference / "export")], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "(1, 8, 4, 4) True"


def test_kill_9_and_rerun_gives_bit_identical_weights(reference, tmp_path):
    out = tmp_path / "killed"
    latest = out / "checkpoints" / "latest"
    proc = subprocess.Popen([sys.executable, "-m", "sendvae_cli", "train-vae", *TINY, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # somewhere after the first checkpoint, mid-way through the next steps
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = latest.read_text()
    assert killed_at in ("step-000004", "step-000008"), killed_at
    assert not (out / "export").exists()
    run_cli("train-vae", *TINY, "--out", out)
    ref = load_file(str(reference / "export" / "vae.safetensors"))
    new = load_file(str(out / "export" / "vae.safetensors"))
    assert ref.keys() == new.keys()
    assert all(torch.equal(ref[k], new[k]) for k in ref)
    assert same_export(out, reference)
    ref_ck = load_file(str(reference / "checkpoints" / "step-000012" / "weights.safetensors"))
    new_ck = load_file(str(out / "checkpoints" / "step-000012" / "weights.safetensors"))
    assert all(torch.equal(ref_ck[k], new_ck[k]) for k in ref_ck)  # VAE, mapper and discriminator
    assert losses(out) == losses(reference)


def same_export(run, reference) -> bool:
    """Byte for byte: weights, vae.json (with its weights_sha256) and the last checkpoint's weights."""
    files = ["export/vae.safetensors", "export/vae.json", "checkpoints/step-000012/weights.safetensors"]
    return all((run / f).read_bytes() == (reference / f).read_bytes() for f in files)


def test_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_one(reference, tmp_path, monkeypatch):
    from sendvae_cli.train import checkpoint

    out = tmp_path / "full"
    real = checkpoint.save_safetensors
    calls = []

    def full_disk_at_the_second(tensors, path, metadata=None):  # a fault-injecting wrapper
        calls.append(path)
        if len(calls) == 2:
            path.write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, path, metadata)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "save_safetensors", full_disk_at_the_second)
        proc = invoke("train-vae", *TINY, "--out", out)
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert f"{out / 'checkpoints' / 'step-000008.tmp'}: no space left on the device" in lines[0]
    assert "the last checkpoint, step-000004, is kept" in lines[0] and "needs about" in lines[0]
    assert "rerun to continue" in lines[0]
    assert (out / "checkpoints" / "latest").read_text() == "step-000004"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000004"]
    run_cli("train-vae", *TINY, "--out", out)  # space freed: the rerun continues from step 4
    assert same_export(out, reference)


def test_two_identical_runs_export_identical_bytes(reference, tmp_path):
    out = tmp_path / "again"
    run_cli("train-vae", *TINY, "--out", out)
    assert same_export(out, reference)
    info = json.loads((out / "export" / "vae.json").read_text())
    assert info["weights_sha256"] == json.loads((reference / "export" / "vae.json").read_text())["weights_sha256"]


def test_rerun_of_a_finished_run_changes_nothing(reference):
    before = load_file(str(reference / "checkpoints" / "step-000012" / "weights.safetensors"))
    proc = run_cli("train-vae", *[a for a in TINY if a != "--quiet"], "--out", reference)
    assert "already complete" in proc.stderr
    after = load_file(str(reference / "checkpoints" / "step-000012" / "weights.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_other_configuration_on_the_same_run_folder_is_refused(reference):
    before = (reference / "config.json").read_text()
    proc = run_cli("train-vae", *TINY, "--lr", "3e-4", "--out", reference, check=False)
    assert proc.returncode == 2 and "another configuration (lr: 0.001 there, 0.0003 now)" in proc.stderr
    assert (reference / "config.json").read_text() == before


def test_bad_inputs_are_one_line_errors(tmp_path):
    # A VAE checkpoint of the wrong layout.
    wrong = tmp_path / "sit.pt"
    torch.save({"model": {"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}}, wrong)
    proc = invoke("train-vae", *with_flag(TINY, "--vae", wrong), "--out", tmp_path / "a")
    assert proc.returncode == 2 and "sit.pt" in proc.stderr and "Traceback" not in proc.stderr
    assert [l.startswith("error:") for l in proc.stderr.strip().splitlines()][-1:] == [True]
    assert sum(l.startswith("error:") for l in proc.stderr.splitlines()) == 1
    # A teacher feature cache extracted from other images.
    feats = tmp_path / "feats.h5"
    assert invoke("extract", "shapes", "--teacher", "dinov2-s", "--random-weights", "--num-images", "64",
                  "--resolution", "32", "--seed", "7", "--workers", "0", "--quiet", "--out", feats).returncode == 0
    proc = invoke("train-vae", *TINY, "--teacher-features", feats, "--out", tmp_path / "b")
    assert proc.returncode == 2 and "was extracted from other images" in proc.stderr
    # A corrupt checkpoint in a run folder.
    broken = tmp_path / "broken"
    assert invoke("train-vae", *with_flag(with_flag(TINY, "--steps", 4), "--workers", 0), "--out", broken).returncode == 0
    (broken / "checkpoints" / "step-000004" / "state.pt").write_bytes(b"not a checkpoint")
    proc = invoke("train-vae", *with_flag(TINY, "--steps", 8), "--out", broken)
    assert proc.returncode == 2 and "step-000004 is damaged" in proc.stderr
    # Unknown VAE base.
    proc = invoke("train-vae", *with_flag(TINY, "--vae", "va-vea"), "--out", tmp_path / "c")
    assert proc.returncode == 2 and "Did you mean 'va-vae'" in proc.stderr


def test_teacher_features_from_the_same_images_train(tmp_path, monkeypatch):
    feats = tmp_path / "feats.h5"
    run_cli("extract", "shapes", "--teacher", "dinov2-s", "--random-weights", "--num-images", "64",
            "--resolution", "32", "--workers", "0", "--quiet", "--out", feats)
    out = tmp_path / "cached"
    run_cli("train-vae", *TINY, "--steps", "2", "--teacher-features", feats, "--out", out)
    assert (out / "export" / "vae.safetensors").exists()

    # Small caches are read into memory once, big ones row by row: the same tokens either way.
    import h5py

    from sendvae_cli.caches import features
    from sendvae_cli.data.shapes import ShapesSource

    source = ShapesSource(64, 32)
    rows = [5, 0, 63, 5, 17]
    small = features.TeacherTokens(feats, source)
    assert not isinstance(small.tokens, h5py.Dataset)
    with monkeypatch.context() as patch:
        patch.setattr(features, "IN_MEMORY_BYTES", 0)
        big = features.TeacherTokens(feats, source)
    assert isinstance(big.tokens, h5py.Dataset)
    assert torch.equal(small.rows(rows), big.rows(rows))
    with h5py.File(feats, "r") as f:
        assert torch.equal(small.rows(rows), torch.from_numpy(f["tokens"][()][rows].astype("float32")))


def test_nan_loss_stops_with_a_clear_message_and_writes_no_checkpoint(tmp_path):
    from sendvae_cli.vae.autoencoder import AutoencoderKL
    from sendvae_cli.vae.export import export_vae

    vae = AutoencoderKL("tiny-f16d8")
    with torch.no_grad():
        vae.decoder.conv_out.weight.fill_(float("nan"))
    export_vae(vae, tmp_path / "poisoned")
    out = tmp_path / "nan"
    proc = run_cli("train-vae", *with_flag(TINY, "--vae", tmp_path / "poisoned"), "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "loss is not finite at step 0" in proc.stderr and "last good checkpoint is none" in proc.stderr
    assert not (out / "checkpoints").exists()


def test_torchrun_two_processes_train_like_one_with_accumulation(tmp_path):
    """DDP (2 ranks x micro-batch 2) and gradient accumulation (1 process x 2 x 2) see the same global batches."""
    # the last of the 3 steps trains the decoder alone: DDP then meets parameters without a gradient
    common = [a for a in TINY] + ["--steps", "3", "--micro-batch", "2", "--checkpoint-every", "3", "--decoder-only", "0.34"]
    single = tmp_path / "single"
    run_cli("train-vae", *common, "--out", single)
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sendvae_cli", "train-vae", *common, "--out", str(ddp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((ddp / "config.json").read_text())["world_size"] == 2
    assert json.loads((single / "config.json").read_text())["accumulation"] == 2
    a = load_file(str(single / "export" / "vae.safetensors"))
    b = load_file(str(ddp / "export" / "vae.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-3) for k in a)
    assert any(not torch.equal(a[k], load_file(str(single / "checkpoints" / "step-000003" / "weights.safetensors"))["vae." + k])
               for k in a) is False  # the export is the final VAE


def test_decoder_only_phase_leaves_the_encoder_and_the_latent_as_they_were(tmp_path):
    """--decoder-only 0.5 of 6 steps: steps 3-5 train the decoder alone, so the encoder, its
    posterior and the mapper at step 6 are those of step 3, bit for bit, while the decoder moved;
    its learning rate falls from --lr to lr / 3."""
    from sendvae_cli.train.vae_config import PRESETS, VAETrainConfig
    from sendvae_cli.train.vae_trainer import VAETrainer

    out = tmp_path / "run"
    args = [*TINY, "--steps", "6", "--checkpoint-every", "1", "--keep", "6", "--decoder-only", "0.5"]
    run_cli("train-vae", *args, "--out", out)
    before, after = (load_file(str(out / "checkpoints" / f"step-00000{s}" / "weights.safetensors")) for s in (3, 6))
    fixed = [k for k in before if k.startswith(("vae.encoder.", "vae.quant_conv.", "mapper."))]
    moving = [k for k in before if k.startswith(("vae.decoder.", "vae.post_quant_conv."))]
    assert fixed and moving and len(fixed) + len(moving) == len([k for k in before if not k.startswith("discriminator.")])
    assert all(torch.equal(before[k], after[k]) for k in fixed)
    assert not any(torch.equal(before[k], after[k]) for k in moving if k.endswith(".weight"))
    assert json.loads((out / "config.json").read_text())["decoder_only"] == 0.5
    optimizer = torch.load(out / "checkpoints" / "step-000006" / "state.pt", weights_only=True)["optimizer"]
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(1e-3 / 3)

    # Resumed inside the phase (from step 4, as after a crash), the run ends with the same bytes.
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "export")
    for s in (5, 6):
        shutil.rmtree(resumed / "checkpoints" / f"step-00000{s}")
    (resumed / "checkpoints" / "latest").write_text("step-000004")
    run_cli("train-vae", *args, "--out", resumed)
    for f in ("export/vae.safetensors", "export/vae.json", "checkpoints/step-000006/weights.safetensors"):
        assert (resumed / f).read_bytes() == (out / f).read_bytes(), f
    assert losses(resumed) == losses(out)

    assert VAETrainConfig.from_flags("tiny", {}, data="shapes").decoder_phase(1200) == 1200  # none by default
    cfg = VAETrainConfig.from_flags("tiny", {"decoder_only": 0.2}, data="shapes")
    assert cfg.decoder_phase(1500) == 1200 and cfg.decoder_phase(4) == 4
    counted = VAETrainConfig.from_flags("tiny", {"decoder_only": 200.0}, data="shapes")  # from 1: a number of steps
    assert counted.decoder_phase(1400) == 1200 and counted.decoder_phase(201) == 1
    trainer = VAETrainer(cfg, None, tmp_path)
    trainer.decoder_from = 1200
    rates = [trainer.learning_rate(SimpleNamespace(step=s, total_steps=1500)) for s in (0, 1199, 1200, 1350, 1499)]
    assert rates == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3 * 150 / 300, 1e-3 / 300])
    assert PRESETS["paper"]["decoder_only"] == PRESETS["tiny"]["decoder_only"] == 0.0
    for value, said in (("1.5", "--decoder-only 1.5: expected a share of the steps (at least 0, below 1) or a whole"),
                        ("-0.1", "--decoder-only -0.1: expected a share"),
                        ("6", "--decoder-only 6: leaves none of the 6 --steps to train the encoder")):
        proc = run_cli("train-vae", *TINY, "--steps", "6", "--decoder-only", value, "--out", tmp_path / "bad", check=False)
        one_line_error(proc, said)
        assert not (tmp_path / "bad").exists()


def test_mapper_width_flags_shape_the_mapper_and_bad_widths_are_one_line(tmp_path):
    from safetensors import safe_open

    out = tmp_path / "narrow"
    run_cli("train-vae", *TINY, "--steps", "1", "--checkpoint-every", "1", "--mapper-width", "128",
            "--mapper-hidden", "96", "--out", out)
    config = json.loads((out / "config.json").read_text())
    assert (config["mapper_width"], config["mapper_hidden"]) == (128, 96)
    with safe_open(str(out / "checkpoints" / "step-000001" / "weights.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if "mapper." in k}
    assert [s for k, s in shapes.items() if k.endswith("patch_embed.weight")][0][0] == 128
    assert [s for k, s in shapes.items() if k.endswith("projector.0.weight")][0] == (96, 128)
    proc = run_cli("train-vae", *TINY, "--mapper-width", "100", "--out", tmp_path / "bad", check=False)
    assert proc.returncode == 2 and "--mapper-width 100: expected a multiple of 64" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "bad").exists()


def test_before_align_start_only_the_mapper_learns_from_the_teacher(tmp_path):
    """--align-start N: until step N the mapper trains on the detached latent, so the VAE is
    exactly the VAE of --align-weight 0 (gradient clipping off: the mapper's gradients would
    otherwise share the clip's norm), while the mapper has learned; from step 0 it is not."""
    short = [*TINY, "--steps", "3", "--checkpoint-every", "3", "--gan-weight", "0", "--grad-clip", "0"]
    runs = {name: tmp_path / name for name in ("unaligned", "later", "aligned")}
    run_cli("train-vae", *short, "--align-weight", "0", "--out", runs["unaligned"])
    run_cli("train-vae", *short, "--align-start", "100", "--out", runs["later"])
    run_cli("train-vae", *short, "--align-start", "0", "--out", runs["aligned"])
    final = {name: load_file(str(out / "checkpoints" / "step-000003" / "weights.safetensors"))
             for name, out in runs.items()}
    vae_keys = [k for k in final["unaligned"] if k.startswith("vae.")]
    mapper_keys = [k for k in final["unaligned"] if k.startswith("mapper.")]
    assert vae_keys and mapper_keys
    assert all(torch.equal(final["later"][k], final["unaligned"][k]) for k in vae_keys)
    assert not all(torch.equal(final["later"][k], final["unaligned"][k]) for k in mapper_keys)
    assert not all(torch.equal(final["aligned"][k], final["unaligned"][k]) for k in vae_keys)
    assert json.loads((runs["later"] / "config.json").read_text())["align_start"] == 100
    proc = run_cli("train-vae", *short, "--align-start", "-1", "--out", tmp_path / "bad", check=False)
    assert proc.returncode == 2 and "--align-start -1: expected a step >= 0" in proc.stderr
