"""The GPU acceptance run: every GPU promise of the project measured by one command, each step
under its own time cap, the report rewritten after every row.

    pip install -e ".[cuda]" && python benchmarks/gpu_acceptance.py --out gpu-acceptance [--repae PATH/TO/REPA-E]
    python benchmarks/gpu_acceptance.py --smoke --out /tmp/smoke   # the same steps on CPU at toy sizes

Steps, in this order (--only picks some by name):
  tests      `pytest -m gpu -n 0`: bf16 extract, train-vae and probe on CUDA, xformers vs SDPA forward and
             backward at SiT-XL width in bf16
  train-sit  SiT-XL/1 and SiT-XL/2 on 32x16x16 latents with REPA to DINOv2-B's 768, bf16, the largest batch
             <= 256 that fits (train_sit_step.py): img/s, TFLOP/s, MFU against the card's bf16 dense peak,
             whole step vs bare forward+backward+AdamW, eager vs torch.compile, xformers vs SDPA, peak
             memory; with --repae, REPA-E's own step on the same batch
  train-vae  f16d32 at 256 px with DINOv2-B, bf16, batch 32 (train_vae_step.py): img/s, MFU, peak memory
  sample     SiT-XL/1, SDE 250 steps + CFG on [0, 0.75], batch 256 (sample_throughput.py): one batch at 25
             steps, projected to 250: img/s and hours for 50,000; with --repae, REPA-E's loop alike
  fid        5,000 images through `fid` with random-weight Inception and dinov2-l (fid_throughput.py):
             projected seconds for 50,000
  extract    `extract` with dinov2-b at 256 px (extract_throughput.py): img/s, and against the bare forward
  ddp        `torchrun` with one process: train-sit for a few steps on CUDA, and the SiT objective wrapped in
             DistributedDataParallel over NCCL, checked against the plain step

Every command runs in its own process group under a time cap (the step's, and never past --budget-s
in all), so a hang or crash costs its own rows only. OUT gets gpu-report.json (every row: figure,
goal, ok / short / failed / skipped, and the device, driver, torch and xformers versions),
gpu-report.md (the table), logs/ (each command's output) and the benchmarks' own JSON files.
--smoke runs the same steps on CPU at toy sizes in under two minutes (a test runs it), so the script
cannot rot between GPU loans; toy figures say nothing about the goals.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))
from cpu_peak import cpu_name  # noqa: E402  (a sibling script's helper)
STEPS = ("tests", "train-sit", "train-vae", "sample", "fid", "extract", "ddp")
# The commands of each step (their caps add up to the step's); `-repae` ones only with --repae.
COMMANDS = {"tests": ("tests",), "train-sit": ("train-sit-xl1", "train-sit-repae", "train-sit-xl2"),
            "train-vae": ("train-vae",), "sample": ("sample", "sample-repae"), "fid": ("fid",),
            "extract": ("extract",), "ddp": ("ddp-step", "ddp-cache", "ddp-train-sit")}
PARITY_TEST = "test_sit_xl_block_forward_and_backward_agree_across_backends"

# bf16 dense tensor-core peaks (TFLOP/s, no sparsity), matched in this order against the card's name.
BF16_PEAKS = (("H100 PCIE", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
              ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0))


@dataclass(frozen=True)
class Sizes:
    """What each step runs: the GPU run's sizes, or the smoke run's toy ones."""

    caps: dict[str, float]              # seconds per command (a step's cap is the sum of its commands')
    sit: list[str]                      # train-sit models (the first one gets the compile and REPA-E rows)
    sit_args: list[str]
    sit_batch: int
    vae_args: list[str]
    sample_args: list[str]
    fid_args: list[str]
    fid_extractors: tuple[str, str]
    extract_args: list[str]
    ddp_args: list[str]
    budget_s: float


GPU = Sizes(
    # Upper bounds from estimates of an H100's speed (no GPU has run them yet). They add up to more
    # than the budget: a step that runs long leaves the last steps less, never the run more.
    caps={"tests": 150, "train-sit-xl1": 120, "train-sit-repae": 60, "train-sit-xl2": 45, "train-vae": 45,
          "sample": 45, "sample-repae": 45, "fid": 75, "extract": 30, "ddp-step": 15, "ddp-cache": 15,
          "ddp-train-sit": 30},
    sit=["SiT-XL/1", "SiT-XL/2"],
    sit_args=["--latent", "32x16x16", "--teacher-width", "768", "--repeats", "5", "--device", "cuda"],
    sit_batch=256,
    vae_args=["--vae", "f16d32", "--teacher", "dinov2-b", "--resolution", "256", "--batch", "32", "--repeats", "3",
              "--no-parts", "--device", "cuda", "--precision", "bf16"],
    sample_args=["--gpu", "--device", "cuda", "--images", "256", "--batch-size", "256", "--steps", "25",
                 "--repae-images", "256"],
    fid_args=["--images", "5000", "--resolution", "256", "--device", "cuda", "--teacher-images", "5000",
              "--no-png", "--workers", "8"],
    fid_extractors=("inception", "dinov2-l"),
    extract_args=["--teacher", "dinov2-b", "--resolution", "256", "--images", "2048", "--batch-size", "256",
                  "--workers", "8", "--repeats", "1", "--device", "cuda"],
    ddp_args=["--resolution", "64", "--num-images", "64"],
    budget_s=480,
)
SMOKE = Sizes(
    caps={"tests": 40, "train-sit-xl1": 30, "train-sit-repae": 0, "train-sit-xl2": 30, "train-vae": 30,
          "sample": 30, "sample-repae": 0, "fid": 50, "extract": 30, "ddp-step": 20, "ddp-cache": 20,
          "ddp-train-sit": 40},
    sit=["SiT-tiny/1", "SiT-tiny/2"],
    sit_args=["--latent", "4x8x8", "--teacher-width", "16", "--projector-width", "32", "--num-classes", "5",
              "--repeats", "1", "--device", "cpu"],
    sit_batch=4,
    vae_args=["--vae", "tiny-f4d4", "--teacher", "tv-mobilenet-v2", "--resolution", "64", "--batch", "2",
              "--repeats", "1", "--no-lpips", "--mapper-width", "32", "--mapper-hidden", "64", "--no-parts",
              "--device", "cpu"],
    sample_args=["--gpu", "--device", "cpu", "--model", "SiT-tiny/1", "--vae", "tiny-f16d8", "--resolution", "64",
                 "--images", "8", "--batch-size", "8", "--steps", "5"],
    fid_args=["--images", "10", "--resolution", "64", "--device", "cpu", "--teacher-images", "10", "--no-png",
              "--batch-size", "10", "--workers", "0", "--pr-images", "100"],
    fid_extractors=("inception", "dinov2-s"),
    extract_args=["--teacher", "dinov2-s", "--resolution", "64", "--images", "4", "--batch-size", "4",
                  "--workers", "0", "--repeats", "1", "--device", "cpu"],
    ddp_args=["--resolution", "32", "--num-images", "16"],
    budget_s=240,
)


# --------------------------------------------------------------------------------------------
#                                     Rows and the report
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    step: str
    id: str
    what: str
    goal: str = "—"
    status: str = "pending"        # ok / short / failed / skipped (pending until its step reaches it)
    figure: str = ""
    value: float | None = None
    note: str = ""


@dataclass
class Report:
    path: Path
    mode: str
    device: dict[str, Any]
    budget_s: float
    command: list[str]
    rows: list[Row] = field(default_factory=list)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def row(self, id: str) -> Row:
        return next(r for r in self.rows if r.id == id)

    def set(self, id: str, status: str, figure: str = "", value: float | None = None, note: str = "") -> None:
        r = self.row(id)
        r.status, r.figure, r.value, r.note = status, figure, value, note
        mark = {"ok": "ok", "short": "SHORT", "failed": "FAILED", "skipped": "skipped"}[status]
        print(f"  {mark:<8} {r.id:<32} {figure}{'  (' + note + ')' if note else ''}", flush=True)
        self.write()

    def judge(self, id: str, value: float | None, figure: str, note: str = "", goal: tuple[str, float] | None = None):
        """ok when the figure meets the row's goal (or it has none), short when not."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            self.set(id, "failed", figure or "no figure", None, note)
            return
        met = goal is None or (value >= goal[1] if goal[0] == ">=" else value < goal[1])
        self.set(id, "ok" if met else "short", figure, value, note)

    def pending(self, step: str) -> list[Row]:
        return [r for r in self.rows if r.step == step and r.status == "pending"]

    def close_step(self, step: str, status: str, note: str) -> None:
        for r in self.pending(step):
            self.set(r.id, status, r.figure, None, note)

    def write(self) -> None:
        data = {"format": "sendvae-gpu-acceptance/1", "mode": self.mode, "device": self.device,
                "budget_s": self.budget_s, "seconds": round(time.time() - self.started, 1),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                "command": self.command, "rows": [asdict(r) for r in self.rows], "steps": self.steps}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.path)

    def table(self) -> str:
        lines = ["| step | row | figure | goal | status | note |", "|---|---|---|---|---|---|"]
        for r in self.rows:
            cells = [r.step, r.what, r.figure, r.goal, r.status, r.note]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        return "\n".join(lines)


