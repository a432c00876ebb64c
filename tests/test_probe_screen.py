"""What `sendvae probe` prints besides its table: per-attribute F1 (best and worst) and the epoch-cap warning."""

from rich.console import Console

from conftest import invoke
from sendvae_cli.eval.probe import epoch_cap_warnings, hit_epoch_cap, render_attribute_f1


def record(label, epochs_run, best_epoch, f1):
    return {"label": label, "epochs_run": epochs_run, "best_epoch": best_epoch,
            "settings": {"epochs": 20, "patience": 10}, "per_attribute_f1": f1}


def test_epoch_cap_and_attribute_table():
    capped = record("a", 20, 19, {f"attr{i}": i / 10 for i in range(8)})
    early = record("b", 15, 5, {"red": 0.9, "blue": 0.1})
    assert hit_epoch_cap(capped) and not hit_epoch_cap(early)
    warnings = epoch_cap_warnings({"results": [capped, early]})
    assert len(warnings) == 1 and warnings[0].startswith("a: the probe stopped at the epoch cap (20 epochs, best epoch 19)")
    assert "--epochs" in warnings[0]
    console = Console(width=200, record=True)
    console.print(render_attribute_f1({"results": [capped, early]}, shown=3))
    text = console.export_text()
    assert "attr7 0.70, attr6 0.60, attr5 0.50" in text and "attr0 0.00, attr1 0.10, attr2 0.20" in text
    assert "red 0.90, blue 0.10" in text


def test_probe_prints_per_attribute_f1_and_warns_at_the_cap(tmp_path):
    proc = invoke("probe", "shapes", "--num-images", "300", "--resolution", "32", "--workers", "0",
                  "--epochs", "1", "--vae", "tiny", "--random-weights", "--out", tmp_path / "p", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "Per-attribute F1 on test" in proc.stdout
    assert "stopped at the epoch cap (1 epoch," in proc.stderr
