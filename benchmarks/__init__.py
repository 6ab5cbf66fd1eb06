"""Benchmarks: what a model costs on this machine (size, latency, memory, accuracy) and what the tooling costs.

Run from the repository root:

    python -m benchmarks ...                   the backbone table (benchmarks.backbones)
    python -m benchmarks.bench_export ...      export latency per backend, FP32 vs INT8 mAP
    python -m benchmarks.bench_models ...      parameters, GFLOPs and fused CPU latency of every model yaml
    python -m benchmarks.bench_train ...       training-step vs dataloader throughput
    python -m benchmarks.bench_distill ...     students with and without a teacher (train.py --teacher)
    python -m benchmarks.bench_dataloader ...  mosaic dataloader throughput
    python -m benchmarks.bench_metrics ...     validation metric code speed
    python -m benchmarks.profile_onnx ...      ONNX Runtime kernel time per operator type

Library modules (importable by any bench): machine (CPU, versions, load), timing (latency medians), memory (peak
RSS in a child process), training (the reuse-trainings cache), report (CSV, tables, charts), cells (the table's
columns and 'n/a' cells). Every script writes its results into a run folder under runs/benchmark/ unless told
otherwise with --out; benchmarks/results/ holds the README's published tables and is rewritten only by an explicit
--out there.
"""


# The public names of the former benchmarks.py, by the module that now holds them: `from benchmarks import
# time_callables` (what scripts written against that file do) keeps working.
_MOVED = {
    "cells": ("NA", "METRIC_COLUMNS", "RECIPE_COLUMNS", "MACHINE_COLUMNS", "COLUMNS", "Skip", "failure_reason", "Row",
              "as_float", "finish_row"),
    "machine": ("ISA_FLAGS", "cpu_model", "cpu_isa", "machine_info", "load_1min"),
    "timing": ("timed_runs", "time_callables", "measure_latency_torch", "measure_latency_onnx"),
    "memory": ("start_peak_memory", "finish_peak_memory", "measure_peak_memory"),
    "training": ("RECORD", "training_recipe", "model_hash", "finished_run", "train_and_eval"),
    "report": ("TABLE", "pareto_front", "LATENCY_PANELS", "latency_columns", "label_points", "make_chart",
               "plot_results", "format_table", "skip_notes", "write_csv", "markdown_report"),
    "backbones": ("build_model", "model_size", "save_untrained", "export_onnx", "benchmark_model", "expand_cfgs",
                  "run", "parse_opt", "main"),
}
_HOME = {name: module for module, names in _MOVED.items() for name in names}


def __getattr__(name: str):
    """Look a former benchmarks.py name up in its new module on first use: `import benchmarks` alone loads neither
    torch nor ONNX Runtime."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = __import__(f"{__name__}.{_HOME[name]}", fromlist=[name])
    return getattr(module, name)
