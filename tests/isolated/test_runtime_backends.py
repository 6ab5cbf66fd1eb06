"""OpenVINO, ncnn and MNN exports as --weights (utils/runtime_backends.py): val.py scores one model the same in
every format, the predictor and detect.py find the .pt's boxes in an export folder, and broken or incomplete
exports are one-line errors.

The exports were verified at export time (export.run runs each in a child process); running them in-process here
is safe for graphs that passed that check.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import export
import val
from models.yolo import Model
from tests.detections import compare_detections
from tests.test_export import _lively, _write_dataset
from utils.backends import BackendError, DetectBackend
from utils.checkpoint import make_checkpoint, save_checkpoint
from utils.export.verify import RTOL, max_rel_diff

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning", "ignore::torch.jit.TracerWarning",
                                        "ignore:`torch.jit.load` is deprecated:FutureWarning")
PACKAGES = ("onnx", "onnxruntime", "openvino", "ncnn", "pnnx", "MNN")
MISSING = [p for p in PACKAGES if importlib.util.find_spec(p) is None]
needs_all = pytest.mark.skipif(bool(MISSING), reason=f"needs {' '.join(MISSING)}: pip install {' '.join(MISSING)}")
S = 64
FORMATS = ("onnx", "torchscript", "openvino", "ncnn", "mnn")
# the ShuffleNetV2 nano: the backbone whose channel shuffle ncnn once crashed on
CFG = "yolov5n_ShuffleNetV2.yaml"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint, data yaml, {format: exported path}) for one lively model, exported (and verified) once."""
    root = tmp_path_factory.mktemp("rtb")
    torch.manual_seed(0)
    model = _lively(Model(ROOT / "models" / CFG, nc=3, verbose=False))
    model.names = {0: "a", 1: "b", 2: "c"}
    ckpt = save_checkpoint(make_checkpoint(model), root / "m.pt")
    data = _write_dataset(root / "data", DetectBackend(ckpt).model)  # labels: the fused model's own detections
    files = export.run(weights=ckpt, imgsz=(S, S), include=FORMATS, data=data)
    return ckpt, data, dict(zip(FORMATS, map(Path, files)))


def _map(data, w, tmp_path, tag) -> np.ndarray:
    # task 'speed' letterboxes every backend's images the same way (square, batch 1), so any difference is the
    # backend's arithmetic
    r = val.run(str(data), weights=str(w), batch_size=1, imgsz=S, device="cpu", workers=0, plots=False,
                task="speed", max_det=1000, project=tmp_path, name=tag, exist_ok=True, trust_weights=True)[0]
    return np.array(r[:4])


@needs_all
def test_val_scores_every_format_like_the_pt(exported, tmp_path):
    ckpt, data, files = exported
    assert (files["openvino"].name, files["ncnn"].name, files["mnn"].name) == (
        "m_openvino_model", "m_ncnn_model", "m.mnn")
    ref = _map(data, ckpt, tmp_path, "pt")
    assert ref[3] > 0.3, f"labels are the model's own detections; mAP50-95 {ref[3]} should be high"
    for fmt, f in files.items():
        b = DetectBackend(f, trusted=True)
        assert b.names == {0: "a", 1: "b", 2: "c"} and b.stride == 32 and b.fixed_imgsz == (S, S)
        # All five run the same fp32 graph (rel. diff ~1e-5, checked <= 3e-4 at export): only detections whose
        # score sits within ~1e-4 of the conf threshold or of a rival box's score can differ, each moving the
        # AP of its class by at most 1/(its class's labels) at one IoU threshold; the issue bounds the total by 0.005
        got = _map(data, f, tmp_path, fmt)
        assert abs(got[3] - ref[3]) <= 0.005 and abs(got[2] - ref[2]) <= 0.005, (fmt, got, ref)


@needs_all
@pytest.mark.parametrize("fmt", ["openvino", "ncnn"])
def test_predictor_on_an_export_folder_finds_the_pt_boxes(exported, fmt):
    from utils.predictor import load
    ckpt, data, files = exported
    images = sorted((data.parent / "images" / "val").glob("*.png"))
    x = torch.from_numpy(np.stack([cv2.imread(str(p))[:, :, ::-1] for p in images])).permute(0, 3, 1, 2) / 255
    pt, rt = DetectBackend(ckpt), DetectBackend(files[fmt])
    with torch.no_grad():
        ya, yb = pt(x), rt(x)  # a batch through a batch-1 export: split and put back together
    # the export-time criterion (utils.export.verify), now through the backend: boxes relative to the largest box
    # value, scores absolute
    assert ya.shape == yb.shape and max_rel_diff(yb.numpy(), ya.numpy(), decoded=True) <= RTOL
    # the predictor sees these same inputs (64 px images need no letterbox), so the measured differences bound its
    # rows: conf = obj * cls moves by <= 2 score errors, x1 = x - w / 2 by <= 1.5 box errors
    d_score = float((ya[..., 4:] - yb[..., 4:]).abs().max())
    d_box = float((ya[..., :4] - yb[..., :4]).abs().max())
    kw = dict(imgsz=S, conf_thres=0.3, iou_thres=0.45, device="cpu")
    ref = load(str(ckpt), **kw)([str(p) for p in images])
    got = load(str(files[fmt]) + "/", **kw)([str(p) for p in images])  # a trailing slash as a shell completes it
    matched, _ = compare_detections(got, ref, score_tol=2 * d_score + 1e-7, box_tol=1.5 * d_box + 1e-5, conf_thres=0.3,
                                    iou_thres=0.45)
    assert matched >= 0.8 * sum(len(r) for r in ref) and matched > 0


