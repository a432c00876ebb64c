"""Trackers: TensorBoard event files and an offline wandb run receive scalars, grids and the configuration."""

import json
import time

import numpy as np
import pytest

from sendvae_cli.errors import UserError
from sendvae_cli.train.trackers import check_names, open_trackers

CONFIG = {"lr": 3e-4, "batch_size": 8, "data": "shapes"}


def record(tracker):
    tracker.log_scalars(1, {"step": 1, "loss": 0.5, "align": -0.25, "done": True, "note": "text"})
    tracker.log_scalars(2, {"step": 2, "loss": 0.4, "align": -0.30})
    tracker.log_image("recon", np.full((8, 16, 3), 200, np.uint8), 2, caption="step 2")
    tracker.close()


def test_tensorboard_writes_scalars_images_and_config(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record(open_trackers(["tensorboard"], tmp_path, CONFIG))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0, "images": 0}).Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) == {"loss", "align"}  # numbers only: no bools, strings or the step
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("loss")] == [(1, 0.5), (2, 0.4)]
    assert tags["images"] == ["recon"] and events.Images("recon")[0].width == 16
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"lr": 0.0003' in text


def test_wandb_offline_run_is_written_locally(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    tracker = open_trackers(["wandb"], tmp_path, CONFIG)
    assert dict(tracker.trackers[0].run.config) == CONFIG  # the resolved configuration
    record(tracker)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    records, = runs[0].glob("run-sendvae-*.wandb")  # what `wandb sync` uploads later
    assert list((runs[0] / "files" / "media" / "images").glob("recon_2_*.png"))
    deadline = time.monotonic() + 60  # wandb's service process may still be flushing on a loaded machine
    while b"align" not in records.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.5)
    content = records.read_bytes()
    assert b"batch_size" in content and b"loss" in content and b"align" in content


def test_unknown_tracker_and_missing_package_are_one_line_errors(tmp_path, monkeypatch):
    assert check_names(["tensorboard,wandb", "tensorboard", "none"]) == ["tensorboard", "wandb"]
    with pytest.raises(UserError, match="--tracker mlflow: unknown tracker; expected one of tensorboard, wandb"):
        check_names(["mlflow"])
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(UserError, match=r"pip install 'sendvae\[tensorboard\]'"):
        open_trackers(["tensorboard"], tmp_path, CONFIG)
    assert json.dumps(CONFIG)  # the configuration is plain JSON for both trackers
