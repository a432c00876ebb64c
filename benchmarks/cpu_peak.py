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


def cpu_name() -> str:
    """'AMD EPYC (family 25 model 17; avx2, avx512f, avx512_bf16)': what names the CPU behind a figure."""
    facts: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                facts.setdefault(key.strip(), value.strip())
    except OSError:
        return "unknown CPU"
    flags = set(facts.get("flags", "").split())
    wide = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return (f"{facts.get('model name', 'unknown CPU')} (family {facts.get('cpu family', '?')} model "
            f"{facts.get('model', '?')}; {', '.join(wide) or 'no AVX2'})")
