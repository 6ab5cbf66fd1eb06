"""python -m benchmarks (the backbone table): one end-to-end run on two tiny yamls (plus a broken one), the pieces
it is built from, and where the benches write."""
from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from benchmarks import backbones, bench_models, cells, machine, report, timing, training
from models.yolo import Model
from utils.torch_utils import model_flops

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["red", "green", "blue"]


def _write_dataset(root: Path) -> Path:
    """Tiny YOLO-format dataset: 64 px images with 1-2 coloured boxes each, 8 train and 4 val."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            im = np.full((64, 64, 3), 60, np.uint8)
            rows = []
            for q in rng.permutation(4)[:1 + i % 2]:
                c = int(rng.integers(0, 3))
                w, h = (int(v) for v in rng.integers(10, 28, 2))
                x1 = (q % 2) * 32 + int(rng.integers(0, 32 - w + 1))
                y1 = (q // 2) * 32 + int(rng.integers(0, 32 - h + 1))
                color = [0, 0, 0]
                color[2 - c] = 255
                cv2.rectangle(im, (x1, y1), (x1 + w - 1, y1 + h - 1), color, -1)
                rows.append(f"{c} {(x1 + w / 2) / 64:.6f} {(y1 + h / 2) / 64:.6f} {w / 64:.6f} {h / 64:.6f}")
            cv2.imwrite(str(root / "images" / split / f"{split}{i}.png"), im)
            (root / "labels" / split / f"{split}{i}.txt").write_text("\n".join(rows) + "\n")
    data = root / "tiny.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                    "names": dict(enumerate(NAMES))}))
    return data


def _write_yamls(root: Path) -> list[Path]:
    """yolov5n at width 0.125, the same with Ghost convs and C3Ghost in the backbone, and a yaml that cannot build."""
    base = yaml.safe_load((ROOT / "models" / "yolov5n.yaml").read_text())
    base["width_multiple"] = 0.125
    ghost = yaml.safe_load(yaml.safe_dump(base))
    for row in ghost["backbone"][1:9]:
        row[2] = {"Conv": "GhostConv", "C3": "C3Ghost"}.get(row[2], row[2])
    broken = yaml.safe_load(yaml.safe_dump(base))
    broken["backbone"][2][2] = "NoSuchBlock"
    files = []
    for name, d in (("tiny_v5", base), ("tiny_ghost", ghost), ("tiny_broken", broken)):
        files.append(root / f"{name}.yaml")
        files[-1].write_text(yaml.safe_dump(d, sort_keys=False))
    return files



@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One benchmark run at imgsz 64, --epochs 1, few latency runs; returns (rows from the CSV, out dir, cfgs, data)."""
    tmp = tmp_path_factory.mktemp("bench")
    data = _write_dataset(tmp / "data")
    cfgs = _write_yamls(tmp)
    out = tmp / "results"
    backbones.run(data=str(data), imgsz=64, cfgs=[str(c) for c in cfgs], epochs=1, batch_size=4, seed=0,
                  workers=0, threads=1, runs=3, warmup=1, calib_images=4, out=out, name="bench",
                  project=tmp / "runs", command="python bench", runtimes=())  # OpenVINO/ncnn/MNN: tested below
    with open(out / "backbones.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, out, cfgs, data


def test_csv_every_cell_filled_or_explained(bench_run):
    rows, _, cfgs, _ = bench_run
    assert [r["model"] for r in rows] == [c.stem for c in cfgs]
    assert list(rows[0]) == cells.COLUMNS
    for r in rows:
        for col, v in r.items():
            assert v != "", f"{r['model']}: empty '{col}'"
            if v == cells.NA:  # every n/a names its column in the reasons
                assert any(col in part.split(":")[0].split("+") for part in r["skipped"].split("; ")), (r["model"], col)


def test_tiny_models_measured(bench_run):
    rows, _, cfgs, _ = bench_run
    for r, cfg in zip(rows[:2], cfgs[:2]):
        torch.manual_seed(0)
        model = Model(cfg, nc=len(NAMES), verbose=False)
        assert int(r["params"]) == sum(p.numel() for p in model.parameters())
        assert float(r["gflops"]) == pytest.approx(model_flops(model, 64), rel=1e-4)
        for col in ("torch_ms", "torch_mem_mb", "train_s"):
            assert float(r[col]) > 0, (r["model"], col, r["skipped"])
        assert 0 <= float(r["map50_95"]) <= float(r["map50"]) <= 1
        assert (r["epochs"], r["imgsz"], r["threads"], r["runs"]) == ("1", "64", "1", "3")
        assert (r["cpu"], int(r["cores"]), r["torch_version"]) == (machine.cpu_model(), os.cpu_count(),
                                                                   torch.__version__)
        for col in ("ort_fp32_ms", "ort_fp32_mem_mb", "onnx_fp32_mb"):
            assert float(r[col]) > 0, (r["model"], col, r["skipped"])
    assert rows[0]["params"] != rows[1]["params"]  # two different models, not one measured twice



def test_rerun_reuses_finished_training_and_remeasures_speed(bench_run, monkeypatch, tmp_path):
    rows, _, cfgs, data = bench_run
    project = Path(rows[0]["cfg"]).parent / "runs"  # bench_run's --project
    import train

    def no_training(**kw):
        raise AssertionError("trained again although a finished run of the same recipe exists")

    monkeypatch.setattr(train, "run", no_training)
    # no --out: the results go to a new run folder (bench2), the training is found in bench_run's folder (bench)
    again = backbones.run(data=str(data), imgsz=64, cfgs=[str(cfgs[0])], epochs=1, batch_size=4, seed=0, workers=0,
                          threads=1, runs=2, warmup=0, no_int8=True, name="bench", project=project, runtimes=())
    assert (project / "bench2" / "backbones.csv").is_file() and not (project / "bench" / "backbones.csv").exists()
    # the CSV keeps 6 significant digits (report.py), so the reread values agree to 5e-6 relative
    assert (again[0]["map50"], again[0]["map50_95"]) == pytest.approx((float(rows[0]["map50"]),
                                                                       float(rows[0]["map50_95"])), rel=1e-5)
    assert float(again[0]["torch_ms"]) > 0 and again[0]["train_imgsz"] == 64
    # another recipe (here the training size) is not the same run: it must train, which the stub refuses
    other = backbones.run(data=str(data), imgsz=64, train_imgsz=32, cfgs=[str(cfgs[0])], epochs=1, batch_size=4,
                          workers=0, threads=1, runs=2, warmup=0, no_int8=True, out=tmp_path, name="bench",
                          project=project, runtimes=())
    assert other[0]["map50"] == cells.NA and "trained again" in other[0]["skipped"]


def test_runtime_columns_fastest_and_accuracy_from_a_published_csv(bench_run, monkeypatch, tmp_path):
    rows, out, cfgs, data = bench_run
    import train

    def no_training(**kw):
        raise AssertionError("trained although --accuracy-from has a row of this recipe")

    monkeypatch.setattr(train, "run", no_training)
    avail = [rt for rt, pkgs in (("openvino", ("openvino",)), ("ncnn", ("ncnn", "pnnx")), ("mnn", ("MNN",)))
             if all(importlib.util.find_spec(p) for p in pkgs)]
    published = out / "backbones.csv"
    got = backbones.run(data=str(data), imgsz=64, cfgs=[str(cfgs[0])], epochs=1, batch_size=4, seed=0, workers=0,
                        threads=1, runs=1, warmup=0, calib_images=4, runtimes=avail, accuracy_from=published,
                        out=tmp_path, project=tmp_path / "runs")[0]
    assert (got["map50"], got["map50_95"]) == pytest.approx((float(rows[0]["map50"]), float(rows[0]["map50_95"])))
    assert got["map_from"] == str(published) and not (tmp_path / "runs" / "exp" / "train").exists()
    timed = ["torch_ms", "ort_fp32_ms", "ort_int8_ms"] + [f"{rt}_fp32_ms" for rt in avail]
    for col in timed:
        assert float(got[col]) > 0, (col, got["skipped"])
    for col in set(cells.LATENCY_TITLES) - set(timed):  # not requested here: n/a with the reason
        assert got[col] == cells.NA and f"{col}" in got["skipped"]
    lat = {c: float(got[c]) for c in timed}
    assert got["fastest_ms"] == min(lat.values()) and got["fastest"] == cells.LATENCY_TITLES[min(lat, key=lat.get)]
    md = (tmp_path / "backbones.md").read_text()
    assert f"reused from {published}" in md and "1 threads in every runtime" in md and "| Fastest |" in md
    if len(avail) < 3:
        pytest.skip(f"timed {', '.join(avail) or 'no extra runtime'}; pip install openvino ncnn pnnx MNN for all")


def test_accuracy_from_takes_only_rows_of_the_same_recipe(tmp_path):
    recipe = dict(epochs=10, train_imgsz=192, batch_size=16, optimizer="Adam", nbs=16, hyp="hyp.scratch-adam.yaml",
                  seed=0, data="shapes.yaml")
    rows = [{"model": "m", "map50": "0.5", "map50_95": "0.3", "train_s": "12.5", **{k: str(v) for k, v in
                                                                                     recipe.items()}}]
    assert training.published_accuracy(rows, "m", recipe) == {"map50": 0.5, "map50_95": 0.3, "train_s": 12.5}
    with pytest.raises(cells.Skip, match=r"row is of another recipe \(seed 0 there, 1 here\)"):
        training.published_accuracy(rows, "m", {**recipe, "seed": 1})
    with pytest.raises(cells.Skip, match="no other_model row"):
        training.published_accuracy(rows, "other_model", recipe)
    f = tmp_path / "x.csv"
    f.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a backbones.csv"):
        training.read_published(f)
    with pytest.raises(ValueError, match="--accuracy-from reuses the mAP of one training recipe"):
        backbones.run(cfgs=["models/yolov5n.yaml"], epochs=0, accuracy_from=f, project=tmp_path)
    with pytest.raises(ValueError, match="--runtimes tflite: unknown"):
        backbones.run(cfgs=["models/yolov5n.yaml"], runtimes=("tflite",), project=tmp_path)


def test_runtime_timing_child_names_the_runtime_that_crashed(tmp_path, monkeypatch):
    from benchmarks import bench_runtimes
    fake = tmp_path / "python"  # a child that starts loading the ncnn model and dies of a segfault, every time
    fake.write_text("#!/bin/sh\necho 'start ort_fp32'\necho 'ok ort_fp32'\necho 'start ncnn_fp32'\nkill -SEGV $$\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    times, failed = bench_runtimes.time_runtimes_in_child({"ort_fp32": "a.onnx", "ncnn_fp32": "b_ncnn_model"},
                                                          64, 1, 1, 0)
    # ncnn is dropped and the rest retried; the retry crashes too, now in no model of its own: nothing is timed
    assert times == {} and failed == {"ncnn_fp32": "the runtime crashed (SIGSEGV) running the model",
                                      "ort_fp32": "timing process crashed (SIGSEGV)"}


def test_recipe_ignores_yaml_comments_but_not_rows(tmp_path):
    src = (ROOT / "models" / "yolov5n.yaml").read_text()
    a, b, c = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"
    a.write_text(src)
    b.write_text("# a new comment line\n" + src.replace("# P3/8", "# small objects"))
    c.write_text(src.replace("width_multiple: 0.25", "width_multiple: 0.5"))
    args = ("shapes.yaml", 10, 192, 0, 16, "hyp.scratch-adam.yaml", "Adam", 16)
    ra, rb, rc = (training.training_recipe(f, *args) for f in (a, b, c))
    assert ra["model_sha1"] == rb["model_sha1"] != rc["model_sha1"]


def test_broken_yaml_skipped_with_reason(bench_run):
    rows, *_ = bench_run
    r = rows[2]
    assert r["params"] == r["torch_ms"] == r["map50_95"] == cells.NA
    assert "NoSuchBlock" in r["skipped"] and "does not build" in r["skipped"]
    assert r["cpu"] == machine.cpu_model()  # the machine is recorded for failed rows too


def test_png_and_markdown_written(bench_run):
    rows, out, *_ = bench_run
    png = out / "backbones.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    im = cv2.imread(str(png))
    assert im is not None and im.shape[0] > 300 and im.shape[1] > 300
    md = (out / "backbones.md").read_text()
    assert "| tiny_v5 |" in md and "| tiny_ghost |" in md and "python bench" in md and "backbones.png" in md
    assert "tiny_broken: " in md  # the skip reason is listed under the table


def test_pareto_front():
    # (latency, mAP): 0 fastest; 4 ties 0 on mAP but is slower; 1 slower and worse than 2; 3 slowest and best
    x = [10.0, 20.0, 15.0, 30.0, 12.0]
    y = [0.30, 0.25, 0.40, 0.50, 0.30]
    assert report.pareto_front(x, y) == [0, 2, 3]
    assert report.pareto_front([5.0], [0.1]) == [0]


def _front(ax):
    lines = [ln for ln in ax.get_lines() if "Pareto" in ln.get_label()]
    assert len(lines) <= 1
    return (list(lines[0].get_xdata()), list(lines[0].get_ydata())) if lines else None


def test_chart_one_panel_per_backend_with_its_front_and_gflops_fallback():
    rows = [{"model": m, "torch_ms": t, "ort_fp32_ms": o, "map50_95": a, "gflops": g}
            for m, t, o, a, g in (("a", 9, 10, 0.30, 1.0), ("b", 8, 20, 0.25, 2.0), ("c", 14, 15, 0.40, 3.0))]
    fig = report.make_chart(rows, "machine")
    ort_ax, torch_ax = fig.axes  # no INT8 column in any row: no INT8 panel
    assert "ONNX Runtime FP32" in ort_ax.get_xlabel() and ort_ax.get_ylabel() == "mAP50-95"
    assert _front(ort_ax) == ([10, 15], [0.30, 0.40])  # b is slower and worse than a under ONNX Runtime ...
    assert "PyTorch" in torch_ax.get_xlabel() and _front(torch_ax) == ([8, 9, 14], [0.25, 0.30, 0.40])  # ... not here
    for ax in fig.axes:
        assert sorted(t.get_text() for t in ax.texts) == ["a", "b", "c"]
    assert "machine" in fig._suptitle.get_text()

    rows[1]["ort_fp32_ms"] = cells.NA  # a model without ONNX is left out of that panel only
    for r in rows:
        r["map50_95"] = cells.NA
    ort_ax, torch_ax = report.make_chart(rows).axes
    assert "GFLOPs" in ort_ax.figure._suptitle.get_text() and ort_ax.get_ylabel() == "GFLOPs"
    assert _front(ort_ax) is None and _front(torch_ax) is None  # no mAP: no front
    assert sorted(tuple(p) for p in ort_ax.collections[0].get_offsets()) == [(10, 1.0), (15, 3.0)]
    assert sorted(tuple(p) for p in torch_ax.collections[0].get_offsets()) == [(8, 2.0), (9, 1.0), (14, 3.0)]


def test_chart_marks_each_models_fastest_runtime():
    rows = [{"model": m, "fastest_ms": f, "fastest": rt, "ort_fp32_ms": o, "map50_95": a}
            for m, f, rt, o, a in (("a", 3, "ORT INT8", 5, 0.30), ("b", 4, "ncnn FP32", 4, 0.35),
                                   ("c", 2, "ORT INT8", 6, 0.20))]
    fast_ax, ort_ax = report.make_chart(rows).axes  # the fastest-runtime panel comes first
    assert "fastest runtime" in fast_ax.get_xlabel() and "ONNX Runtime FP32" in ort_ax.get_xlabel()
    assert _front(fast_ax) == ([2, 3, 4], [0.20, 0.30, 0.35])  # the front over each model's fastest latency
    legend = [t.get_text() for t in fast_ax.get_legend().get_texts()]
    assert {"ORT INT8", "ncnn FP32"} <= set(legend)
    by_rt = {c.get_label(): sorted(tuple(p) for p in c.get_offsets()) for c in fast_ax.collections}
    assert by_rt == {"ORT INT8": [(2, 0.20), (3, 0.30)], "ncnn FP32": [(4, 0.35)]}


def test_chart_labels_of_coinciding_models_do_not_overlap():
    rows = [{"model": m, "ort_fp32_ms": o, "map50_95": a}
            for m, o, a in (("yolov5n_RepVGG", 6.0, 0.400), ("yolov5n_ReLU", 6.05, 0.401), ("far", 12.0, 0.2))]
    ax = report.make_chart(rows).axes[0]
    ax.figure.canvas.draw()
    boxes = {t.get_text(): t.get_window_extent() for t in ax.texts}
    assert not boxes["yolov5n_RepVGG"].overlaps(boxes["yolov5n_ReLU"])
    assert [t.xyann for t in ax.texts if t.get_text() == "far"] == [(5, 4)]  # a lone point keeps the usual place


def test_latency_torch_counts_runs_and_threads():
    torch.set_num_threads(2)  # so that the requested 1 thread is a change that must be undone
    calls = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            calls.append((tuple(x.shape), torch.get_num_threads(), x.is_contiguous(memory_format=torch.channels_last)))
            return x

    before = torch.get_num_threads()
    ms = timing.measure_latency_torch(Probe(), 32, threads=1, runs=5, warmup=2)
    # the input is channels_last by default: the CPU path DetectBackend runs (NCHW would be the slow path)
    assert ms >= 0 and len(calls) == 7 and set(calls) == {((1, 3, 32, 32), 1, True)}
    assert torch.get_num_threads() == before == 2  # the caller's thread setting is restored
    calls.clear()
    timing.measure_latency_torch(Probe(), 32, threads=1, runs=1, warmup=0, channels_last=False)
    assert calls == [((1, 3, 32, 32), 1, False)]
    torch.set_num_threads(1)
    with pytest.raises(ValueError, match="runs"):
        timing.measure_latency_torch(Probe(), 32, runs=0)


def test_results_csv_best_fitness_row(tmp_path):
    f = tmp_path / "results.csv"
    head = ["epoch", "train/box_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"]
    lines = [",".join(f"{h:>20}" for h in head)] + [",".join(f"{v:>20}" for v in r) for r in
                                                     ((0, 0.1, 0.50, 0.20), (1, 0.1, 0.40, 0.25), (2, 0.1, 0.9, 0.1))]
    f.write_text("\n".join(lines) + "\n")
    assert training._results_csv_metrics(f) == (0.40, 0.25)  # fitness 0.1*mAP50 + 0.9*mAP50-95 picks epoch 1


def test_stage_records_failure_and_keeps_going():
    row = cells.Row(model="m")
    assert row.stage(("a", "b"), lambda: (1, 2.5)) == (1, 2.5) and (row["a"], row["b"]) == (1, 2.5)
    assert row.stage(("c",), lambda: 1 / 0) is None and row["c"] == cells.NA
    row.stage(("d",), lambda: (_ for _ in ()).throw(cells.Skip("no backend; here")))
    out = cells.finish_row(row, {"cpu": "x"})
    assert out["skipped"] == "c: ZeroDivisionError: division by zero; d: no backend, here; " + \
        "+".join(c for c in cells.COLUMNS if c not in ("model", "a", "b", "c", "d", "cpu", "skipped")) + \
        ": not measured"


def test_cli_bad_arguments_are_one_line_errors():
    for args, msg in ((["--cfgs", "nope*.yaml"], "ERROR: --cfgs nope*.yaml: no model yaml matches"),
                      (["--epochs", "-1", "--cfgs", "models/yolov5n.yaml"], "ERROR: --epochs must be >= 0")):
        p = subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert msg in p.stderr + p.stdout


def _git_status() -> set[str] | None:
    """Every changed, untracked or ignored path of the checkout (`git status`), None outside a git checkout."""
    if shutil.which("git") is None:
        return None
    p = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    return set(p.stdout.splitlines()) if p.returncode == 0 else None


def test_default_run_leaves_the_checkout_unchanged_outside_runs(tmp_path):
    before = _git_status()
    if before is None:
        pytest.skip("not a git checkout")
    runs = ROOT / "runs" / "benchmark"
    folders = set(runs.glob("exp*"))
    data = _write_dataset(tmp_path / "data")
    cfg = _write_yamls(tmp_path)[0]
    try:  # no --project, --name or --out: what a user's first try writes
        backbones.main(["--data", str(data), "--cfgs", str(cfg), "--imgsz", "32", "--epochs", "0", "--runs", "1",
                        "--warmup", "0", "--threads", "1", "--no-int8"])
        new = set(runs.glob("exp*")) - folders
        assert len(new) == 1 and (next(iter(new)) / "backbones.csv").is_file()  # runs/benchmark/exp, exp2, ...
        changed = {line for line in _git_status() - before
                   if not line[3:].startswith("runs/") and "__pycache__" not in line}
        assert not changed, f"a default run changed the checkout outside runs/: {sorted(changed)}"
    finally:
        for f in set(runs.glob("exp*")) - folders:
            shutil.rmtree(f, ignore_errors=True)


def test_bench_models_writes_to_a_run_folder_unless_out_names_a_file(tmp_path):
    cfg = _write_yamls(tmp_path)[0]
    args = ["--cfg", str(cfg), "--imgsz", "32", "--runs", "1", "--threads", "1", "--project", str(tmp_path / "p")]
    for _ in range(2):
        bench_models.main(bench_models.parse_opt(args))
    assert [f.relative_to(tmp_path).as_posix() for f in sorted((tmp_path / "p").rglob("*.md"))] == \
        ["p/models/models.md", "p/models2/models.md"]  # a second run does not overwrite the first
    out = tmp_path / "published" / "models.md"
    text = bench_models.main(bench_models.parse_opt([*args, "--out", str(out)]))
    assert out.read_text() == text and len(list((tmp_path / "p").iterdir())) == 2
    assert report.results_file(None, tmp_path / "q", "export", "export.md") == tmp_path / "q" / "export" / "export.md"


def test_package_keeps_the_former_module_names_and_loads_lazily():
    code = ("import sys, benchmarks; assert 'torch' not in sys.modules, 'import benchmarks loaded torch'; "
            "from benchmarks import NA, run, time_callables; import benchmarks.timing as t; "
            "assert time_callables is t.time_callables and NA == 'n/a'; print(run.__module__)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "benchmarks.backbones", p.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = __import__("benchmarks").nope


def test_bench_nms_crowded_times_every_path_and_checks_they_agree(monkeypatch):
    from benchmarks import bench_nms
    ms = bench_nms.run_crowded(repeat=1, bs=2, n=800)
    assert set(bench_nms.PATHS) <= set(ms) and all(ms[k] > 0 for k in bench_nms.PATHS)
    assert ms["candidates"] > 800  # multi-label: several classes of most anchors
    import utils.inference.nms as nms
    real = nms._kernel_nms  # a path that returned other boxes would fail the run, not pass silently
    monkeypatch.setattr(nms, "_kernel_nms", lambda *a: [d[:-1] for d in real(*a)])
    with pytest.raises(AssertionError, match="differs"):
        bench_nms.run_crowded(repeat=1, bs=2, n=800)
