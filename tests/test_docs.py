"""The documentation stays true: README commands, generated CLI reference, runnable snippets."""

import re
import subprocess
import sys

import pytest

from conftest import REPO


def bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_readme_opens_with_the_main_job_and_the_tests_and_ci_runs_the_tests():
    readme = (REPO / "README.md").read_text()
    blocks = bash_blocks(readme)
    main_job, listed, tests = (block.strip() for block in blocks[:3])
    assert main_job.endswith("scripts/main_job.sh") and "pip install" in main_job
    assert "sendvae train-vae shapes" in listed  # the commands the main job runs, one per line
    assert tests.endswith("python -m pytest")
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in ci


def test_cli_reference_is_current(tmp_path):
    out = tmp_path / "cli.md"
    subprocess.run([sys.executable, "-m", "typer", "sendvae_cli.cli", "utils", "docs", "--name", "sendvae",
                    "--output", str(out)], check=True, capture_output=True)
    assert out.read_text() == (REPO / "docs" / "cli.md").read_text(), (
        "docs/cli.md is stale: run `typer sendvae_cli.cli utils docs --name sendvae --output docs/cli.md`"
    )


SNIPPETS = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "plugins.md").read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_plugin_guide_snippets_run(index):
    exec(compile(SNIPPETS[index], f"docs/plugins.md snippet {index}", "exec"), {"__name__": f"snippet{index}"})


def test_every_plugin_hook_has_a_snippet():
    text = "\n".join(SNIPPETS)
    for hook in ("register_teachers", "register_datasets", "register_vae_bases", "register_generators"):
        assert f"def {hook}" in text