def declare_rows(report: Report, sizes: Sizes) -> None:
    """Every row the run reports, in order, before anything runs: a step that dies leaves its rows
    marked failed, never missing."""
    rows = [
        ("tests", "tests.gpu", "GPU-marked tests (pytest -m gpu)", "all pass"),
        ("tests", "tests.attention-parity", "xformers vs SDPA forward + backward, SiT-XL width, bf16", "agree (test)"),
        ("train-sit", "train-sit.xl1.throughput", f"{sizes.sit[0]} whole step: img/s, TFLOP/s", "—"),
        ("train-sit", "train-sit.xl1.mfu", f"{sizes.sit[0]} whole step MFU (bf16 dense peak)", "≥ 45%"),
        ("train-sit", "train-sit.xl1.whole-vs-bare", f"{sizes.sit[0]} whole vs bare step (speed ratio)", "≥ 0.9"),
        ("train-sit", "train-sit.xl1.xformers-vs-sdpa", f"{sizes.sit[0]} whole step, xformers vs SDPA (speed ratio)", "≥ 1.0"),
        ("train-sit", "train-sit.xl1.memory", f"{sizes.sit[0]} whole step peak memory", "fits"),
        ("train-sit", "train-sit.xl1.compile", f"{sizes.sit[0]} whole step, --compile vs eager (speed ratio)", "≥ 1.0"),
        ("train-sit", "train-sit.xl1.vs-repae", f"{sizes.sit[0]} whole step vs REPA-E's step (speed ratio)", "≥ 1.3"),
        ("train-sit", "train-sit.xl2.throughput", f"{sizes.sit[1]} whole step: img/s, TFLOP/s", "—"),
        ("train-sit", "train-sit.xl2.mfu", f"{sizes.sit[1]} whole step MFU (bf16 dense peak)", "—"),
        ("train-sit", "train-sit.xl2.whole-vs-bare", f"{sizes.sit[1]} whole vs bare step (speed ratio)", "≥ 0.9"),
        ("train-sit", "train-sit.xl2.memory", f"{sizes.sit[1]} whole step peak memory", "fits"),
        ("train-vae", "train-vae.throughput", "train-vae step: img/s", "—"),
        ("train-vae", "train-vae.mfu", "train-vae step MFU (bf16 dense peak)", "—"),
        ("train-vae", "train-vae.memory", "train-vae step peak memory", "fits"),
        ("sample", "sample.throughput", "sample SDE-250 + CFG interval: img/s (projected)", "—"),
        ("sample", "sample.vs-repae", "sample vs REPA-E's loop (img/s ratio)", "≥ 1.3"),
        ("fid", "fid.inception", "fid, Inception: seconds for 50,000 (projected)", "< 120 s"),
        ("fid", "fid.teacher", f"fid, {sizes.fid_extractors[1]}: seconds for 50,000 (projected)", "< 120 s"),
        ("extract", "extract.throughput", "extract: img/s (vs the bare teacher forward)", "ratio ≥ 0.9"),
        ("ddp", "ddp.torchrun", "train-sit under torchrun, 1 process", "runs"),
        ("ddp", "ddp.ddp-step", "SiT objective in DDP, 1 process: gradients vs the plain step", "equal"),
    ]
    report.rows = [Row(step, id, what, goal) for step, id, what, goal in rows]


