"""The machine a measurement is only valid for: CPU model, SIMD extensions, cores, library versions, load."""
from __future__ import annotations

import datetime
import os
import platform

import torch

from benchmarks.cells import as_float

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "asimd", "asimddp")


def _cpuinfo() -> dict[str, str]:
    """First value of each /proc/cpuinfo key ({} where there is none)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                info.setdefault(k.strip().lower(), v.strip())
    except OSError:
        pass
    return info


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo ('model name'), else platform.processor()."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_isa() -> str:
    """The CPU's SIMD extensions that decide FP32/INT8 kernel speed (VNNI, AMX: fast INT8), space-separated."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("features") or "").split())
    return " ".join(f for f in ISA_FLAGS if f in flags) or "unknown"


def machine_info() -> dict:
    """The CSV's machine columns: what a latency figure is only valid for."""
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "not installed"
    try:
        load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    except (OSError, AttributeError):
        load = "unknown"
    return {"cpu": cpu_model(), "cpu_isa": cpu_isa(), "cores": os.cpu_count(), "torch_version": torch.__version__,
            "onnxruntime_version": ort_version, "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}",
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "load_avg": load}


def load_1min(row: dict) -> float | None:
    """The 1-minute load average recorded in a row's load_avg ('1m/5m/15m')."""
    return as_float(str(row.get("load_avg", "")).split("/")[0])
