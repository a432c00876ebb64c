"""A start that failed before its first checkpoint leaves the run folder free for the corrected command."""

import json

from sendvae_cli.train.run_config import prepare_run_dir


def test_a_folder_without_a_checkpoint_takes_the_new_configuration(tmp_path, capsys):
    out = tmp_path / "run"
    prepare_run_dir(out, {"lpips_weight": 1.0, "lr": 3e-4}, ignore=[], is_main=True)  # then the start failed
    assert prepare_run_dir(out, {"lpips_weight": 0.0, "lr": 3e-4}, ignore=[], is_main=True) is False
    assert json.loads((out / "config.json").read_text())["lpips_weight"] == 0.0
    said = capsys.readouterr().err
    assert "no step was saved under its earlier configuration (lpips_weight: 1.0 there, 0.0 now)" in said
    assert prepare_run_dir(out, {"lpips_weight": 0.0, "lr": 3e-4}, ignore=[], is_main=True) is True
