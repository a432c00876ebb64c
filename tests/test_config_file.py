"""--config FILE: TOML / YAML / JSON values as defaults, flags win, unknown keys named, a run's config.json reused."""

import json
from pathlib import Path
from typing import Annotated, Optional

import pytest
import typer
from typer.testing import CliRunner

from sendvae_cli.cli import options as o
from sendvae_cli.errors import UserError
from sendvae_cli.train.config_file import option_values, read_config_file

app = typer.Typer()
seen = {}


@app.command("train-demo")
def demo(
    data: Annotated[str, typer.Argument()],
    lr: Annotated[float, typer.Option()] = 1e-4,
    steps: Annotated[Optional[int], typer.Option()] = None,
    tracker: Annotated[Optional[list[str]], typer.Option()] = None,
    random_weights: Annotated[bool, typer.Option()] = False,
    out: Annotated[Path, typer.Option()] = Path("runs/x"),
    config: o.ConfigFile = None,
):
    seen.update(data=data, lr=lr, steps=steps, tracker=tracker, random_weights=random_weights, out=out)


@app.command("other")
def other(x: int = 0):  # a second command, so typer keeps sub-command names
    pass


def run(*args):
    seen.clear()
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return result, dict(seen)


def test_toml_and_yaml_values_become_defaults_and_flags_win(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('data = "shapes"\nlr = 3e-4\nsteps = 50\ntracker = ["tensorboard"]\nrandom-weights = true\n')
    result, got = run("train-demo", "--config", toml)
    assert result.exit_code == 0, result.output
    assert got == {"data": "shapes", "lr": 3e-4, "steps": 50, "tracker": ["tensorboard"], "random_weights": True,
                   "out": Path("runs/x")}
    result, got = run("train-demo", "imgs", "--config", toml, "--lr", "1e-3", "--no-random-weights")
    assert got["data"] == "imgs" and got["lr"] == 1e-3 and got["steps"] == 50 and got["random_weights"] is False
    yaml = tmp_path / "c.yaml"
    yaml.write_text("data: shapes\ntrain-demo:\n  steps: 7\n")
    result, got = run("train-demo", "--config", yaml)
    assert result.exit_code == 0 and got["steps"] == 7 and got["lr"] == 1e-4


def test_unknown_keys_and_bad_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('data = "shapes"\nlearning_rate = 3e-4\n')
    result, got = run("train-demo", "--config", bad)
    assert result.exit_code == 2 and not got
    assert "--config" in result.output and "unknown key 'learning_rate'" in result.output
    (tmp_path / "broken.toml").write_text("lr = = 1")
    result, _ = run("train-demo", "--config", tmp_path / "broken.toml")
    assert result.exit_code == 2 and "cannot parse it" in result.output
    with pytest.raises(UserError, match="expected a .toml, .yaml/.yml or .json file"):
        read_config_file(_touch(tmp_path / "c.ini"))
    with pytest.raises(UserError, match=r"unknown key 'stepz' \(did you mean steps\?\)"):
        option_values({"stepz": 1}, "train-demo", {"steps", "lr"}, path="f.toml")


def _touch(path):
    path.write_text("")
    return path


def test_a_runs_config_json_round_trips(tmp_path):
    """A run's config.json records facts beside the options: those are skipped, the options reused."""
    recorded = {"data": "shapes", "lr": 3e-4, "steps": 9, "tracker": [], "random_weights": True, "out": "runs/a",
                "producer": "sendvae 0.1.0", "total_steps": 9, "row_order_sha256": "ab" * 32, "beta1": 0.9}
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    result, got = run("train-demo", "--config", tmp_path / "config.json", "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert got["lr"] == 3e-4 and got["steps"] == 9 and got["random_weights"] is True and got["out"] == tmp_path / "b"
    # A file a user wrote gets no such leniency.
    del recorded["producer"]
    (tmp_path / "mine.json").write_text(json.dumps(recorded))
    result, _ = run("train-demo", "--config", tmp_path / "mine.json")
    assert result.exit_code == 2 and "unknown key" in result.output
