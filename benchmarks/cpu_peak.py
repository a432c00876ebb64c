"""The CPU's FP32 peak, as the benchmarks quote it: cores x clock x 32 FLOPs/cycle (AVX2, two FMA units)."""

import os


def cpu_peak_tflops() -> float:
    mhz = 0.0
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                mhz = float(line.split(":")[1])
                break
    return (os.cpu_count() or 1) * mhz * 1e6 * 32 / 1e12
