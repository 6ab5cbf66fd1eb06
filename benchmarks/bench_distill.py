"""Distillation experiment: does a nano student trained with train.py --teacher beat the same student without?

    python -m benchmarks.bench_distill                                          # shapes, yolov5s -> 3 nano students
    python -m benchmarks.bench_distill --data datasets/cards/cards.yaml --epochs 30 --imgsz 320
    python -m benchmarks.bench_distill --teacher runs/train/exp/weights/best.pt   # an already trained teacher

Trains the teacher (--teacher-cfg, yolov5s by default) once, unless --teacher names a checkpoint; then every student
(--students: yolov5n and the two lightweight nano yamls nearest yolov5n's point in the backbone table) twice with
one recipe and seed: from the labels alone and with --teacher. Each best.pt is validated by train.py's final
validation (mAP50, mAP50-95 on the val split at --imgsz). Writes distill.md (a table: model, teacher, mAP50,
mAP50-95, training wall time, ONNX Runtime FP32 latency at --latency-imgsz) and distill.png (latency vs mAP50-95,
one point per run: both runs of each student) into a fresh runs/benchmark/distill* folder, or to --out. Training
runs live under <project>/<name>_train and a finished run of the same recipe there is reused (--retrain forces).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from benchmarks.backbones import export_onnx
from benchmarks.cells import NA, failure_reason
from benchmarks.machine import machine_info
from benchmarks.report import add_output_args, plot_results, results_file
from benchmarks.timing import measure_latency_onnx
from benchmarks.training import train_and_eval
from utils.general import LOGGER

COMMAND = "python -m benchmarks.bench_distill"
STUDENTS = ("yolov5n.yaml", "yolov5n_tv_mobilenet_v3_small.yaml", "yolov5n_ShuffleNetV2.yaml")


def parse_opt(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/shapes.yaml", help="dataset yaml")
    p.add_argument("--teacher-cfg", default="yolov5s.yaml", help="teacher model yaml, trained with the same recipe")
    p.add_argument("--teacher", default="", help="a trained teacher checkpoint (skips training the teacher)")
    p.add_argument("--students", nargs="+", default=list(STUDENTS), help="student model yamls")
    p.add_argument("--epochs", type=int, default=30, help="epochs of every training run")
    p.add_argument("--imgsz", type=int, default=320, help="train and val image size")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--hyp", default="hyp.scratch-low.yaml", help="hyp yaml (distill/distill_t/distill_conf keys "
                   "tune the distillation; absent keys take their defaults)")
    p.add_argument("--optimizer", default="SGD", choices=("SGD", "Adam", "AdamW"))
    p.add_argument("--nbs", type=int, default=64, help="nominal batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--retrain", action="store_true", help="train again even if a finished run of the recipe exists")
    p.add_argument("--latency-imgsz", type=int, default=320, help="ONNX Runtime FP32 latency size (0: skip)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    p.add_argument("--runs", type=int, default=30, help="timed latency runs (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed latency runs first")
    add_output_args(p, "distill", "distill.md/.png", "markdown file to write instead of project/name/distill.md "
                    "(the chart goes beside it; '' prints only)")
    return p.parse_args(argv)


def ort_latency(weights: Path, opt) -> float | str:
    """Median ms of the FP32 ONNX export of weights (batch 1), or 'n/a' with the reason logged."""
    if not opt.latency_imgsz:
        return NA
    try:
        onnx = export_onnx(weights, opt.latency_imgsz)["fp32"]
        return measure_latency_onnx(onnx, opt.latency_imgsz, opt.threads, opt.runs, opt.warmup)
    except Exception as e:  # a model that does not export still has its mAP row
        LOGGER.warning(f"bench_distill: no ONNX latency for {weights}: {failure_reason(e)}")
        return NA


def run_experiment(opt) -> list[dict]:
    """Teacher once, each student with and without it; one row per training run (the teacher's first)."""
    train_dir = Path(opt.project) / f"{opt.name}_train"

    def fit(cfg: str, teacher: str | None) -> dict:
        name = Path(cfg).stem + ("_kd" if teacher else "")
        return train_and_eval(cfg, opt.data, opt.epochs, opt.imgsz, opt.seed, opt.batch_size, opt.hyp, opt.workers,
                              train_dir, name, opt.optimizer, opt.nbs, reuse=not opt.retrain, teacher=teacher)

    rows = []
    if opt.teacher:
        teacher = Path(opt.teacher)
        if not teacher.is_file():
            raise FileNotFoundError(f"--teacher '{teacher}' not found")
        label = teacher.parent.parent.name if teacher.parent.name == "weights" else teacher.stem  # its run folder
    else:
        res = fit(opt.teacher_cfg, None)
        teacher, label = Path(res["weights"]), Path(opt.teacher_cfg).stem
        rows.append({"model": label, "teacher": "-", **res, "ort_fp32_ms": ort_latency(teacher, opt)})
    latency = {}
    for cfg in opt.students:
        for t in (None, teacher):
            res = fit(cfg, str(t) if t else None)
            if cfg not in latency:  # same graph with or without distillation: timed once
                latency[cfg] = ort_latency(Path(res["weights"]), opt)
            rows.append({"model": Path(cfg).stem, "teacher": label if t else "-", **res,
                         "ort_fp32_ms": latency[cfg]})
    return rows


def _fmt(v, f: str) -> str:
    return f.format(v) if isinstance(v, (int, float)) else str(v)


def format_table(rows: list[dict], latency_imgsz: int) -> str:
    """Markdown table; the Δ column is the distilled run's mAP50-95 minus the same student's run without teacher."""
    plain = {r["model"]: r["map50_95"] for r in rows if r["teacher"] == "-"}
    at = f" @{latency_imgsz}" if latency_imgsz else ""
    lines = [f"| model | teacher | mAP50 | mAP50-95 | Δ mAP50-95 | train s | ORT FP32 ms{at} |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        delta = r["map50_95"] - plain[r["model"]] if r["teacher"] != "-" and r["model"] in plain else None
        lines.append(f"| {r['model']} | {r['teacher']} | {r['map50']:.3f} | {r['map50_95']:.3f} | "
                     f"{_fmt(delta, '{:+.3f}') if delta is not None else ''} | {r['train_s']:.0f} | "
                     f"{_fmt(r['ort_fp32_ms'], '{:.1f}')} |")
    return "\n".join(lines)


def report(rows: list[dict], opt, argv: list[str], png: str = "distill.png") -> str:
    m = machine_info()
    cmd = " ".join([COMMAND, *argv])
    return "\n".join([
        f"# Distillation: {Path(str(opt.data)).name}, {opt.epochs} epochs at {opt.imgsz}px", "",
        f"Recipe: {opt.optimizer} (nominal batch {opt.nbs}), batch {opt.batch_size}, hyp {opt.hyp}, seed {opt.seed}; "
        f"mAP of best.pt on the val split. Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch_version']}, "
        f"onnxruntime {m['onnxruntime_version']}. Latency: batch 1, {opt.threads} threads, median of {opt.runs}.", "",
        format_table(rows, opt.latency_imgsz), "", f"![latency vs mAP50-95]({png})", "",
        "Produced by:", "", "```bash", cmd, "```", ""])


def main(opt, argv: list[str] | None = None) -> list[dict]:
    LOGGER.setLevel(logging.INFO)
    rows = run_experiment(opt)
    argv = sys.argv[1:] if argv is None else argv
    if opt.out == "":
        print(report(rows, opt, argv))
        return rows
    f = results_file(opt.out, opt.project, opt.name, "distill.md", opt.exist_ok)
    text = report(rows, opt, argv, f.with_suffix(".png").name)
    print(text)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(text)
    chart = [{**r, "model": r["model"] + (" +KD" if r["teacher"] != "-" else "")} for r in rows]
    png = plot_results(chart, f.with_suffix(".png"), f"distillation, {Path(str(opt.data)).name}")
    print(f"Results saved to {f} and {png}")
    return rows


if __name__ == "__main__":
    try:
        main(parse_opt())
    except (FileNotFoundError, ValueError) as e:
        LOGGER.error(f"ERROR: {e}")
        sys.exit(1)
