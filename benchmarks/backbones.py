"""Choose a backbone for a device: size, CPU speed, memory and accuracy of model yamls, measured on this machine.

    python -m benchmarks --data data/shapes.yaml --imgsz 320 --cfgs 'models/yolov5n*.yaml' --epochs 10

For every model yaml one CSV row: parameters and GFLOPs (the YOLOv5 summary of the model as built, at --imgsz),
batch-1 CPU latency for the fused PyTorch model, the ONNX Runtime FP32 and INT8 exports, and the OpenVINO, ncnn
and MNN (FP32) exports of --runtimes (median of --runs timed calls after --warmup untimed ones, --threads
threads in every runtime; the exports timed in turns in a child process by benchmarks.bench_runtimes), the fastest
of them, peak memory of PyTorch and ONNX Runtime (benchmarks.memory), exported file sizes and, when --epochs > 0,
mAP50 and mAP50-95 of best.pt after training that many epochs from scratch with one recipe and seed for all
(or, with --accuracy-from CSV, the mAP of that CSV's rows of the same recipe, latency measured anew on untrained
models: it does not depend on the weights' values). The CSV also records the machine
(CPU, cores, library versions, load average) so tables from different machines are not mixed up. A stage that
fails writes 'n/a' in its columns and the reason in the row's 'skipped' column; the run goes on with the next
stage and model.

Outputs go to the run folder --project/--name (runs/benchmark/exp, exp2, ... as YOLOv5's runs folders):
backbones.csv, backbones.png (latency vs mAP50-95 with the Pareto front; latency vs GFLOPs when --epochs 0),
backbones.md (the table, the machine and the command), and the training runs and exports under it. --out puts the
three result files in another folder instead: `--out benchmarks/results` rewrites the README's published table, and
only that does. A finished training run of the same recipe in any run folder under --project is reused.
"""
from __future__ import annotations

import argparse
import glob
import shlex
import sys
from pathlib import Path

import torch

from benchmarks.bench_runtimes import time_runtimes_in_child
from benchmarks.cells import METRIC_COLUMNS, NA, Row, Skip, failure_reason, fastest_runtime, finish_row
from benchmarks.machine import load_1min, machine_info
from benchmarks.memory import finish_peak_memory, measure_peak_memory, start_peak_memory
from benchmarks.report import add_output_args, format_table, markdown_report, plot_results, write_csv
from benchmarks.timing import measure_latency_torch
from benchmarks.training import published_accuracy, read_published, train_and_eval
from utils.general import LOGGER, increment_path

ROOT = Path(__file__).resolve().parents[1]
STEM = "backbones"  # file stem of the CSV, PNG and markdown (the README links benchmarks/results/backbones.*)
COMMAND = "python -m benchmarks"
# timed beside ONNX Runtime, float32; export.py writes and verifies each. Their INT8 is left out: ncnn's is not
# reachable from pip, MNN 3.6.1 computes its INT8 models wrongly on x86 and OpenVINO's needs nncf (optional).
RUNTIMES = ("openvino", "ncnn", "mnn")


def build_model(cfg: str | Path, nc: int, seed: int = 0):
    """The model as a training run would build it (same nc, same seeded initialisation)."""
    from models.yolo import Model
    torch.manual_seed(seed)
    return Model(cfg, nc=nc, verbose=False)


def model_size(model, imgsz: int) -> tuple[int, float]:
    """(parameters, GFLOPs at imgsz), counted as YOLOv5's model summary counts them."""
    from utils.torch_utils import model_flops
    params = sum(p.numel() for p in model.parameters())
    gflops = model_flops(model, imgsz)
    if gflops is None:
        raise Skip("thop is not installed")
    return params, gflops


def save_untrained(model, file: Path) -> Path:
    """A checkpoint of the freshly built model, for --epochs 0 (speed and size do not depend on the weights)."""
    from utils.checkpoint import make_checkpoint, save_checkpoint
    file.parent.mkdir(parents=True, exist_ok=True)
    return Path(save_checkpoint(make_checkpoint(model, epoch=-1), file))


