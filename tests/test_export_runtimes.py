"""OpenVINO, ncnn and MNN exports (utils/export/, utils/runtimes.py): every nano yaml, as it is, converted and run
in each runtime at 64 px matches the PyTorch model within float32 rounding (utils.export.verify.RTOL); the
channel-shuffle rewrite ncnn needs computes the same permutation; missing packages, unconvertible ops, incomplete
export folders, a crashing runtime and a mismatch are one-line errors.

Runtimes run in a child process (a runtime that crashes would otherwise kill the test process).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

import export
from models.layers import channel_shuffle
from models.yolo import Model
from tests.test_export import _lively
from utils.export import export_metadata, export_onnx, load_model
from utils.export.graphs import classic_shuffle, output_names
from utils.export.mnn import export_mnn
from utils.export.ncnn import export_ncnn
from utils.export.openvino import export_openvino
from utils.export.verify import RTOL, compare, reference_inputs, run_in_child, verify_export
from utils.runtimes import NcnnRunner, OpenVINORunner, RuntimeFileError, load_runner, runtime_of

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning", "ignore::torch.jit.TracerWarning")
pytest.importorskip("onnx")
NANO = sorted(p.name for p in (ROOT / "models").glob("yolov5n*.yaml"))
S = 64  # the yaml as it is, at a small input: 2x2 cells at P5
PACKAGES = {"openvino": "openvino", "ncnn": "pnnx", "mnn": "MNN"}
MISSING = [f for f, pkg in PACKAGES.items() if importlib.util.find_spec(pkg) is None or
           (f == "ncnn" and importlib.util.find_spec("ncnn") is None)]
RUNTIMES = [f for f in PACKAGES if f not in MISSING]
DIFFS: dict[str, dict] = {}  # yaml -> runtime -> max rel. diff, printed at the end (-s) for the report

# Tests that load OpenVINO, ncnn or MNN into the test process itself run in tests/isolated's own pytest process
# (tests/test_isolated.py): these runtimes bring their own OpenMP/TBB thread pools, and heap corruption was seen
# in the long-lived suite process after they ran there, surfacing tests later in unrelated code.
IN_OWN_PROCESS = pytest.mark.skipif(not os.environ.get("YOLO_ISOLATED"),
                                    reason="loads a native runtime in-process: runs in tests/isolated's own process")


def _model(name: str):
    torch.manual_seed(0)
    return load_model(_lively(Model(ROOT / "models" / name, verbose=False)), torch.device("cpu"))


@pytest.fixture(scope="module")
def outdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runtimes")


def _convert_all(name: str, outdir: Path) -> tuple:
    """One ONNX per yaml; every installed runtime converted from the same fused model."""
    model = _model(name)
    stem = outdir / Path(name).stem
    im = torch.zeros(1, 3, S, S)
    meta = export_metadata(model, (S, S), 1, "decoded", False)
    onnx_f = export_onnx(model, im, stem.with_suffix(".onnx"), metadata=meta)  # as ONNX Runtime gets it
    with classic_shuffle(model):  # as export.run converts it for OpenVINO and MNN
        rt_onnx = export_onnx(model, im, stem.parent / f"{stem.name}_rt.onnx", metadata=meta)
    files = {"onnx": onnx_f}
    if "openvino" in RUNTIMES:
        files["openvino"] = export_openvino(rt_onnx, stem.with_name(stem.name + "_openvino_model"), meta)
    if "ncnn" in RUNTIMES:
        files["ncnn"] = export_ncnn(model, im, stem.with_name(stem.name + "_ncnn_model"), meta)
    if "mnn" in RUNTIMES:
        files["mnn"] = export_mnn(rt_onnx, stem.with_suffix(".mnn"), meta, output_names(model, "decoded"))
    return model, onnx_f, files


@pytest.mark.skipif(not RUNTIMES, reason=f"no runtime installed: pip install {' '.join(PACKAGES.values())} ncnn")
@pytest.mark.parametrize("name", NANO)
def test_every_nano_yaml_matches_pytorch_in_every_runtime(name, outdir):
    model, _, files = _convert_all(name, outdir)
    inputs = reference_inputs((S, S), 1)
    got = run_in_child(list(files.items()), inputs, threads=1)  # all runtimes in one child: one start-up
    DIFFS[name] = {}
    for (fmt, _), out in zip(files.items(), got):
        d = compare(fmt, out, model, inputs)  # raises above RTOL, naming the format
        DIFFS[name][fmt] = max(d.values())
        assert DIFFS[name][fmt] <= RTOL
    if MISSING:
        pytest.skip(f"{', '.join(MISSING)} not installed (pip install {' '.join(PACKAGES[f] for f in MISSING)})")


def test_zz_report_diffs():
    """Not a check: prints the table of max rel. diffs measured above (pytest -s)."""
    for name, d in DIFFS.items():
        print(f"{name:40s} " + "  ".join(f"{k} {v:.2g}" for k, v in d.items()))


# ------------------------------------------------------------------------------------------ channel shuffle forms
@pytest.mark.parametrize("groups,c", [(2, 6), (2, 32), (3, 12), (4, 8)])
def test_classic_channel_shuffle_is_the_same_permutation(groups, c):
    x = torch.randn(2, c, 3, 5)
    assert torch.equal(channel_shuffle(x, groups, gather=False), channel_shuffle(x, groups))
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2, gather=False).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_classic_shuffle_context_keeps_outputs_and_restores():
    from models.blocks.shufflenet import ShuffleNetV2_Block
    model = _model("yolov5n_ShuffleNetV2.yaml")
    blocks = [m for m in model.modules() if isinstance(m, ShuffleNetV2_Block)]
    assert blocks
    x = torch.rand(1, 3, S, S)
    with torch.no_grad():
        ref = model(x)[0]
        with classic_shuffle(model):
            assert not any(b.gather_shuffle for b in blocks)
            traced = torch.jit.trace(model, x, strict=False, check_trace=False)
            y = model(x)[0]
        assert all(b.gather_shuffle for b in blocks) and all("gather_shuffle" not in b.__dict__ for b in blocks)
    kinds = {n.kind() for n in traced.inlined_graph.nodes()}
    assert "aten::index_select" not in kinds and "aten::transpose" in kinds
    torch.testing.assert_close(y, ref, rtol=0, atol=0)  # a permutation: bit-identical


# ------------------------------------------------------------------------------------------------------ export.run
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from utils.checkpoint import make_checkpoint, save_checkpoint
    torch.manual_seed(0)
    model = _lively(Model(ROOT / "models" / "yolov5n_ShuffleNetV2.yaml", nc=3, verbose=False))
    model.names = {0: "a", 1: "b", 2: "c"}
    return save_checkpoint(make_checkpoint(model), tmp_path_factory.mktemp("ckpt") / "shuffle.pt")


@IN_OWN_PROCESS
@pytest.mark.skipif(len(RUNTIMES) < 3, reason=f"needs {', '.join(MISSING)}: pip install openvino ncnn pnnx MNN")
def test_run_exports_verifies_and_runners_read_metadata(checkpoint, log_lines):
    files = export.run(weights=checkpoint, imgsz=(S, 96), include=("openvino", "ncnn", "mnn"))
    assert [runtime_of(f) for f in files] == ["openvino", "ncnn", "mnn"]
    text = log_lines.text
    for title in ("OpenVINO", "ncnn", "MNN"):
        assert f"verified in {title}: max rel. diff vs PyTorch image" in text
    ov = Path(files[0])
    assert ov.name == "shuffle_openvino_model" and {p.name for p in ov.iterdir()} == {
        "shuffle.xml", "shuffle.bin", "metadata.yaml"}
    for f in files:
        meta = load_runner(f, threads=1).metadata if runtime_of(f) != "ncnn" else None  # ncnn: in a child below
        if meta is not None:
            assert meta["stride"] == 32 and meta["names"] == {0: "a", 1: "b", 2: "c"} and meta["imgsz"] == [S, 96]
            assert meta["yaml"]["backbone"]
    assert (Path(files[1]) / "metadata.yaml").is_file() and (Path(files[1]) / "model.ncnn.param").is_file()


# ------------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fmt,module,pkg", [("openvino", "openvino", "openvino"), ("ncnn", "pnnx", "pnnx"),
                                            ("ncnn", "ncnn", "ncnn"), ("mnn", "MNN", "MNN")])
def test_missing_runtime_package_says_what_to_install(checkpoint, monkeypatch, fmt, module, pkg):
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    with pytest.raises(ImportError, match=f"pip install {pkg}"):
        export.run(weights=checkpoint, imgsz=(S, S), include=(fmt,))
    assert export.main(export.parse_opt(["--weights", str(checkpoint), "--include", fmt])) == 1


def test_missing_nncf_for_openvino_int8(checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(ImportError, match="OpenVINO INT8 needs nncf: pip install nncf"):
        export.run(weights=checkpoint, imgsz=(S, S), include=("openvino",), int8=True, data="unused.yaml")


def test_runtime_formats_reject_nms_and_half(checkpoint):
    with pytest.raises(export.ExportError, match="--include ncnn takes the float32 decoded or --raw graph"):
        export.run(weights=checkpoint, imgsz=(S, S), include=("ncnn",), nms=True)


@pytest.mark.skipif("ncnn" in MISSING, reason="pnnx/ncnn not installed: pip install pnnx ncnn")
def test_unconvertible_op_names_the_yaml_row(tmp_path, monkeypatch):
    import contextlib

    import utils.export.ncnn as nc
    monkeypatch.setattr(nc, "classic_shuffle", contextlib.nullcontext)  # the gather form pnnx cannot convert
    model = _model("yolov5n_ShuffleNetV2.yaml")
    with pytest.raises(export.ExportError, match=r"pnnx has no ncnn layer for index_select in row 1 \(.*"
                                                 r"ShuffleNetV2_Block\)"):
        export_ncnn(model, torch.zeros(1, 3, S, S), tmp_path / "m_ncnn_model", {})
    assert not (tmp_path / "m_ncnn_model").exists()


@pytest.mark.skipif(len(RUNTIMES) < 3, reason=f"needs {', '.join(MISSING)}")
def test_incomplete_export_folder_is_a_one_line_error(outdir):
    name = NANO[0]
    stem = outdir / Path(name).stem
    if not stem.with_suffix(".onnx").is_file():
        _convert_all(name, outdir)
    for folder, runner, companion in ((stem.with_name(stem.name + "_ncnn_model"), NcnnRunner, "model.ncnn.bin"),
                                      (stem.with_name(stem.name + "_openvino_model"), OpenVINORunner,
                                       f"{stem.name}.bin")):
        (folder / companion).rename(folder / "moved")
        try:
            with pytest.raises(RuntimeFileError, match=r"weights file '.*' not found \(the export folder is "
                                                       r"incomplete"):
                runner(folder)
            with pytest.raises(export.ExportError, match=r"export check failed: RuntimeFileError: .* not found"):
                run_in_child([(runtime_of(folder), folder)], reference_inputs((S, S)))
        finally:
            (folder / "moved").rename(folder / companion)
    with pytest.raises(RuntimeFileError, match="not an ONNX, OpenVINO, ncnn or MNN export"):
        load_runner(outdir / "model.tflite")


def test_crashing_runtime_is_a_one_line_error(tmp_path, monkeypatch):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nkill -SEGV $$\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    with pytest.raises(export.ExportError, match=r"^ncnn export check: the ncnn runtime crashed \(SIGSEGV\)"):
        run_in_child([("ncnn", tmp_path)], {"random": np.zeros((1, 3, 4, 4), np.float32)})


@pytest.mark.skipif("openvino" in MISSING, reason="openvino not installed: pip install openvino")
def test_mismatch_above_tolerance_fails_naming_the_format(outdir):
    name = NANO[0]
    model, onnx_f, files = _convert_all(name, outdir)
    inputs = reference_inputs((S, S))
    with torch.no_grad():  # the PyTorch model drifts from what was exported: a 1e-2 logit shift
        model.model[-1].m[0].bias.add_(1e-2)
    try:
        for fmt, path in (("onnx", onnx_f), ("openvino", files["openvino"])):
            with pytest.raises(export.ExportError, match=rf"^{fmt} export does not match the PyTorch model: "
                                                         r"max rel. diff \S+ > 0.0003"):
                verify_export(fmt, path, model, inputs)
    finally:
        with torch.no_grad():
            model.model[-1].m[0].bias.sub_(1e-2)


# ----------------------------------------------------------------------------------------------- OpenVINO INT8
@IN_OWN_PROCESS
@pytest.mark.skipif("openvino" in MISSING or importlib.util.find_spec("nncf") is None,
                    reason="needs openvino and nncf: pip install openvino nncf")
def test_openvino_int8_quantises_backbone_and_keeps_head_float(checkpoint, tmp_path):
    from tests.test_export import _write_dataset
    model = load_model(checkpoint, torch.device("cpu"))
    data = _write_dataset(tmp_path / "data", model)
    files = export.run(weights=checkpoint, imgsz=(S, S), include=("openvino",), int8=True, data=data,
                       calib_images=4, file=tmp_path / "q", check_int8=False)
    assert [Path(f).name for f in files] == ["q_openvino_model", "q_int8_openvino_model"]
    q = Path(files[1])
    xml = next(q.glob("*.xml")).read_text()
    fq = [line for line in xml.splitlines() if 'type="FakeQuantize"' in line]
    head = len(model.model) - 1
    assert len(fq) > 20 and not [x for x in fq if f"/model.{head}/" in x]  # backbone/neck INT8, head float
    r8, r32 = OpenVINORunner(q, threads=1), OpenVINORunner(files[0], threads=1)
    assert r8.metadata["int8"] is True and r8.metadata["names"] == {0: "a", 1: "b", 2: "c"}
    x = reference_inputs((S, S))["image"]
    y8, y32 = r8(x)[0], r32(x)[0]
    assert y8.shape == y32.shape and np.abs(y8 - y32).max() > 0  # quantised: close, not equal
    assert np.abs(y8[..., 4:] - y32[..., 4:]).max() < 0.5


# ---------------------------------------------------------------------------------------------- MNN INT8, ncnn INT8
@pytest.mark.skipif("mnn" in MISSING, reason="MNN not installed: pip install MNN")
def test_mnn_int8_is_quantised_checked_and_keeps_the_metadata(checkpoint, tmp_path, log_lines):
    from tests.test_export import _write_dataset
    from utils.export.int8_mnn import SCORE_TOLERANCE
    from utils.runtimes import read_metadata
    model = load_model(checkpoint, torch.device("cpu"))
    data = _write_dataset(tmp_path / "data", model)
    files = export.run(weights=checkpoint, imgsz=(S, S), include=("mnn",), int8=True, data=data, calib_images=4,
                       file=tmp_path / "q", check_int8=False)
    assert [Path(f).name for f in files] == ["q.mnn", "q_int8.mnn"]
    fp32, q = Path(files[0]), Path(files[1])
    assert q.stat().st_size < 0.5 * fp32.stat().st_size  # int8 weights: about a quarter of the float32 file
    meta = read_metadata(q.with_name(q.name + ".yaml"))
    assert meta["int8"] is True and meta["calib_images"] == 4 and meta["names"] == {0: "a", 1: "b", 2: "c"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "q.mnn", "q.mnn.yaml", "q_int8.mnn",
                                                          "q_int8.mnn.yaml"]  # no calibration folder or scale dump
    x = {"image": reference_inputs((S, S))["image"]}
    y32, y8 = (r["image"][0] for r in run_in_child([("mnn", fp32), ("mnn", q)], x, threads=1))
    assert y8.shape == y32.shape and np.abs(y8 - y32).max() > 0  # quantised: not the float32 model
    # the export checked the INT8 model on the same image: it warns exactly when the scores are off (MNN 3.6.1's
    # x86 INT8 kernels: they are, on the CPU this was written on; on a CPU where MNN computes INT8 right, not)
    off = np.abs(y8[..., 4:] - y32[..., 4:]).max() > SCORE_TOLERANCE
    assert ("scores differ from the FP32 model's" in log_lines.text) == off, log_lines.text[-1500:]
    if not off:
        assert "max score change vs FP32 on the reference image" in log_lines.text


def test_ncnn_int8_says_what_is_missing(checkpoint, log_lines):
    why = r"ncnn INT8 is not available from pip: it needs ncnn's ncnn2table .* and ncnn2int8"
    with pytest.raises(export.ExportError, match=why):
        export.run(weights=checkpoint, imgsz=(S, S), include=("ncnn",), int8=True, data="unused.yaml")
    assert export.main(export.parse_opt(["--weights", str(checkpoint), "--include", "ncnn", "--int8",
                                         "--data", "unused.yaml"])) == 1
    errors = [ln for ln in log_lines.text.splitlines() if ln.startswith("ERROR")]
    assert len(errors) == 1 and "ncnn2int8" in errors[0] and "Traceback" not in log_lines.text


def test_too_old_opset_is_a_one_line_error(checkpoint):
    for fmt in ["onnx"] + (["mnn"] if "mnn" not in MISSING else []):  # mnn converts from a temporary ONNX
        with pytest.raises(export.ExportError, match=r"^--opset 9 is too old; use 11 or newer"):
            export.run(weights=checkpoint, imgsz=(S, S), include=(fmt,), opset=9, verify=False)