# --------------------------------------------------------------------------------------------
#                                   Running commands under caps
# --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    rc: int | None           # None: killed at its time cap
    seconds: float
    log: Path

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def reason(self) -> str:
        """Why it failed, in a line: the cap, or the log's `error:` line or last line."""
        if self.rc is None:
            return f"timed out after {self.seconds:.0f} s (log {self.log.name})"
        lines = [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:") or re.match(r"^[\w.]+(Error|Exception)\b", line)]
        last = (errors or lines or ["no output"])[-1]
        return f"exit {self.rc}: {last[:200]} (log {self.log.name})"


class Runner:
    def __init__(self, out: Path, budget_s: float, env: dict[str, str]):
        self.out, self.logs = out, out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + budget_s
        self.env = env

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: list[str], cap_s: float) -> Outcome:
        """`cmd` in its own process group, output to logs/NAME.log, killed (the whole group) at
        min(cap_s, what is left of the budget)."""
        log = self.logs / f"{name}.log"
        limit = max(0.0, min(cap_s, self.left()))
        start = time.monotonic()
        with log.open("w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc: int | None = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                stop_group(proc)
                rc = None
            except BaseException:  # Ctrl-C or SIGTERM here: the command's own group would outlive us
                stop_group(proc)
                raise
        return Outcome(rc, time.monotonic() - start, log)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the command's process group (torchrun, DataLoader workers, pytest's children), then
    SIGKILL to whatever is left after a few seconds."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
#                                          The device
# --------------------------------------------------------------------------------------------

PROBE = r"""
import json, importlib.util, platform, torch
from sendvae_cli.generators.attention import xformers_available
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(), "torch_threads": torch.get_num_threads()}
if info["cuda_available"]:
    p = torch.cuda.get_device_properties(0)
    info.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                gpus=torch.cuda.device_count())
info["xformers"] = None
if xformers_available():
    import xformers
    info["xformers"] = xformers.__version__
info["dictdot"] = importlib.util.find_spec("dictdot") is not None
print(json.dumps(info))
"""


def describe_device(env: dict[str, str]) -> dict[str, Any]:
    """The card, its driver, torch, CUDA and xformers, from a short child process (so that this
    process never holds a CUDA context the benchmarks' memory would miss), and the CPU."""
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=120)
    if proc.returncode != 0:
        sys.exit(f"error: cannot import torch and sendvae_cli here: {proc.stderr.strip().splitlines()[-1:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info["driver"] = None
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60)
        if smi.returncode == 0 and smi.stdout.strip():
            info["driver"] = smi.stdout.strip().splitlines()[0]
    info["cpu"] = cpu_name()
    info["cpu_count"] = os.cpu_count()
    return info


def bf16_peak(name: str | None) -> float | None:
    upper = (name or "").upper()
    return next((peak for key, peak in BF16_PEAKS if key in upper), None)


