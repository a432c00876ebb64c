"""`sendvae plugins` at 80 columns: every name a user types appears whole, with its local-weights state."""

import json

from typer.testing import CliRunner

from sendvae_cli.cli import app
from sendvae_cli.registry import get_registry


def test_names_are_never_cut_at_80_columns(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    result = CliRunner().invoke(app, ["plugins"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    registry = get_registry()
    for kind in ("teacher", "vae_base", "dataset"):
        for name in registry.components[kind]:
            assert any(f"│ {name} " in line for line in lines), f"{name} is cut or wrapped"
    dinov2 = next(line for line in lines if "│ dinov2-b " in line)
    assert "│ no " in dinov2  # no weights in this (empty) cache
    tiny = next(line for line in lines if "│ tiny " in line)
    assert "│ - " in tiny  # random init: nothing to fetch
    listing = json.loads(CliRunner().invoke(app, ["plugins", "--json"]).output)
    assert {t["name"]: t["local_weights"] for t in listing["teachers"]}["dinov2-b"] == "no"