def export_onnx(weights: str | Path, imgsz: int, int8: bool = False, data: str | Path | None = None,
                calib_images: int | None = None) -> dict[str, Path]:
    """Files written by export.run for weights: {'fp32': .onnx} plus {'int8': _int8.onnx} (static INT8 calibrated
    on data's train images) when int8. The FP32-vs-INT8 mAP check of export.py is not run here."""
    try:
        import export
    except ImportError as e:
        raise Skip(f"export.py is not available ({e})") from None
    kw = dict(weights=str(weights), include=("onnx",), imgsz=(imgsz, imgsz), device="cpu")
    if int8:
        kw.update(int8=True, data=str(data), check_int8=False)
        if calib_images:
            kw["calib_images"] = calib_images
    files = [Path(f) for f in export.run(**kw)]
    onnx = [f for f in files if f.suffix == ".onnx" and f.is_file()]
    out = {"fp32": next((f for f in onnx if not f.stem.endswith("_int8")), None)}
    if int8:
        out["int8"] = next((f for f in onnx if f.stem.endswith("_int8")), None)
    if out["fp32"] is None:
        raise RuntimeError(f"export.run wrote no FP32 .onnx file (returned {files})")
    return out


def export_runtime(weights: str | Path, imgsz: int, runtime: str) -> Path:
    """The export.run output for runtime (openvino, ncnn, mnn): float32, verified against PyTorch by export.run."""
    import export
    return Path(export.run(weights=str(weights), include=(runtime,), imgsz=(imgsz, imgsz), device="cpu")[0])