def card_slug(name: str | None) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3' (for benchmarks/results/gpu-<card>.json)."""
    words = re.sub(r"[^a-z0-9]+", "-", (name or "cpu").lower()).strip("-").split("-")
    return "-".join(w for w in words if w not in ("nvidia", "tesla")) or "gpu"


# --------------------------------------------------------------------------------------------
#                                           The steps
# --------------------------------------------------------------------------------------------


class Acceptance:
    def __init__(self, args, sizes: Sizes, report: Report, runner: Runner):
        self.args, self.sizes, self.report, self.runner = args, sizes, report, runner
        self.smoke = args.smoke
        self.device = report.device
        self.xformers = bool(self.device.get("xformers"))
        self.peak = args.peak_tflops or (None if self.smoke else bf16_peak(self.device.get("name")))
        self.step_deadline = 0.0

    # -- helpers -----------------------------------------------------------------------------
    def cap(self, *commands: str) -> float:
        """A command's cap (or several commands' run as one): its own, within what is left of its step."""
        return max(0.0, min(sum(self.sizes.caps[c] for c in commands), self.step_deadline - time.monotonic()))

    def bench(self, name: str, script: str, args: list[str], cap_s: float) -> tuple[Outcome, dict | None]:
        out = self.runner.out / f"{name}.json"
        out.unlink(missing_ok=True)
        outcome = self.runner.run(name, [sys.executable, str(BENCH / script), *args, "--json", str(out)], cap_s)
        return outcome, read_json(out)

    def peak_args(self) -> list[str]:
        return ["--peak-tflops", str(self.peak)] if self.peak else []

    def mfu(self, id: str, figures: dict, goal: tuple[str, float] | None, note: str = "") -> None:
        if self.smoke:
            self.report.judge(id, figures["mfu"], f"{100 * figures['mfu']:.1f}% of this CPU's fp32 estimate",
                              note, goal)
        elif self.peak is None:
            self.report.set(id, "skipped", f"{figures['achieved_tflops']:.0f} TFLOP/s", None,
                            f"no bf16 peak known for {self.device.get('name')}: pass --peak-tflops")
        else:
            self.report.judge(id, figures["mfu"], f"{100 * figures['mfu']:.1f}% ({figures['achieved_tflops']:.0f} "
                              f"of {self.peak:.0f} TFLOP/s)", note, goal)

    def memory(self, id: str, gib: float | None) -> None:
        if gib is None:
            self.report.set(id, "skipped", "", None, "peak memory is measured on CUDA only")
        else:
            total = self.device.get("memory_gib") or float("nan")
            self.report.judge(id, gib, f"{gib:.1f} GiB of {total:.0f}")

    # -- tests -------------------------------------------------------------------------------
    def tests(self) -> None:
        r = self.report
        if self.smoke:
            outcome = self.runner.run("tests", [sys.executable, "-m", "pytest", "-m", "gpu", "-n", "0", "-q",
                                                "-p", "no:cacheprovider", "--collect-only"], self.cap("tests"))
            text = outcome.log.read_text(errors="replace")
            found = re.search(r"(\d+)(?:/\d+)? tests? (?:collected|selected)", text)
            if not outcome.ok or not found:
                r.close_step("tests", "failed", "collecting the GPU tests: " + outcome.reason())
                return
            parity = PARITY_TEST in text
            r.set("tests.gpu", "skipped", f"{found.group(1)} collected", None, "no CUDA device: collected, not run")
            r.set("tests.attention-parity", "skipped" if parity else "failed", "collected" if parity else "",
                  None, "no CUDA device" if parity else f"{PARITY_TEST} not found")
            return
        # A test module that cannot import here (a missing test-only library) costs its own tests only.
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-n", "0", "-v", "-p", "no:cacheprovider",
               "--continue-on-collection-errors"]
        if not self.xformers:
            cmd.append("--ignore=tests/test_gpu_attention.py")
        outcome = self.runner.run("tests", cmd, self.cap("tests"))
        # pytest -v prints each test's outcome as it ends: a run killed at its cap still says which passed.
        cases = pytest_outcomes(outcome.log.read_text(errors="replace"))
        if not cases:
            r.close_step("tests", "failed", outcome.reason())
            return
        failed = [name for name, result in cases.items() if result == "failed"]
        passed = sum(1 for result in cases.values() if result == "passed")
        note = ("failed: " + ", ".join(failed)) if failed else ""
        if not outcome.ok and not failed:
            note = outcome.reason()
        r.set("tests.gpu", "ok" if not failed and outcome.ok else "failed", f"{passed} of {len(cases)} passed",
              passed, note)
        if not self.xformers:
            r.set("tests.attention-parity", "skipped", "", None, "xformers does not import here: "
                  "pip install -e '.[cuda]'")
        elif PARITY_TEST in cases:
            result = cases[PARITY_TEST]
            r.set("tests.attention-parity", "ok" if result == "passed" else "failed", result)
        else:
            r.set("tests.attention-parity", "failed", "", None, "the parity test did not run: " + outcome.reason())

    # -- train-sit ---------------------------------------------------------------------------
    def train_sit(self) -> None:
        r, s = self.report, self.sizes
        first = ["--model", s.sit[0], *s.sit_args, "--batch", str(s.sit_batch), "--fit-batch", "--no-data",
                 "--compare-attention", *self.peak_args()]
        if not self.smoke:
            first.append("--compile-variant")  # CPU inductor builds take minutes: compile is timed on CUDA only
        outcome, res = self.bench("train-sit-xl1", "train_sit_step.py", first, self.cap("train-sit-xl1"))
        batch = None
        if res is None or "whole" not in res:
            for id in ("throughput", "mfu", "whole-vs-bare", "xformers-vs-sdpa", "memory", "compile"):
                r.set(f"train-sit.xl1.{id}", "failed", "", None, outcome.reason())
        else:
            batch = res["batch"]
            self.sit_rows("xl1", res, outcome, goal_mfu=(">=", 0.45))
            if "xformers_vs_sdpa" in res:
                ratio = res["xformers_vs_sdpa"]["wall_s"]
                r.judge("train-sit.xl1.xformers-vs-sdpa", ratio, f"{ratio:.2f}x (SDPA "
                        f"{res['whole_sdpa']['images_per_s']:.1f} img/s)", "", (">=", 1.0))
            else:
                r.set("train-sit.xl1.xformers-vs-sdpa", "skipped", "", None,
                      res.get("skipped", {}).get("whole_sdpa", outcome.reason()))
            if self.smoke:
                r.set("train-sit.xl1.compile", "skipped", "", None, "compile is timed on CUDA only")
            elif "compiled_vs_eager" in res and not res["whole_compiled"]["graphs"]:
                r.set("train-sit.xl1.compile", "failed", f"{res['compiled_vs_eager']['wall_s']:.2f}x", None,
                      "torch.compile captured no graph: the step ran uncompiled")
            elif "compiled_vs_eager" in res:
                ratio = res["compiled_vs_eager"]["wall_s"]
                compiled = res["whole_compiled"]
                r.judge("train-sit.xl1.compile", ratio, f"{ratio:.2f}x ({compiled['images_per_s']:.1f} img/s; "
                        f"compiling {compiled['warmup_s']:.0f} s)", "", (">=", 1.0))
            else:
                r.set("train-sit.xl1.compile", "failed", "", None, "during torch.compile: " + outcome.reason())

        if self.args.repae is None:
            r.set("train-sit.xl1.vs-repae", "skipped", "", None, "no --repae checkout given")
        elif batch is None:
            r.set("train-sit.xl1.vs-repae", "skipped", "", None, f"{s.sit[0]}'s own step did not run")
        else:
            outcome, res = self.bench("train-sit-repae", "train_sit_step.py",
                                      ["--model", s.sit[0], *s.sit_args, "--batch", str(batch), "--fit-batch",
                                       "--no-data", "--repae", str(self.args.repae), *self.peak_args()],
                                      self.cap("train-sit-repae"))
            if res is None or "whole_vs_repae" not in res:
                r.set("train-sit.xl1.vs-repae", "failed", "", None, outcome.reason())
            else:
                ratio = res["whole_vs_repae"]["wall_s"]
                r.judge("train-sit.xl1.vs-repae", ratio,
                        f"{ratio:.2f}x ({res['whole']['images_per_s']:.1f} vs {res['repae']['images_per_s']:.1f} "
                        f"img/s at batch {res['batch']})", "", (">=", 1.3))

        outcome, res = self.bench("train-sit-xl2", "train_sit_step.py",
                                  ["--model", s.sit[1], *s.sit_args, "--batch", str(s.sit_batch), "--fit-batch",
                                   "--no-data", *self.peak_args()], self.cap("train-sit-xl2"))
        if res is None or "whole" not in res:
            r.close_step("train-sit", "failed", outcome.reason())
        else:
            self.sit_rows("xl2", res, outcome, goal_mfu=None)

    def sit_rows(self, key: str, res: dict, outcome: Outcome, goal_mfu) -> None:
        r, whole, batch = self.report, res["whole"], res["batch"]
        note = "" if batch == self.sizes.sit_batch else f"batch {self.sizes.sit_batch} does not fit"
        r.judge(f"train-sit.{key}.throughput", whole["images_per_s"],
                f"{whole['images_per_s']:.1f} img/s, {whole['achieved_tflops']:.3g} TFLOP/s at batch {batch}", note)
        self.mfu(f"train-sit.{key}.mfu", whole, goal_mfu, note)
        ratio = res["whole_vs_bare"]["wall_s"]
        r.judge(f"train-sit.{key}.whole-vs-bare", ratio,
                f"{ratio:.2f}x (bare {res['bare']['images_per_s']:.1f} img/s)", "", (">=", 0.9))
        self.memory(f"train-sit.{key}.memory", whole.get("peak_memory_gib"))

    # -- train-vae ---------------------------------------------------------------------------
    def train_vae(self) -> None:
        r = self.report
        outcome, res = self.bench("train-vae", "train_vae_step.py", [*self.sizes.vae_args, *self.peak_args()],
                                  self.cap("train-vae"))
        if res is None:
            r.close_step("train-vae", "failed", outcome.reason())
            return
        r.judge("train-vae.throughput", res["images_per_s"],
                f"{res['images_per_s']:.1f} img/s at batch {res['batch']} ({res['precision']})")
        self.mfu("train-vae.mfu", {"mfu": res["utilisation"], "achieved_tflops": res["achieved_tflops"]}, None)
        self.memory("train-vae.memory", res.get("peak_memory_gib"))

    # -- sample ------------------------------------------------------------------------------
    def sample(self) -> None:
        r = self.report
        args = list(self.sizes.sample_args)
        cap = self.cap("sample")
        repae_skip = None
        if self.args.repae is None:
            repae_skip = "no --repae checkout given"
        elif not self.device.get("dictdot"):
            repae_skip = "REPA-E's VAE imports dictdot, not installed here (pip install dictdot)"
        else:
            args += ["--repae", str(self.args.repae)]
            cap = self.cap("sample", "sample-repae")
        outcome, res = self.bench("sample", "sample_throughput.py", args, cap)
        if res is None:
            r.close_step("sample", "failed", outcome.reason())
            return
        rate = res.get("projected_images_per_s", res["images_per_s"])
        hours = res.get("projected_hours_for_50k", res["seconds_for_50k_at_this_rate"] / 3600)
        r.judge("sample.throughput", rate, f"{rate:.3g} img/s; 50,000 in {hours:.3g} h",
                f"batch {res['batch_size']}, {res['steps']} steps run, projected to 250")
        if repae_skip:
            r.set("sample.vs-repae", "skipped", "", None, repae_skip)
        elif "ratio_vs_repae" in res:
            theirs = res["repae"].get("projected_images_per_s", res["repae"]["images_per_s"])
            r.judge("sample.vs-repae", res["ratio_vs_repae"],
                    f"{res['ratio_vs_repae']:.2f}x ({rate:.3g} vs {theirs:.3g} img/s)", "", (">=", 1.3))
        else:
            r.set("sample.vs-repae", "failed", "", None, outcome.reason())

    # -- fid ---------------------------------------------------------------------------------
    def fid(self) -> None:
        r = self.report
        names = self.sizes.fid_extractors
        outcome, res = self.bench("fid", "fid_throughput.py", [*self.sizes.fid_args, "--extractors", ",".join(names)],
                                  self.cap("fid"))
        if res is None:
            r.close_step("fid", "failed", outcome.reason())
            return
        for id, name in (("fid.inception", names[0]), ("fid.teacher", names[1])):
            row = res["extractors"].get(name)
            if row is None:
                r.set(id, "failed", "", None, f"{name} has no figures: " + outcome.reason())
                continue
            seconds = row["seconds_for_50000_images"]
            r.judge(id, seconds, f"{seconds:.0f} s ({row['pipeline_images_per_s']:.1f} img/s over {row['images']} "
                    f"images)", f"pipeline/bare {row['ratio']:.2f}", ("<", 120.0))

    # -- extract -----------------------------------------------------------------------------
    def extract(self) -> None:
        outcome, res = self.bench("extract", "extract_throughput.py", self.sizes.extract_args, self.cap("extract"))
        if res is None:
            self.report.close_step("extract", "failed", outcome.reason())
            return
        self.report.judge("extract.throughput", res["ratio"],
                          f"{res['extract_images_per_s']:.1f} img/s (bare {res['bare_images_per_s']:.1f}, ratio "
                          f"{res['ratio']:.2f})", f"{res['teacher']} at {res['resolution']} px", (">=", 0.9))

    # -- ddp ---------------------------------------------------------------------------------
    def ddp(self) -> None:
        r = self.report
        device = "cpu" if self.smoke else "cuda"
        work = self.runner.out / "ddp"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]

        # DDP itself: the objective train-sit wraps, over NCCL (gloo on CPU), against the plain step.
        out = work / "ddp-step.json"
        outcome = self.runner.run("ddp-step", [*torchrun, str(Path(__file__).resolve()), "--ddp-worker",
                                               "--device", device, "--json", str(out)], self.cap("ddp-step"))
        res = read_json(out)
        if res is None:
            r.set("ddp.ddp-step", "failed", "", None, outcome.reason())
        else:
            r.judge("ddp.ddp-step", res["max_relative_difference"],
                    f"{res['backend']}, world {res['world']}, {res['steps']} steps: largest gradient difference "
                    f"{res['max_relative_difference']:.1e} of its norm", "", ("<", 1e-4))

        # train-sit's own command line under torchrun, on a tiny latent cache made by cache-latents.
        opts = dict(zip(self.sizes.ddp_args[::2], self.sizes.ddp_args[1::2]))
        latents = work / "latents.h5"
        cache = self.runner.run("ddp-cache", [sys.executable, "-m", "sendvae_cli", "cache-latents", "shapes",
                                              "--vae", "tiny", "--random-weights", "--num-images", opts["--num-images"],
                                              "--resolution", opts["--resolution"], "--workers", "0", "--quiet",
                                              "--device", device, "--out", str(latents)], self.cap("ddp-cache"))
        if not cache.ok:
            r.set("ddp.torchrun", "failed", "", None, "making its latent cache: " + cache.reason())
            return
        run = work / "run"
        outcome = self.runner.run("ddp-train-sit", [
            *torchrun, "-m", "sendvae_cli", "train-sit", str(latents), "--images", "shapes", "--teacher", "dinov2-s",
            "--random-weights", "--preset", "tiny", "--batch-size", "8", "--steps", "4", "--checkpoint-every", "4",
            "--sample-every", "4", "--log-every", "2", "--workers", "1", "--preview-count", "4",
            "--preview-steps", "2", "--quiet", "--device", device, "--out", str(run)], self.cap("ddp-train-sit"))
        config = read_json(run / "config.json") or {}
        try:
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        except (OSError, ValueError):
            rows = []
        finite = bool(rows) and all(isinstance(v, (int, float)) and math.isfinite(v) for row in rows
                                    for v in row.values())
        if outcome.ok and finite and (run / "export" / "generator.json").exists():
            r.set("ddp.torchrun", "ok", f"{rows[-1]['step']} steps, loss {rows[-1]['loss']:.3f}, world "
                  f"{config.get('world_size')}", rows[-1]["loss"],
                  "one process takes train-sit's single-process path: DDP itself is the next row")
        else:
            r.set("ddp.torchrun", "failed", "", None,
                  outcome.reason() if not outcome.ok else "no finite metrics or no export")


