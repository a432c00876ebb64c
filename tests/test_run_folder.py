"""A start that failed before its first checkpoint leaves the run folder free for the corrected command."""

import json

import pytest

from sendvae_cli.errors import UserError

from sendvae_cli.train.run_config import prepare_run_dir


def test_a_folder_without_a_checkpoint_takes_the_new_configuration(tmp_path, capsys):
    out = tmp_path / "run"
    prepare_run_dir(out, {"lpips_weight": 1.0, "lr": 3e-4}, ignore=[], is_main=True)  # then the start failed
    assert prepare_run_dir(out, {"lpips_weight": 0.0, "lr": 3e-4}, ignore=[], is_main=True) is False
    assert json.loads((out / "config.json").read_text())["lpips_weight"] == 0.0
    said = capsys.readouterr().err
    assert "no step was saved under its earlier configuration (lpips_weight: 1.0 there, 0.0 now)" in said
    assert prepare_run_dir(out, {"lpips_weight": 0.0, "lr": 3e-4}, ignore=[], is_main=True) is True


def test_a_run_recorded_before_a_field_existed_resumes_at_the_value_it_ran_with(tmp_path):
    out = tmp_path / "run"
    prepare_run_dir(out, {"lr": 1e-4}, ignore=[], is_main=True)  # recorded before time_mean existed
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "latest").write_text("step-000010")
    added = {"time_mean": 0.0}
    assert prepare_run_dir(out, {"lr": 1e-4, "time_mean": 0.0}, ignore=[], is_main=True, added=added) is True
    with pytest.raises(UserError, match=r"time_mean: 0.0 there, 0.5 now"):
        prepare_run_dir(out, {"lr": 1e-4, "time_mean": 0.5}, ignore=[], is_main=True, added=added)
