"""The tree's layout: YOLOv5's import paths and this project's old flat utils paths still import (as the very module
of the new home, so a monkeypatch through either name reaches the code), no file shadows a folder of the same name,
and library code (utils/, models/) never imports the scripts."""
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Old flat path -> its home now. The first two are YOLOv5's import paths too.
MOVED = {
    "utils.dataloaders": "utils.data.dataloaders",
    "utils.augmentations": "utils.data.augmentations",
    "utils.synthetic": "utils.data.synthetic",
    "utils.convert": "utils.data.convert",
    "utils.nms": "utils.inference.nms",
    "utils.predictor": "utils.inference.predictor",
    "utils.sources": "utils.inference.sources",
    "utils.loss": "utils.training.loss",
    "utils.optim": "utils.training.optim",
    "utils.autoanchor": "utils.training.autoanchor",
    "utils.callbacks": "utils.training.callbacks",
    "utils.evolve": "utils.training.evolve",
    "utils.transfer": "utils.training.transfer",
}

# Names scripts written for YOLOv5 import from each of its module paths.
YOLOV5_NAMES = {
    "utils.general": ("LOGGER", "check_yaml", "increment_path", "colorstr", "init_seeds", "labels_to_class_weights"),
    "utils.dataloaders": ("create_dataloader", "LoadImagesAndLabels", "img2label_paths", "IMG_FORMATS", "exif_size"),
    "utils.augmentations": ("letterbox",),
    "utils.torch_utils": ("select_device", "de_parallel", "time_sync", "fuse_conv_and_bn", "EarlyStopping"),
    "utils.metrics": ("ConfusionMatrix", "fitness"),
    "utils.plots": ("Annotator", "colors", "plot_images", "plot_results", "plot_labels"),
    "models.common": ("Conv", "C3", "SPPF", "Concat", "Bottleneck", "DWConv"),
    "models.experimental": ("attempt_load",),
    "models.yolo": ("Model", "Detect"),
}

SCRIPTS = ("train", "val", "detect", "export", "hubconf", "benchmarks")


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_old_path_is_the_new_module(old, new):
    """`import utils.nms`, `from utils import nms` and `utils.inference.nms` are one module object."""
    mod = importlib.import_module(new)
    assert importlib.import_module(old) is mod
    parent, _, leaf = old.rpartition(".")
    assert getattr(importlib.import_module(parent), leaf) is mod  # `from utils import nms`
    public = [n for n in vars(mod) if not n.startswith("__")]
    exec_ns: dict = {}
    exec(f"from {old} import {', '.join(public)}", exec_ns)  # every name, private helpers too
    assert all(exec_ns[n] is getattr(mod, n) for n in public)


def test_monkeypatch_through_old_path_reaches_new_module(monkeypatch):
    import utils.inference.nms as new
    import utils.nms as old
    monkeypatch.setattr(old, "MAX_WH", 123)
    assert new.MAX_WH == 123


@pytest.mark.parametrize("path", sorted(YOLOV5_NAMES))
def test_yolov5_import_paths(path):
    mod = importlib.import_module(path)
    missing = [n for n in YOLOV5_NAMES[path] if not hasattr(mod, n)]
    assert not missing, f"{path} lacks {missing}"


def test_python_m_old_converter_path_runs(tmp_path):
    """README's `python -m utils.convert voc SRC OUT`: the old path still runs the CLI (bad folder: one line, rc 2)."""
    r = subprocess.run([sys.executable, "-m", "utils.convert", "voc", str(tmp_path / "missing"), str(tmp_path / "o")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "ERROR" in r.stderr + r.stdout


def _tree() -> list[Path]:
    skip = {".git", ".venv", "runs", "datasets", "__pycache__", ".pytest_cache", ".ruff_cache"}
    return [p for p in ROOT.rglob("*") if not skip & set(p.relative_to(ROOT).parts)]


def test_no_file_shares_a_name_with_a_folder():
    """`utils/training.py` beside `utils/training/` (or benchmarks.py beside benchmarks/): one shadows the other."""
    paths = _tree()
    folders = {p for p in paths if p.is_dir()}
    clashes = [str(p.relative_to(ROOT)) for p in paths if p.is_file() and p.with_suffix("") in folders
               and p.suffix == ".py"]
    assert not clashes


def _imported_modules(src: str) -> set[str]:
    """Top-level names of every module `src` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_library_never_imports_the_scripts():
    """Dependencies point one way: scripts import utils/ and models/, never the reverse (lazy imports included)."""
    bad = {}
    for pkg in ("utils", "models"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            hits = _imported_modules(f.read_text()) & set(SCRIPTS)
            if hits:
                bad[str(f.relative_to(ROOT))] = sorted(hits)
    assert not bad, f"library modules importing scripts: {bad}"


def test_scan_sees_a_script_import():
    """The scan above is not blind: a lazy `import val` inside a function is found."""
    assert _imported_modules("def f():\n    import val\n    from train import run\n") == {"val", "train"}