@needs_all
def test_detect_and_val_cli_accept_an_export(exported, tmp_path):
    import detect
    _, data, files = exported
    src = data.parent / "images" / "val"
    out = detect.run(weights=str(files["mnn"]), source=str(src), imgsz=(S, S), conf_thres=0.3, device="cpu",
                     save_txt=True, nosave=True, project=tmp_path, name="d")
    assert list((out / "labels").glob("*.txt"))
    opt = val.parse_opt(["--data", str(data), "--weights", str(files["openvino"]), "--imgsz", str(S), "--workers",
                         "0", "--project", str(tmp_path), "--name", "v"])
    assert val.main(opt)[0][0][3] > 0.3  # mAP50-95 of the OpenVINO folder


@needs_all
def test_incomplete_or_bad_exports_are_one_line_errors(exported, tmp_path):
    _, _, files = exported
    cases = []
    for fmt, companion in (("openvino", "m.bin"), ("openvino", "metadata.yaml"), ("ncnn", "model.ncnn.bin"),
                           ("ncnn", "metadata.yaml"), ("mnn", None)):
        src = files[fmt]
        dst = tmp_path / f"{len(cases)}" / src.name
        dst.parent.mkdir()
        if src.is_dir():
            shutil.copytree(src, dst)
            (dst / companion).unlink()
        else:
            shutil.copy(src, dst)  # without its m.mnn.yaml
            companion = dst.name + ".yaml"
        cases.append((dst, companion))
    for path, companion in cases:
        with pytest.raises(BackendError, match="not found") as e:
            DetectBackend(path)
        assert companion in str(e.value) and "\n" not in str(e.value)
    bad = tmp_path / "bad_openvino_model"
    shutil.copytree(files["openvino"], bad)
    for text, msg in (("imgsz: [100000, 100000]\n", "metadata 'imgsz' must be"), ("names: 3\n", "'names' must be"),
                      ("- a\n", "holds no metadata mapping"), ("format: nms\n", "'format' must be")):
        (bad / "metadata.yaml").write_text(text)
        with pytest.raises(BackendError, match=msg):
            DetectBackend(bad)
    junk = tmp_path / "junk.mnn"  # a file that is no MNN model, with a valid sidecar
    junk.write_bytes(bytes(range(256)) * 20)
    shutil.copy(files["mnn"].with_name("m.mnn.yaml"), tmp_path / "junk.mnn.yaml")
    with pytest.raises(BackendError, match="'.*junk.mnn' cannot be loaded by mnn"):
        DetectBackend(junk)


@pytest.mark.parametrize("module,suffix", [("openvino", "_openvino_model"), ("ncnn", "_ncnn_model"), ("MNN", ".mnn")])
def test_missing_runtime_package_says_what_to_pip_install(module, suffix, tmp_path, monkeypatch):
    w = tmp_path / f"m{suffix}"
    w.mkdir() if not suffix.startswith(".") else w.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(ImportError, match=rf"pip install {module}$"):
        DetectBackend(w)


@needs_all
@pytest.mark.parametrize("fmt,names", [
    pytest.param("openvino", ["q_openvino_model", "q_int8_openvino_model"],
                 marks=pytest.mark.skipif(importlib.util.find_spec("nncf") is None,
                                          reason="OpenVINO INT8 needs nncf: pip install nncf")),
    ("mnn", ["q.mnn", "q_int8.mnn"])])
def test_int8_export_reports_fp32_and_int8_map_through_val(exported, tmp_path, log_lines, fmt, names):
    import re
    ckpt, data, _ = exported
    files = export.run(weights=ckpt, imgsz=(S, S), include=(fmt,), int8=True, data=data, calib_images=4,
                       file=tmp_path / "q", verify=False)
    assert [Path(f).name for f in files] == names
    text = log_lines.text
    assert "mAP check skipped" not in text
    m = re.search(r"mAP50 FP32 (\S+) -> INT8 (\S+) \(.*\); mAP50-95 (\S+) -> (\S+) ", text)
    assert m, text[-2000:]
    fp50, q50, fp, q = map(float, m.groups())
    # the report's FP32 column is val.py on the FP32 folder: the .pt's mAP up to near-ties (as above), and the
    # INT8 one a real validation of the quantised folder (a broken one scores ~0)
    ref = _map(data, ckpt, tmp_path, "pt")
    assert abs(fp - ref[3]) <= 0.005 and abs(fp50 - ref[2]) <= 0.005
    if fmt == "openvino":
        assert 0.1 < q50 <= 1 and 0 < q <= 1  # 0.74 FP32 -> 0.74 INT8 mAP50 measured here
    else:  # a real validation of the INT8 file, whatever it scores: MNN 3.6.1 computes INT8 wrongly on x86
        assert 0 <= q50 <= 1 and 0 <= q <= q50


@needs_all
def test_bench_nms_times_an_export(exported):
    from benchmarks import bench_nms
    _, data, files = exported
    ms = bench_nms.run(str(files["ncnn"]), str(data), imgsz=S, batch=4, old=False, repeat=1)
    assert ms["images"] == 6 and ms["inference"] > 0 and ms["map50"] > 0.3  # the model's own labels: 0.745 in val
