"""Benchmarks: what a model costs on this machine (size, latency, memory, accuracy) and what the tooling costs.

Run from the repository root:

    python -m benchmarks ...                   the backbone table (benchmarks.backbones)
    python -m benchmarks.bench_export ...      export latency per backend, FP32 vs INT8 mAP
    python -m benchmarks.bench_models ...      parameters, GFLOPs and fused CPU latency of every model yaml
    python -m benchmarks.bench_train ...       training-step vs dataloader throughput
    python -m benchmarks.bench_dataloader ...  mosaic dataloader throughput
    python -m benchmarks.bench_metrics ...     validation metric code speed
    python -m benchmarks.profile_onnx ...      ONNX Runtime kernel time per operator type

Library modules (importable by any bench): machine (CPU, versions, load), timing (latency medians), memory (peak
RSS in a child process), training (the reuse-trainings cache), report (CSV, tables, charts), cells (the table's
columns and 'n/a' cells). Every script writes its results into a run folder under runs/benchmark/ unless told
otherwise with --out; benchmarks/results/ holds the README's published tables and is rewritten only by an explicit
--out there.
"""
