import json
import subprocess
import sys

from typer.testing import CliRunner

from sendvae_cli import __version__
from sendvae_cli.cli import app

HEAVY = ("torch", "timm", "open_clip", "transformers")


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"sendvae {__version__}"


def test_help_lists_only_working_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("extract", "plugins"):
        assert command in result.output


def test_help_and_plugins_import_no_heavy_library():
    code = (
        "import sys, json\n"
        "from typer.testing import CliRunner\n"
        "from sendvae_cli.cli import app\n"
        "r1 = CliRunner().invoke(app, ['--help'])\n"
        "r2 = CliRunner().invoke(app, ['plugins'])\n"
        "r3 = CliRunner().invoke(app, ['extract', '--help'])\n"
        f"print(json.dumps([r1.exit_code, r2.exit_code, r3.exit_code, [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    codes_and_heavy = json.loads(out.strip().splitlines()[-1])
    assert codes_and_heavy == [0, 0, 0, []]


def test_plugins_lists_builtin_teachers_across_families():
    result = CliRunner().invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    builtin = [t for t in listing["teachers"] if t["plugin"] == "sendvae.teachers"]
    assert len(builtin) >= 14
    assert {t["family"] for t in builtin} >= {"DINOv2", "DINOv3", "CLIP", "SigLIP", "MAE", "I-JEPA"}
    by_name = {t["name"]: t for t in builtin}
    assert by_name["dinov2-b"]["width"] == 768 and by_name["dinov2-b"]["patch_size"] == 14
    assert by_name["dinov2-b"]["licence"] and by_name["dinov2-b"]["source"]
    assert any(d["name"] == "shapes" for d in listing["datasets"])


def test_plugins_table_renders():
    result = CliRunner().invoke(app, ["plugins"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "dinov2-b" in result.output and "sendvae.teachers" in result.output


def test_unknown_teacher_is_one_line_with_closest_match(tmp_path):
    result = CliRunner().invoke(app, ["extract", "shapes", "--teacher", "dinov2-bb", "--out", str(tmp_path / "f.h5")],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1, result.output
    assert "unknown teacher 'dinov2-bb'" in lines[0] and "Did you mean 'dinov2-b'" in lines[0]
    assert not (tmp_path / "f.h5").exists()


def test_bad_options_are_one_line_errors(tmp_path):
    runner = CliRunner()
    cases = [
        (["extract", "shapes", "--resolution", "100"], "--resolution 100"),
        (["extract", str(tmp_path / "missing"), "--teacher", "dinov2-s"], "no such folder"),
        (["extract", "shapes", "--batch-size", "0"], "--batch-size 0"),
        (["extract", "shapes", "--teacher-weights", str(tmp_path / "w.safetensors")], "no such file"),
    ]
    for args, expected in cases:
        result = runner.invoke(app, args + ["--out", str(tmp_path / "f.h5")], env={"COLUMNS": "300"})
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output and "Traceback" not in result.output
