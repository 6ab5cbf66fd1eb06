"""The backbone table's outputs: CSV, markdown table and report, and the latency-vs-accuracy chart."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from benchmarks.cells import COLUMNS, NA, as_float
from benchmarks.machine import load_1min

TABLE = [  # (column, header, format) of the printed / markdown table
    ("model", "Model", "{}"), ("params", "Params (M)", "{:.2f}"), ("gflops", "GFLOPs", "{:.2f}"),
    ("torch_ms", "PyTorch ms", "{:.1f}"), ("ort_fp32_ms", "ORT FP32 ms", "{:.1f}"),
    ("ort_int8_ms", "ORT INT8 ms", "{:.1f}"), ("openvino_fp32_ms", "OpenVINO ms", "{:.1f}"),
    ("ncnn_fp32_ms", "ncnn ms", "{:.1f}"), ("mnn_fp32_ms", "MNN ms", "{:.1f}"), ("fastest", "Fastest", "{}"),
    ("torch_mem_mb", "PyTorch MB", "{:.0f}"),
    ("ort_fp32_mem_mb", "ORT FP32 MB", "{:.0f}"), ("ort_int8_mem_mb", "ORT INT8 MB", "{:.0f}"),
    ("onnx_fp32_mb", "ONNX MB", "{:.1f}"), ("onnx_int8_mb", "INT8 MB", "{:.1f}"),
    ("map50", "mAP50", "{:.3f}"), ("map50_95", "mAP50-95", "{:.3f}")]

# Run with `python -c` in a fresh process; it must not import this module (that would load torch for ONNX too).


def pareto_front(x: list[float], y: list[float]) -> list[int]:
    """Indices of points no other point beats (x lower-is-better, y higher-is-better), sorted by x."""
    order = sorted(range(len(x)), key=lambda i: (x[i], -y[i]))
    front, best = [], -math.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return front


LATENCY_PANELS = {"fastest_ms": "each model's fastest runtime", "ort_fp32_ms": "ONNX Runtime FP32",
                  "ort_int8_ms": "ONNX Runtime INT8", "torch_ms": "PyTorch fused"}
RUNTIME_COLORS = {"PyTorch": "tab:gray", "ORT FP32": "tab:blue", "ORT INT8": "tab:cyan",
                  "OpenVINO FP32": "tab:purple", "ncnn FP32": "tab:green", "MNN FP32": "tab:orange"}


def latency_columns(rows: list[dict]) -> list[str]:
    """The chart's panels: every latency column that some row has; each model at its fastest runtime first (the
    choice a deployment makes), then ONNX Runtime FP32 (what a device runs without tuning)."""
    cols = [c for c in LATENCY_PANELS if any(as_float(r.get(c)) is not None for r in rows)]
    return cols or ["torch_ms"]


def label_points(ax, pts: list[tuple[float, float, str]], fontsize: int = 8) -> None:
    """Name each point next to it, moving a label above or below its point when it would cover one already placed:
    models with near-equal latency and mAP (a yaml and its ReLU variant) otherwise print on top of each other."""
    ax.get_xlim(), ax.get_ylim()  # settle autoscaling so transData maps to the final positions
    px = ax.figure.dpi / 72  # pixels per point
    height, char = 1.2 * fontsize * px, 0.62 * fontsize * px
    placed: list[tuple[float, float, float, float]] = []
    for xi, yi, name in sorted(pts, key=lambda p: -p[1]):
        x0, y0 = ax.transData.transform((xi, yi))
        for dy in (4, -12, 14, -22, 24, -32, 34):
            box = (x0 + 5 * px, y0 + dy * px, x0 + 5 * px + char * len(name), y0 + dy * px + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(5, dy), fontsize=fontsize)


def make_chart(rows: list[dict], title: str = ""):
    """Figure with one panel per latency backend, each plotting latency vs mAP50-95 (one labelled point per model,
    that backend's Pareto front drawn): the fastest accurate model depends on the runtime. Latency vs GFLOPs, said
    in the title, when no row has an mAP."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_map = any(as_float(r.get("map50_95")) is not None for r in rows)
    ycol = "map50_95" if has_map else "gflops"
    cols = latency_columns(rows)
    fig, axes = plt.subplots(1, len(cols), figsize=(6.5 * len(cols), 6), dpi=100, sharey=True, squeeze=False)
    for ax, xcol in zip(axes[0], cols):
        pts = [(as_float(r.get(xcol)), as_float(r.get(ycol)), str(r.get("model"))) for r in rows]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if pts:
            x, y, _ = zip(*pts)
            if xcol == "fastest_ms":  # one colour per runtime: which runtime made each model fastest
                by = {str(r.get("model")): str(r.get("fastest")) for r in rows}
                for rt in sorted({by[p[2]] for p in pts}):
                    sel = [p for p in pts if by[p[2]] == rt]
                    ax.scatter([p[0] for p in sel], [p[1] for p in sel], s=36, zorder=3, label=rt,
                               color=RUNTIME_COLORS.get(rt, "tab:red"))
            else:
                ax.scatter(x, y, s=36, zorder=3, color="tab:blue")
            ax.margins(x=0.15, y=0.12)  # room for the labels of the outermost points
            label_points(ax, pts)
            if has_map:
                f = pareto_front(list(x), list(y))
                ax.step([x[i] for i in f], [y[i] for i in f], where="post", color="tab:red", lw=1.5, zorder=2,
                        label="Pareto front (no other model is both faster and more accurate)")
                ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no model has both values", ha="center", va="center", transform=ax.transAxes)
        if xcol == "fastest_ms" and pts and not has_map:  # with mAP the front's legend lists the runtimes too
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel(f"CPU latency, batch 1, {LATENCY_PANELS[xcol]} (ms, median)")
        ax.set_title(LATENCY_PANELS[xcol], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mAP50-95" if has_map else "GFLOPs")
    head = "latency vs mAP50-95" if has_map else "latency vs GFLOPs (no mAP: --epochs 0)"
    fig.suptitle(f"{head}\n{title}" if title else head, fontsize=11)
    fig.tight_layout()
    return fig


def plot_results(rows: list[dict], file: str | Path, title: str = "") -> Path:
    """Save make_chart(rows) as a PNG."""
    import matplotlib.pyplot as plt
    fig = make_chart(rows, title)
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(file)
    plt.close(fig)
    return file


def format_table(rows: list[dict]) -> str:
    """Markdown table of the headline columns; 'n/a' where a stage was skipped (reasons listed under it)."""
    lines = ["| " + " | ".join(h for _, h, _ in TABLE) + " |", "|" + "|".join("---" for _ in TABLE) + "|"]
    for r in rows:
        cells = []
        for c, _, fmt in TABLE:
            v = r.get(c, NA)
            if c == "params" and as_float(v) is not None:
                v = as_float(v) / 1e6
            cells.append(fmt.format(as_float(v)) if fmt != "{}" and as_float(v) is not None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + skip_notes(rows))


def skip_notes(rows: list[dict]) -> list[str]:
    """'Skipped:' lines under the table, one per distinct reason, naming its models ('all models' if every one)."""
    by_reason: dict[str, list[str]] = {}
    for r in rows:
        for part in str(r.get("skipped") or "none").split("; "):
            if part != "none":
                by_reason.setdefault(part, []).append(str(r["model"]))
    if not by_reason:
        return []
    names = [str(r["model"]) for r in rows]
    return ["", "Skipped:"] + [f"- {'all models' if m == names and len(m) > 1 else ', '.join(m)}: {reason}"
                               for reason, m in by_reason.items()]


def write_csv(rows: list[dict], file: str | Path) -> Path:
    """CSV with COLUMNS in order; every cell filled (a value, or 'n/a' explained in 'skipped')."""
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: _csv_value(r.get(c, NA)) for c in COLUMNS})
    os.replace(tmp, file)
    return file