def pytest_outcomes(log: str) -> dict[str, str]:
    """test name -> passed / failed / skipped, from `pytest -v` lines ('tests/x.py::test_y[a] PASSED [ 50%]')."""
    kinds = {"PASSED": "passed", "XPASS": "passed", "FAILED": "failed", "ERROR": "failed", "SKIPPED": "skipped",
             "XFAIL": "skipped"}
    cases = {}
    for match in re.finditer(r"^\S+::(\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", log, flags=re.M):
        name, kind = match.groups()
        if cases.get(name) != "failed":  # a test that passed and then errored in teardown failed
            cases[name] = kinds[kind]
    return cases


# --------------------------------------------------------------------------------------------
#                          The DDP check (run under torchrun by the ddp step)
# --------------------------------------------------------------------------------------------


def ddp_worker(device_name: str, out: Path, steps: int = 3) -> None:
    """SiTObjective (what train-sit wraps) in DistributedDataParallel as train-sit wraps it, over the
    real backend (NCCL on CUDA, gloo on CPU), and the same objective unwrapped: after each backward
    their gradients must agree (one rank: DDP's all-reduce averages over itself)."""
    import copy

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from sendvae_cli.distributed import pick_device
    from sendvae_cli.generators.sit import build_sit
    from sendvae_cli.train.sit_data import LatentNormalizer, micro_batch_generator
    from sendvae_cli.train.sit_trainer import SiTObjective

    device = pick_device(device_name, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(0)
    # SiT-B/2 on f16d32 latents on a GPU; on a CPU (the smoke run) a toy size.
    size = "SiT-B/2" if device.type == "cuda" else "SiT-tiny/2"
    model = build_sit(size, input_size=16, in_channels=32, num_classes=10, projector_dims=[64])
    with torch.no_grad():  # non-zero gates and output layer: every parameter gets a gradient
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    plain = SiTObjective(model.to(device), LatentNormalizer([0.0] * 32, [1.0] * 32).to(device), 0.5, "uniform", 0.1,
                         True)
    wrapped_objective = copy.deepcopy(plain)
    wrapped = DDP(wrapped_objective, device_ids=[device.index] if device.type == "cuda" else None,
                  broadcast_buffers=False)
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for step in range(steps):
        mean = torch.randn(4, 32, 16, 16, generator=g).half().to(device)
        std = (0.1 * torch.rand(4, 32, 16, 16, generator=g)).half().to(device)
        labels = torch.randint(0, 10, (4,), generator=g).to(device)
        tokens = torch.randn(4, 64, 64, generator=g).to(device)
        for objective in (plain, wrapped):
            objective.zero_grad(set_to_none=True)
            terms = objective(mean, std, labels, tokens, micro_batch_generator(0, step, 0, device), "fp32")
            terms.total.backward()
        for a, b in zip(plain.parameters(), wrapped_objective.parameters()):
            if a.grad is not None or b.grad is not None:
                worst = max(worst, float((a.grad - b.grad).norm() / a.grad.norm().clamp_min(1e-12)))
    result = {"backend": dist.get_backend(), "world": dist.get_world_size(), "steps": steps, "model": size,
              "device": str(device), "max_relative_difference": worst}
    dist.destroy_process_group()
    out.write_text(json.dumps(result, indent=2) + "\n")


# --------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("gpu-acceptance"), help="folder for the report, logs and figures")
    p.add_argument("--smoke", action="store_true", help="the same steps on CPU at toy sizes (under two minutes)")
    p.add_argument("--only", default=None, help=f"comma-separated steps to run, of: {', '.join(STEPS)}")
    p.add_argument("--budget-s", type=float, default=None, help="seconds for the whole run (GPU: 480, 585 with --repae; "
                   "smoke: 240); a step that finds none left is skipped")
    p.add_argument("--repae", type=Path, default=None,
                   help="a checkout of End2End-Diffusion/REPA-E (never committed): their step and sampling loop side by side")
    p.add_argument("--peak-tflops", type=float, default=None, help="the card's bf16 dense peak, when its name is not known")
    p.add_argument("--cap-scale", type=float, default=1.0,
                   help="multiply every time cap and the budget (a loaded machine: the smoke run checks that the "
                        "script works, and its caps are there to bound a GPU loan, not to time the CPU)")
    p.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ddp_worker:
        ddp_worker(args.device, args.json)
        return

    only = STEPS if args.only is None else tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = [s for s in only if s not in STEPS]
    if unknown:
        p.exit(2, f"error: --only: unknown step {unknown[0]!r}; the steps are {', '.join(STEPS)}\n")
    if args.repae is not None:
        if args.smoke:
            p.exit(2, "error: --repae is for the GPU run (REPA-E has no toy sizes)\n")
        if not (args.repae / "models" / "sit.py").is_file():
            p.exit(2, f"error: --repae {args.repae}: not a REPA-E checkout (no models/sit.py)\n")
        args.repae = args.repae.resolve()
    sizes = SMOKE if args.smoke else GPU
    if args.cap_scale <= 0:
        p.exit(2, f"error: --cap-scale {args.cap_scale}: must be above 0\n")
    if args.cap_scale != 1.0:
        sizes = replace(sizes, caps={k: v * args.cap_scale for k, v in sizes.caps.items()},
                        budget_s=sizes.budget_s * args.cap_scale)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    if args.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""  # toy sizes on the CPU even where a GPU is present

    # SIGTERM (a lent machine's session ending) unwinds like Ctrl-C, stopping the running command's group.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    device = describe_device(env)
    if not args.smoke and not device.get("cuda_available"):
        p.exit(2, "error: no CUDA device here (torch.cuda.is_available() is False); "
                  "`--smoke` runs the same steps on CPU at toy sizes\n")
    # REPA-E's step and sampling loop add their caps to the default budget.
    budget = args.budget_s or sizes.budget_s + (sum(v for k, v in sizes.caps.items() if k.endswith("-repae"))
                                                if args.repae else 0)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    device["card"] = card_slug(device.get("name")) if not args.smoke else "cpu"
    device["bf16_peak_tflops"] = None if args.smoke else (args.peak_tflops or bf16_peak(device.get("name")))
    report = Report(out / "gpu-report.json", "smoke" if args.smoke else "gpu", device, budget, sys.argv)
    declare_rows(report, sizes)
    runner = Runner(out, budget, env)
    acceptance = Acceptance(args, sizes, report, runner)
    print(f"{'smoke run (CPU, toy sizes: figures say nothing of the goals)' if args.smoke else 'GPU acceptance run'}"
          f" on {device.get('name') or device['cpu']}; torch {device['torch']}, xformers {device.get('xformers')}, "
          f"budget {budget:.0f} s; report: {report.path}", flush=True)
    report.write()

    actions: dict[str, Callable[[], None]] = {
        "tests": acceptance.tests, "train-sit": acceptance.train_sit, "train-vae": acceptance.train_vae,
        "sample": acceptance.sample, "fid": acceptance.fid, "extract": acceptance.extract, "ddp": acceptance.ddp}
    for step in STEPS:
        if step not in only:
            report.close_step(step, "skipped", "not in --only")
    for step in (s for s in STEPS if s in only):
        cap = sum(sizes.caps[c] for c in COMMANDS[step] if args.repae or not c.endswith("-repae"))
        if runner.left() < 5:
            report.close_step(step, "skipped", f"the --budget-s of {budget:.0f} s is spent")
            continue
        print(f"[{step}] up to {min(cap, runner.left()):.0f} s", flush=True)
        start = time.monotonic()
        acceptance.step_deadline = start + cap
        try:
            actions[step]()
        except Exception as error:  # noqa: BLE001 - one step's surprise must not cost the other steps
            report.close_step(step, "failed", f"{type(error).__name__}: {error}")
        except BaseException:  # interrupted: what ran stays in the report, the rest says why it is missing
            report.close_step(step, "failed", "interrupted (Ctrl-C or SIGTERM)")
            for later in STEPS[STEPS.index(step) + 1:]:
                report.close_step(later, "skipped", "interrupted (Ctrl-C or SIGTERM)")
            raise
        report.close_step(step, "failed", "the step ended without this figure")
        report.steps[step] = {"seconds": round(time.monotonic() - start, 1), "cap_s": cap}
        report.write()

    table = report.table()
    (out / "gpu-report.md").write_text(table + "\n")
    counts = {s: sum(r.status == s for r in report.rows) for s in ("ok", "short", "failed", "skipped")}
    print("\n" + table + "\n")
    print(f"{counts['ok']} ok, {counts['short']} short, {counts['failed']} failed, {counts['skipped']} skipped in "
          f"{time.time() - report.started:.0f} s; {report.path}"
          + ("" if args.smoke else f" (commit it as benchmarks/results/gpu-{device['card']}.json)"))
    sys.exit(1 if counts["failed"] else 0)


if __name__ == "__main__":
    main()