def benchmark_model(cfg: str | Path, opt: argparse.Namespace, nc: int, workdir: Path, progress=None) -> Row:
    """Every measurement for one model yaml; a failing stage marks its columns and the others still run."""
    cfg = Path(cfg)
    row = Row(model=cfg.stem, cfg=str(cfg), epochs=opt.epochs, imgsz=opt.imgsz,
              train_imgsz=opt.train_imgsz or opt.imgsz, batch_size=opt.batch_size, optimizer=opt.optimizer,
              nbs=opt.nbs, hyp=opt.hyp or "train.py default", seed=opt.seed, data=Path(str(opt.data)).name,
              threads=opt.threads, warmup=opt.warmup, runs=opt.runs)

    def step(name: str) -> None:
        if progress is not None:
            progress.set_postfix_str(f"{cfg.stem}: {name}")

    step("build")
    model = row.stage(("params", "gflops"), lambda: build_model(cfg, nc, opt.seed), keep=True)
    if model is None:  # the yaml does not build: nothing else can run
        row.skip([c for c in METRIC_COLUMNS if c not in row], "the model does not build")
        return row
    row.stage(("params", "gflops"), lambda m=model: model_size(m, opt.imgsz))

    weights = None
    row["map_from"] = "none"
    if opt.accuracy_rows is not None:  # the published mAP of this recipe; speed is measured on untrained weights
        res = row.stage(("map50", "map50_95", "train_s"), lambda: published_accuracy(
            opt.accuracy_rows, cfg.stem, row, str(opt.accuracy_from)), keep=True)
        if res is not None:
            row.update(res, map_from=str(opt.accuracy_from))
    elif opt.epochs > 0:
        step(f"train {opt.epochs} epochs")
        res = row.stage(("map50", "map50_95", "train_s"), lambda: train_and_eval(
            cfg, opt.data, opt.epochs, opt.train_imgsz or opt.imgsz, opt.seed, opt.batch_size, opt.hyp, opt.workers,
            workdir / "train", cfg.stem, opt.optimizer, opt.nbs, not opt.retrain,
            reuse_from=sorted(workdir.parent.glob("*/train"))), keep=True)
        if res is not None:
            row.update(map50=res["map50"], map50_95=res["map50_95"], train_s=res["train_s"], map_from="this run")
            weights = res["weights"]
    else:
        row.skip(("map50", "map50_95", "train_s"), "--epochs 0 (no training)")
    if weights is None:  # speed, memory and size do not depend on the weights' values
        weights = row.stage(("weights",), lambda m=model: save_untrained(m, workdir / "weights" / f"{cfg.stem}.pt"),
                            keep=True)
        if weights is None:
            row.pop("weights")
            row.skip([c for c in METRIC_COLUMNS if c not in row], "no weights file to load or export")
            return row
    del model

    step("PyTorch latency")
    fused_file = workdir / "weights" / f"{cfg.stem}_fused_module.pt"

    def torch_latency():
        from models.experimental import attempt_load
        fused = attempt_load(weights, fuse=True)
        fused_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(fused, fused_file)  # the memory probe loads this exact module
        return measure_latency_torch(fused, opt.imgsz, opt.threads, opt.runs, opt.warmup)

    row.stage(("torch_ms",), torch_latency)
    probe = None  # the PyTorch memory probe runs in a child process while the (untimed) export runs here
    if row.get("torch_ms", NA) == NA:
        row.skip(("torch_mem_mb",), "no fused PyTorch model to load")
    else:
        probe = row.stage(("torch_mem_mb",), lambda: start_peak_memory("torch", fused_file, opt.imgsz, opt.threads),
                          keep=True)

    step("ONNX export, PyTorch memory")
    try:
        files = export_onnx(weights, opt.imgsz, not opt.no_int8, opt.data, opt.calib_images)
    except Exception as e:  # INT8 quantisation may be what failed: FP32 on its own may still export
        files, reason = None, failure_reason(e)
        if not opt.no_int8:
            row.skip(("ort_int8_ms", "ort_int8_mem_mb", "onnx_int8_mb"), reason)
            files = row.stage(("ort_fp32_ms", "ort_fp32_mem_mb", "onnx_fp32_mb"),
                              lambda: export_onnx(weights, opt.imgsz, False), keep=True)
        else:
            row.skip(("ort_fp32_ms", "ort_fp32_mem_mb", "onnx_fp32_mb"), reason)
    if probe is not None:  # collected before any timing: the child must not compete for the cores
        row.stage(("torch_mem_mb",), lambda: finish_peak_memory(probe))
    timed = {}  # latency column stem -> exported file, all timed in turns in one child process
    for tag in ("fp32", "int8"):
        cols = (f"ort_{tag}_ms", f"ort_{tag}_mem_mb", f"onnx_{tag}_mb")
        onnx = (files or {}).get(tag)
        if onnx is None:
            if tag == "int8" and opt.no_int8:
                row.skip(cols, "--no-int8")
            elif row.get(cols[2]) != NA:  # not already explained by a failed export
                row.skip(cols, "export.run returned no such file")
            continue
        row[f"onnx_{tag}_mb"] = onnx.stat().st_size / 2 ** 20
        timed[f"ort_{tag}"] = onnx
        step(f"ORT {tag.upper()} memory")
        row.stage((f"ort_{tag}_mem_mb",), lambda: measure_peak_memory("onnx", onnx, opt.imgsz, opt.threads))
    timed.update(export_runtimes(row, weights, opt, step))
    step("latency per runtime")
    if timed:
        times, failed = time_runtimes_in_child(timed, opt.imgsz, opt.threads, opt.runs, opt.warmup)
        for k in timed:
            if k in times:
                row[f"{k}_ms"] = times[k]
            else:
                row.skip((f"{k}_ms",), failed.get(k, "not timed"))
    best = fastest_runtime(row)
    if best is None:
        row.skip(("fastest", "fastest_ms"), "no latency measured")
    else:
        row["fastest"], row["fastest_ms"] = best
    return row


