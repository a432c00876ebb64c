import os
import tempfile

# No test may touch the network: hub libraries read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per process: the suite runs two test processes on two cores (pytest -n 2), and the
# commands it starts use DataLoader workers; OpenMP spinning on a busy core slows tiny models 10x.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Folder indexes and statistics caches go to a throw-away folder, not the user's ~/.cache.
os.environ.setdefault("SENDVAE_CACHE", tempfile.mkdtemp(prefix="sendvae-test-cache-"))

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None, check=True, timeout=300, cwd=None):
    """Run `sendvae ARGS` in a fresh process; returns CompletedProcess with text output."""
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("COLUMNS", "200")
    proc = subprocess.run([sys.executable, "-m", "sendvae_cli", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"sendvae {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def invoke(*args):
    """`sendvae ARGS` in this process (no interpreter start-up): quick runs and errors."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from sendvae_cli.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def with_flag(args, flag, value=None):
    """`args` with `flag`'s value replaced by `value` (appended when absent; removed when None)."""
    args = [str(a) for a in args]
    if flag in args:
        i = args.index(flag)
        del args[i : i + 2]
    return args if value is None else [*args, flag, str(value)]


# Outputs stored once, on one machine (tests/fixtures), differ from this machine's in the last
# bits: float32 kernels sum in another order on AVX2, AVX-512 and AMX. A few hundred roundings of
# relative error 6e-8 (float32's half-ulp) stay well under 1e-5 of the output's scale, while a
# real mismatch (a wrong weight, a missing term) moves outputs by far more.
FIXTURE_REL = 1e-5


def assert_matches_fixture(got, want, rel=FIXTURE_REL):
    """`got` equals the stored `want` within `rel` of want's largest magnitude, elementwise."""
    import torch

    got, want = torch.as_tensor(got), torch.as_tensor(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = float(want.abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got.to(want.dtype), want, atol=rel * max(scale, 1e-30), rtol=0)


def one_line_error(proc, *fragments):
    """`proc` failed with exit code 2 and one `error:` line holding every fragment, no traceback."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def fresh_registry():
    from sendvae_cli.registry import reset_registry

    reset_registry()
    yield
    reset_registry()