def _csv_value(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return v if v not in (None, "") else NA


def markdown_report(rows, table: str, machine: dict, command: str | None, png: str, opt) -> str:
    """The README section: table, chart, machine, recipe and the exact command."""
    train_imgsz = opt.train_imgsz or opt.imgsz
    recipe = (f"{opt.epochs} epochs from scratch at {train_imgsz}px (mAP50 and mAP50-95 of best.pt on the val split "
              f"at {train_imgsz}px), batch {opt.batch_size}, {opt.optimizer} (nominal batch {opt.nbs}), hyp "
              f"{opt.hyp or 'train.py default'}, seed {opt.seed}" if opt.epochs
              else "no training (--epochs 0): mAP not measured")
    source = getattr(opt, "accuracy_from", None)
    if source and opt.epochs:
        recipe = (f"mAP50 and mAP50-95 (and train_s) reused from {source}, the rows of this recipe ({recipe}); "
                  f"latency, memory and sizes measured anew on untrained, fused models of the same yaml and nc "
                  f"(speed does not depend on the weights' values)")
    loads = [x for x in (load_1min(r) for r in rows) if x is not None]
    load = f" 1-minute load average after each model: {min(loads):.1f}-{max(loads):.1f}." if loads else ""
    return "\n".join([
        f"Machine: {machine['cpu']} ({machine['cpu_isa']}), {machine['cores']} cores, {opt.threads} threads; torch "
        f"{machine['torch_version']}, onnxruntime {machine['onnxruntime_version']}, Python {machine['python']}, "
        f"{machine['os']}; {machine['date'][:10]}.{load}",
        f"Data {Path(str(opt.data)).name}, {opt.imgsz}px; {recipe}. Latency: batch 1, {opt.threads} threads in "
        f"every runtime, median of {opt.runs} runs after {opt.warmup} warm-up runs; PyTorch (fused, channels_last) "
        f"in the benchmark's process, the exports (ONNX Runtime, OpenVINO, ncnn, MNN) in one child process per "
        f"model, in turns of 10 runs (benchmarks.bench_runtimes). Fastest: the lowest latency column; an INT8 "
        f"model's mAP is a little below the FP32 columns' (export.py --int8 reports it). Memory: peak RSS over a "
        f"fresh process's baseline while loading and running the model. Params/GFLOPs: the model as built (before "
        f"fusing).",
        "", table, "", f"![latency vs accuracy]({png})", "",
        "Produced by:", "", "```bash", command or "python -m benchmarks", "```", ""])


def add_output_args(parser, name: str, what: str, out_help: str) -> None:
    """The output flags every bench shares: --project/--name (a fresh runs/benchmark/<name>* folder, as YOLOv5's
    runs folders), --exist-ok, and --out (an explicit file or folder, e.g. a published table in benchmarks/results)."""
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--project", default=str(root / "runs/benchmark"), help=f"save {what} to project/name")
    parser.add_argument("--name", default=name, help=f"save {what} to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    parser.add_argument("--out", default=None, help=out_help)


def save_report(text: str, opt, filename: str) -> Path | None:
    """Print a bench's markdown and write it where results_file says (opt.out, else a fresh opt.project/opt.name
    folder); --out '' prints only."""
    print(text)
    if opt.out == "":
        return None
    f = results_file(opt.out, opt.project, opt.name, filename, opt.exist_ok)
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(text)
    print(f"Results saved to {f}")
    return f


def results_file(out: str | Path | None, project: str | Path, name: str, filename: str,
                 exist_ok: bool = False) -> Path:
    """Where a bench writes its table: `out` when given (benchmarks/results/... rewrites a published table),
    else project/name/filename in a fresh run folder (name, name2, ... as YOLOv5's runs folders)."""
    if out:
        return Path(out)
    from utils.general import increment_path
    return increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True) / filename
