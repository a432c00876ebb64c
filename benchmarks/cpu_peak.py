"""The CPU's FP32 peak, as the benchmarks quote it: cores x clock x FLOPs per cycle, 32 with AVX2
and two FMA units, 64 where the CPU has AVX-512 (two 512-bit FMA units, as on Xeon servers).
bf16 on AMX tiles has a far higher peak; against this FP32 figure a bf16 run can exceed 100%."""

import os


def cpu_peak_tflops() -> float:
    mhz, flags = 0.0, set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz") and not mhz:
                mhz = float(line.split(":")[1])
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":")[1].split())
    per_cycle = 64 if "avx512f" in flags else 32
    return (os.cpu_count() or 1) * mhz * 1e6 * per_cycle / 1e12
