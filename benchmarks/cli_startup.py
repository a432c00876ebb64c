"""Wall time of `sendvae --help` and `sendvae plugins` (goal: under 1.5 s each).

    python benchmarks/cli_startup.py [--runs 5]

Both must answer without importing torch, timm, open_clip or transformers.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    exe = shutil.which("sendvae")
    command = [exe] if exe else [sys.executable, "-m", "sendvae_cli"]
    for extra in (["--help"], ["plugins"]):
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run(command + extra, check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        print(f"sendvae {' '.join(extra):<8} median {statistics.median(times):.3f} s  (min {min(times):.3f}, max {max(times):.3f}, {args.runs} runs)")


if __name__ == "__main__":
    main()