def export_runtimes(row: Row, weights: Path, opt: argparse.Namespace, step) -> dict[str, Path]:
    """{'<runtime>_fp32': file} for each runtime in opt.runtimes that exports; the columns of the others get their
    reason (not requested, package missing, export failed)."""
    out = {}
    for rt in RUNTIMES:
        if rt not in opt.runtimes:
            row.skip((f"{rt}_fp32_ms",), "not in --runtimes")
            continue
        step(f"{rt} export")
        f = row.stage((f"{rt}_fp32_ms",), lambda rt=rt: export_runtime(weights, opt.imgsz, rt), keep=True)
        if f is not None:
            out[f"{rt}_fp32"] = f
    return out


def expand_cfgs(cfgs) -> list[Path]:
    """Model yamls from paths or glob patterns (quoted globs work too), in order, without duplicates."""
    out = []
    for c in cfgs:
        if any(ch in str(c) for ch in "*?["):
            matches = sorted(glob.glob(str(c))) or sorted(glob.glob(str(ROOT / str(c))))
            if not matches:
                raise FileNotFoundError(f"--cfgs {c}: no model yaml matches")
        else:
            matches = [c]
        for m in matches:
            if Path(m) not in out:
                out.append(Path(m))
    return out


def run(data="data/shapes.yaml", imgsz: int = 320, cfgs=("models/yolov5n*.yaml",), epochs: int = 0,
        batch_size: int = 16, hyp: str | None = "hyp.scratch-low.yaml", seed: int = 0, workers: int = 2,
        train_imgsz: int | None = None, optimizer: str = "SGD", nbs: int = 64, retrain: bool = False,
        threads: int = 2, runs: int = 50, warmup: int = 10, no_int8: bool = False, calib_images: int | None = None,
        runtimes=RUNTIMES, accuracy_from=None, out=None, project=ROOT / "runs/benchmark", name: str = "exp",
        exist_ok: bool = False, command: str | None = None) -> list[dict]:
    """Benchmark every model yaml in the run folder project/name (incremented unless exist_ok); writes
    backbones.csv/.png/.md there, or into `out` when given, and returns the rows. runtimes: which of openvino,
    ncnn, mnn to export and time beside PyTorch and ONNX Runtime. accuracy_from: a backbones.csv whose mAP columns
    are reused for the rows of the same recipe instead of training (latency does not depend on the weights)."""
    from tqdm import tqdm

    from utils.data.dataloaders import check_dataset
    if epochs < 0:
        raise ValueError(f"--epochs must be >= 0, got {epochs}")
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise ValueError(f"--runtimes {' '.join(unknown)}: unknown; choose from {' '.join(RUNTIMES)}")
    accuracy_rows = None
    if accuracy_from is not None:
        if epochs <= 0:
            raise ValueError("--accuracy-from reuses the mAP of one training recipe: give that recipe's --epochs "
                             "(and its --train-imgsz, --batch-size, --optimizer, --nbs, --hyp, --seed)")
        accuracy_rows = read_published(accuracy_from)  # read now: --out may be the same folder
    cfgs = expand_cfgs(cfgs)
    data_dict = check_dataset(data)  # generates the default dataset on first use; a bad yaml stops here
    opt = argparse.Namespace(data=data, imgsz=imgsz, epochs=epochs, batch_size=batch_size, hyp=hyp, seed=seed,
                             train_imgsz=train_imgsz, optimizer=optimizer, nbs=nbs, retrain=retrain,
                             workers=workers, threads=threads, runs=runs, warmup=warmup, no_int8=no_int8,
                             calib_images=calib_images, runtimes=tuple(runtimes), accuracy_from=accuracy_from,
                             accuracy_rows=accuracy_rows)
    workdir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    out = Path(out) if out else workdir
    machine = machine_info()
    LOGGER.info(f"benchmarks: {len(cfgs)} models at {imgsz}px on {machine['cpu']} ({machine['cores']} cores, "
                f"{threads} threads), torch {machine['torch_version']}, onnxruntime {machine['onnxruntime_version']}")
    load = load_1min(machine)
    if load is not None and load >= 0.5 * (machine["cores"] or 1):
        LOGGER.warning(f"WARNING ⚠️ load average {load:.1f} on {machine['cores']} cores: other jobs compete for "
                       f"the CPU and will inflate the latencies (each row records the load it was measured under)")
    rows = []
    pbar = tqdm(cfgs, desc="benchmarks", unit="model")
    for cfg in pbar:
        row = benchmark_model(cfg, opt, int(data_dict["nc"]), workdir, pbar)
        machine["load_avg"] = machine_info()["load_avg"]  # per row: how busy the machine was when it was timed
        rows.append(finish_row(row, machine))
        write_csv(rows, out / f"{STEM}.csv")  # partial results survive an interrupted run
    csv_file = write_csv(rows, out / f"{STEM}.csv")
    trained = f", {epochs} epochs at {train_imgsz or imgsz}px" if epochs else ""
    title = (f"{Path(str(data)).name}, latency at {imgsz}px{trained} | {machine['cpu']}, {machine['cores']} cores, "
             f"{threads} threads")
    png = plot_results(rows, out / f"{STEM}.png", title)
    table = format_table(rows)
    md = out / f"{STEM}.md"
    md.write_text(markdown_report(rows, table, machine, command, png.name, opt))
    LOGGER.info(f"\n{table}\n\nResults saved to {csv_file}, {png} and {md}")
    return rows


