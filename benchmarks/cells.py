"""The cells of the backbone table: its columns, 'n/a' cells and the reasons a stage was skipped."""
from __future__ import annotations

import math

from utils.general import first_line

NA = "n/a"
# latency column -> the runtime it times, as the table's 'fastest' column names it
LATENCY_TITLES = {"torch_ms": "PyTorch", "ort_fp32_ms": "ORT FP32", "ort_int8_ms": "ORT INT8",
                  "openvino_fp32_ms": "OpenVINO FP32", "ncnn_fp32_ms": "ncnn FP32", "mnn_fp32_ms": "MNN FP32"}
METRIC_COLUMNS = ["model", "params", "gflops", *LATENCY_TITLES, "fastest", "fastest_ms", "torch_mem_mb",
                  "ort_fp32_mem_mb", "ort_int8_mem_mb", "onnx_fp32_mb", "onnx_int8_mb", "map50", "map50_95",
                  "train_s"]
RECIPE_COLUMNS = ["epochs", "imgsz", "train_imgsz", "batch_size", "optimizer", "nbs", "hyp", "seed", "data", "cfg",
                  "threads", "warmup", "runs", "map_from"]
MACHINE_COLUMNS = ["cpu", "cpu_isa", "cores", "torch_version", "onnxruntime_version", "python", "os", "date",
                   "load_avg"]
COLUMNS = METRIC_COLUMNS + RECIPE_COLUMNS + MACHINE_COLUMNS + ["skipped"]


class Skip(Exception):
    """A stage that cannot run here (missing backend, nothing to measure); the message is the reason."""


def failure_reason(e: BaseException) -> str:
    """One line for the 'skipped' column: the message of a Skip, 'Type: first line' of anything else."""
    msg = first_line(e) if str(e).strip() else ""
    return msg if isinstance(e, Skip) else f"{type(e).__name__}: {msg}".rstrip(": ")


class Row(dict):
    """One CSV row; stage() runs a measurement and records either its values or 'n/a' with the reason."""

    def stage(self, columns: tuple[str, ...], fn, keep: bool = False):
        """Store fn()'s value(s) in columns; on any exception mark them 'n/a' with the reason and return None.
        keep: return fn()'s result without storing it (an intermediate such as a file or a model)."""
        try:
            value = fn()
        except Exception as e:  # any failure of one stage must not stop the others
            self.skip(columns, failure_reason(e))
            return None
        if not keep:
            for c, v in zip(columns, value if isinstance(value, tuple) else (value,)):
                self[c] = v
        return value

    def skip(self, columns, reason: str) -> None:
        """Mark columns 'n/a' and record why (one line, no ';' which separates reasons)."""
        reason = " ".join(reason.replace(";", ",").split())[:300]
        for c in columns:
            self[c] = NA
        self.setdefault("_reasons", []).append(f"{'+'.join(columns)}: {reason}")


def as_float(v) -> float | None:
    """A CSV cell as a float, None for 'n/a' or anything non-numeric."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def finish_row(row: Row, machine: dict) -> dict:
    """Machine columns, explicit 'n/a' for anything unset, reasons joined into 'skipped'."""
    reasons = row.pop("_reasons", [])
    out = {**row, **machine}
    missing = [c for c in COLUMNS if c != "skipped" and out.get(c) in (None, "")]
    if missing:
        reasons.append(f"{'+'.join(missing)}: not measured")
        out.update(dict.fromkeys(missing, NA))
    out["skipped"] = "; ".join(reasons) or "none"
    return out


def fastest_runtime(row: dict) -> tuple[str, float] | None:
    """(runtime title, ms) of the row's lowest latency column, or None when no latency was measured."""
    t = {c: as_float(row.get(c)) for c in LATENCY_TITLES}
    t = {c: v for c, v in t.items() if v is not None}
    if not t:
        return None
    c = min(t, key=t.get)
    return LATENCY_TITLES[c], t[c]