def parse_opt(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=COMMAND,
                                description="Benchmark model yamls: params, GFLOPs, CPU latency, memory, mAP")
    p.add_argument("--data", default="data/shapes.yaml", help="dataset yaml (nc, INT8 calibration, training)")
    p.add_argument("--imgsz", "--img", type=int, default=320, help="square input size (pixels)")
    p.add_argument("--cfgs", nargs="+", default=["models/yolov5n*.yaml"], help="model yamls or glob patterns")
    p.add_argument("--epochs", type=int, default=0, help="train each model this many epochs (0: no mAP)")
    p.add_argument("--batch-size", type=int, default=16, help="training batch size")
    p.add_argument("--hyp", default="hyp.scratch-low.yaml", help="hyperparameters yaml (the recipe for all models)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and training")
    p.add_argument("--train-imgsz", type=int, default=None, help="training and mAP image size (default: --imgsz)")
    p.add_argument("--optimizer", choices=["SGD", "Adam", "AdamW"], default="SGD", help="training optimizer")
    p.add_argument("--nbs", type=int, default=64, help="nominal batch size for training (train.py --nbs)")
    p.add_argument("--retrain", action="store_true", help="train again even if a finished run of the same recipe "
                                                          "exists under --project")
    p.add_argument("--workers", type=int, default=2, help="dataloader workers for training")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch and ONNX Runtime inference")
    p.add_argument("--runs", type=int, default=50, help="timed runs per latency (median reported)")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs before timing")
    p.add_argument("--no-int8", action="store_true", help="skip the INT8 ONNX export")
    p.add_argument("--calib-images", type=int, default=None, help="INT8 calibration images (default: export.py's)")
    p.add_argument("--runtimes", nargs="*", default=list(RUNTIMES), help="deployment runtimes to export and time "
                   "beside PyTorch and ONNX Runtime (default: openvino ncnn mnn; none: no value)")
    p.add_argument("--accuracy-from", default=None, help="a backbones.csv (e.g. benchmarks/results/backbones.csv): "
                   "reuse its mAP for rows of the same recipe instead of training; latency measured anew")
    add_output_args(p, "exp", "the CSV, PNG and markdown", "folder for the CSV, PNG and markdown instead of "
                    "project/name (benchmarks/results: the README's published table)")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    opt = parse_opt(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join([COMMAND, *(shlex.quote(a) for a in argv)])
    return run(**vars(opt), command=command)
