"""detect.py, the sources and the Python/torch.hub API on generated images and videos.

Two models: an untrained tiny one with conf_thres 0 and a small max_det, so every image yields a known number of
boxes (file-output tests), and one trained for ~15 s on generated squares/circles that must find its objects.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from detect import main, parse_opt, run
from models.yolo import Model
from tests.detections import FP32_BOX_REL, FP32_SCORE_TOL, compare_detections
from utils.boxes import box_iou_np, xywhn2xyxy
from utils.checkpoint import make_checkpoint, save_checkpoint
from utils.inference.predictor import load
from utils.inference.sources import LoadFiles, LoadStreams, SourceError, open_source

ROOT = Path(__file__).resolve().parents[1]
NAMES = {0: "square", 1: "circle"}
S = 64  # training / test image side


def tiny_cfg(nc: int = 2) -> dict:
    cfg = yaml.safe_load((ROOT / "models" / "yolov5n.yaml").read_text())
    cfg.update(nc=nc, width_multiple=0.125)
    return cfg


def draw(rng: np.random.Generator, w: int = S, h: int = S, cls: int | None = None, xy=None, size=None):
    """A grey image with one filled yellow square (class 0) or blue circle (class 1); returns (im, cls, xyxy)."""
    im = np.full((h, w, 3), int(rng.integers(40, 90)), np.uint8)
    cls = int(rng.integers(0, 2)) if cls is None else cls
    size = int(rng.integers(S // 3, S // 2 + 4)) if size is None else size
    x1, y1 = (int(rng.integers(2, w - size - 2)), int(rng.integers(2, h - size - 2))) if xy is None else xy
    if cls == 0:
        cv2.rectangle(im, (x1, y1), (x1 + size - 1, y1 + size - 1), (40, 220, 240), -1)
    else:
        cv2.circle(im, (x1 + size // 2, y1 + size // 2), size // 2, (240, 120, 40), -1)
    return im, cls, np.array([x1, y1, x1 + size, y1 + size], np.float32)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10, fourcc: str = "mp4v") -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def read_labels(file: Path) -> np.ndarray:
    return np.array([[float(v) for v in line.split()] for line in file.read_text().splitlines()], np.float64)


def video_info(path: Path) -> tuple[int, float, int, int]:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    fps = cap.get(cv2.CAP_PROP_FPS)
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    return n, fps, w, h



@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = Model(tiny_cfg(), verbose=False)
    model.names = dict(NAMES)
    return save_checkpoint(make_checkpoint(model), tmp_path_factory.mktemp("w") / "untrained.pt")


def train_tiny(root: Path, seed: int = 0, n: int = 256, epochs: int = 20) -> Path:
    """A tiny YOLOv5 trained on n generated 64 px images (320 Adam steps, single thread: ~15 s); returns best.pt.

    Chosen for a wide margin, not speed: with lr decayed linearly to 0 the last steps cannot undo the fit, and
    box/obj gains above train.py's 64 px scaling (obj 0.007) train localisation and background objectness within
    the budget. Measured over torch seeds 0-5 at 1 thread and 0-1 at 2 threads: the top box was the drawn shape
    (IoU >= 0.5, right class) in 95 of 96 test images and in every video frame, usually IoU >= 0.82 and score
    >= 0.86, one box per image. The previous recipe (128 images, 192 steps at a constant lr) fell to 7/12 with
    9-16 boxes per image at 2 threads, seed 2.
    """
    from utils.data.dataloaders import create_dataloader
    from utils.training.loss import ComputeLoss
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        im, c, b = draw(rng)
        cv2.imwrite(str(root / "images" / f"{i}.png"), im)
        (x, y), (w, h) = (b[:2] + b[2:]) / 2 / S, (b[2:] - b[:2]) / S
        (root / "labels" / f"{i}.txt").write_text(f"{c} {x} {y} {w} {h}\n")
    torch.manual_seed(seed)
    model = Model(tiny_cfg(), verbose=False)
    model.names = dict(NAMES)
    hyp = yaml.safe_load((ROOT / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
    # box 0.1 and obj 0.05 as the final gains (stronger than the 640 px defaults, so 64 px images train to a wide
    # margin); ComputeLoss scales cls by nc/80 and obj by (S/640)^2 itself, so obj is given before that scaling
    hyp.update(box=0.1, obj=0.05 * (640 / S) ** 2)
    loader, _ = create_dataloader(str(root / "images"), S, 16, 32, augment=False, workers=0, shuffle=True, seed=seed)
    loss_fn = ComputeLoss(model, hyp=hyp, imgsz=S)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    steps = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / steps)
    model.train()
    for _ in range(epochs):
        for ims, targets, _, _ in loader:
            loss, _ = loss_fn(model(ims.float() / 255), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return save_checkpoint(make_checkpoint(model.eval()), root / "best.pt")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("shapes"))


@pytest.fixture
def images(tmp_path) -> Path:
    """Three readable images (two sizes), one corrupt .jpg and a non-image file."""
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(1)
    for i, (w, h) in enumerate([(64, 64), (80, 64), (64, 64)]):
        cv2.imwrite(str(d / f"im{i}.jpg"), draw(rng, w, h)[0])
    (d / "broken.jpg").write_bytes(b"not a jpeg at all")
    (d / "notes.md").write_text("ignored")
    return d


# ------------------------------------------------------------------------------------------------ file outputs
def test_folder_outputs_and_bad_image_skipped(untrained, images, tmp_path, log_lines):
    save_dir = run(untrained, images, imgsz=64, conf_thres=0.0, max_det=2, save_txt=True, save_conf=True,
                   save_crop=True, project=tmp_path / "runs", name="exp")
    assert save_dir == tmp_path / "runs" / "exp"
    assert sorted(p.name for p in save_dir.glob("*.jpg")) == ["im0.jpg", "im1.jpg", "im2.jpg"]
    assert cv2.imread(str(save_dir / "im1.jpg")).shape == (64, 80, 3)  # annotated at the original size
    labels = sorted(save_dir.glob("labels/*.txt"))
    assert [p.name for p in labels] == ["im0.txt", "im1.txt", "im2.txt"]
    for p in labels:
        rows = read_labels(p)
        assert rows.shape == (2, 6)  # max_det boxes, cls x y w h conf
        assert set(rows[:, 0]) <= {0, 1} and (rows[:, 1:] >= 0).all() and (rows[:, 1:5] <= 1).all()
    crops = sorted(save_dir.glob("crops/*/*.jpg"))
    assert len(crops) == 6 and {p.parent.name for p in crops} <= set(NAMES.values())
    assert any("broken.jpg" in line and "skipping" in line for line in log_lines)
    per_image = [line for line in log_lines if line.startswith("image ")]
    assert len(per_image) == 3 and per_image[0].startswith("image 2/4 ") and per_image[0].endswith("ms")
    assert re.search(r": 64x64 (\d+ (square|circle)s?, )+[\d.]+ms$", per_image[0])  # input size, counts, time
    assert any(f"\n3 labels saved to {save_dir / 'labels'}" in line for line in log_lines)
    # a second run goes to exp2
    assert run(untrained, images / "im0.jpg", imgsz=64, project=tmp_path / "runs", name="exp").name == "exp2"


def test_cli_flags_filter_and_hide(untrained, images, tmp_path, log_lines):
    opt = parse_opt(["--weights", str(untrained), "--source", str(images), "--imgsz", "64", "--conf-thres", "0",
                     "--max-det", "3", "--classes", "1", "--save-txt", "--nosave", "--view-img", "--hide-labels",
                     "--project", str(tmp_path / "r"), "--name", "cli"])
    assert opt.imgsz == [64, 64] and opt.classes == [1] and opt.weights == str(untrained)
    assert main(opt) == 0
    out = tmp_path / "r" / "cli"
    assert not list(out.glob("*.jpg"))  # --nosave
    rows = np.concatenate([read_labels(p) for p in out.glob("labels/*.txt")])
    assert rows.shape[1] == 5 and (rows[:, 0] == 1).all()  # --classes 1, no --save-conf
    assert any("--view-img" in line for line in log_lines)  # headless OpenCV: warned and ignored


def test_labels_match_python_api(untrained, images, tmp_path):
    save_dir = run(untrained, images / "im1.jpg", imgsz=64, conf_thres=0.0, max_det=4, save_txt=True,
                   save_conf=True, project=tmp_path, name="a")
    rows = read_labels(save_dir / "labels" / "im1.txt")
    det = load(untrained, imgsz=64, conf_thres=0.0, max_det=4)(images / "im1.jpg")[0]
    np.testing.assert_allclose(rows[:, 0], det.cls)
    np.testing.assert_allclose(rows[:, 1:5], det.xywhn, atol=1e-5)
    np.testing.assert_allclose(rows[:, 5], det.conf, rtol=1e-4)


def test_video_outputs_same_fps_and_size(untrained, tmp_path, log_lines):
    rng = np.random.default_rng(2)
    frames = [draw(rng, 96, 64)[0] for _ in range(12)]
    src = write_video(tmp_path / "clip.mp4", frames, fps=12)
    save_dir = run(untrained, src, imgsz=96, conf_thres=0.0, max_det=1, save_txt=True, project=tmp_path, name="v")
    assert video_info(save_dir / "clip.mp4") == (12, 12.0, 96, 64)
    assert sorted(p.name for p in save_dir.glob("labels/*.txt")) == sorted(f"clip_{i}.txt" for i in range(1, 13))
    assert any(line.startswith("video 1/1 (12/12) ") for line in log_lines)
    # --vid-stride 3: frames 0, 3, 6, 9
    save_dir = run(untrained, src, imgsz=96, conf_thres=0.0, max_det=1, save_txt=True, vid_stride=3,
                   project=tmp_path, name="v")
    assert video_info(save_dir / "clip.mp4")[0] == 4
    assert len(list(save_dir.glob("labels/clip_*.txt"))) == 4


def test_video_with_corrupt_tail(untrained, tmp_path, log_lines):
    rng = np.random.default_rng(3)
    src = write_video(tmp_path / "cut.avi", [draw(rng)[0] for _ in range(20)], fourcc="MJPG")
    data = src.read_bytes()
    src.write_bytes(data[: int(len(data) * 0.6)])  # the index and the last frames are gone
    save_dir = run(untrained, src, imgsz=64, conf_thres=0.0, max_det=1, save_txt=True, project=tmp_path, name="c")
    n = video_info(save_dir / "cut.mp4")[0]
    assert 0 < n < 20 and len(list(save_dir.glob("labels/*.txt"))) == n
    assert any("cut.avi" in line and "truncated" in line for line in log_lines)


def test_glob_and_txt_list_sources(images, tmp_path):
    assert [Path(f).name for f in LoadFiles(str(images / "im*.jpg")).files] == ["im0.jpg", "im1.jpg", "im2.jpg"]
    lst = tmp_path / "list.txt"
    lst.write_text(f"imgs/im2.jpg\n\n{images / 'im0.jpg'}\n")  # relative to the list's folder, and absolute
    assert [Path(f).name for f in LoadFiles(lst).files] == ["im2.jpg", "im0.jpg"]
    lst.write_text("imgs/im2.jpg\nimgs/missing.jpg\n")
    with pytest.raises(FileNotFoundError, match=r"list\.txt line 2: .*missing\.jpg"):
        LoadFiles(lst)


def test_bad_sources_give_one_line_errors(untrained, tmp_path, images, log_lines):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    cases = [(tmp_path / "nope.jpg", FileNotFoundError, "does not exist"),
             (empty, FileNotFoundError, "no images or videos in folder"),
             (str(tmp_path / "*.png"), FileNotFoundError, "no images or videos match"),
             (images / "notes.md", SourceError, "not a supported image or video"),
             (images / "broken.jpg", SourceError, "unreadable or corrupt image"),
             ("rtsp://127.0.0.1:9/live", SourceError, "cannot open stream 'rtsp://127.0.0.1:9/live'"),
             ("http://127.0.0.1:9/cam.mjpg", SourceError, "cannot open stream"),
             ("97", SourceError, "cannot open webcam 97")]
    for src, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            run(untrained, src, imgsz=64, project=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # no empty run folders left behind by bad sources
    opt = parse_opt(["--weights", str(untrained), "--source", str(tmp_path / "nope.jpg")])
    log_lines.clear()
    assert main(opt) == 1
    errors = [line for line in log_lines if line.startswith("ERROR")]
    assert len(errors) == 1 and "nope.jpg" in errors[0] and "\n" not in errors[0]
    opt = parse_opt(["--weights", str(tmp_path / "missing.pt"), "--source", str(images)])
    assert main(opt) == 1 and "missing.pt" in log_lines[-1]


def test_imgsz_rounded_to_stride_with_warning(untrained, log_lines):
    p = load(untrained, imgsz=70)
    assert p.imgsz == (96, 96)
    assert any("multiple of max stride 32" in line for line in log_lines)
    assert load(untrained, imgsz=[64, 100]).imgsz == (64, 128)


def test_stream_loader_batches_newest_frames(tmp_path):
    # a local video read through the stream loader (the code path of rtsp/http/webcam sources)
    rng = np.random.default_rng(4)
    src = write_video(tmp_path / "s.mp4", [draw(rng)[0] for _ in range(15)])
    loader = open_source(str(src), vid_stride=1)
    assert isinstance(loader, LoadFiles)
    lst = tmp_path / "cams.streams"  # YOLOv5's list-of-streams file
    lst.write_text(f"{src}\n{src}\n")
    streams = open_source(lst)
    assert isinstance(streams, LoadStreams) and len(streams) == 2
    seen = [[], []]
    for frames in streams:
        assert len(frames) == 2 and all(f.mode == "stream" and f.im0.shape == (64, 64, 3) for f in frames)
        for i, f in enumerate(frames):
            seen[i].append(f.frame)
    for s in seen:
        assert s == sorted(s) and s[-1] == 15  # never an older frame, and the stream's last one arrives
    assert all(not t.is_alive() for t in streams.threads)


# ------------------------------------------------------------------------------------------------ Python API
def test_api_accepts_paths_arrays_pil_tensors_and_batches(untrained, images):
    from PIL import Image
    model = load(untrained, imgsz=64, conf_thres=0.0, max_det=3)
    path = images / "im1.jpg"
    bgr = cv2.imread(str(path))
    ref = model(str(path))[0]
    assert ref.names == NAMES and ref.shape == (64, 80) and ref.xyxy.shape == (3, 4) and len(ref.labels) == 3
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    variants = [model(path), model(bgr), model(rgb, rgb=True), model(Image.open(path)),
                model(torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255), model([bgr, bgr]),
                model(np.stack([bgr, bgr]))]
    # the untrained model's scores tie exactly at the max_det cut (3rd and 4th), so the same image in another
    # batch size or container may keep either tied box: compare up to near-ties, with the fp32 bound of two
    # evaluations of one model (tests/detections.py) and whole-pixel rounding of the boxes
    tol = dict(score_tol=FP32_SCORE_TOL, box_tol=1.0 + 80 * FP32_BOX_REL, conf_thres=0.0, iou_thres=0.45, max_det=3)
    for out in variants:
        assert all(len(det) == 3 for det in out)
        assert compare_detections(out, [ref] * len(out), **tol)[0] >= 2 * len(out)
    mixed = model([bgr, cv2.imread(str(images / "im0.jpg")), np.zeros((40, 30), np.uint8)])
    assert [d.shape for d in mixed] == [(64, 80), (64, 64), (40, 30)]
    assert all((d.xyxy[:, [0, 2]] <= d.shape[1]).all() and (d.xyxy[:, [1, 3]] <= d.shape[0]).all() for d in mixed)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        model(images / "missing.jpg")
    with pytest.raises(TypeError, match="unsupported type"):
        model(3.5)


def test_torch_hub_local(untrained, images):
    hub = torch.hub.load(str(ROOT), "custom", path=str(untrained), source="local", imgsz=64, conf_thres=0.0,
                         max_det=3)
    ref = load(untrained, imgsz=64, conf_thres=0.0, max_det=3)(images / "im0.jpg")[0]
    np.testing.assert_allclose(hub(images / "im0.jpg")[0].boxes, ref.boxes, atol=1e-5)
    bare = torch.hub.load(str(ROOT), "yolov5n", pretrained=False, classes=2, source="local", _verbose=False)
    assert len(bare(cv2.imread(str(images / "im0.jpg")))) == 1
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        torch.hub.load(str(ROOT), "yolov5n", source="local")


# ------------------------------------------------------------------------------------------------ trained model
def test_trained_model_finds_its_objects(trained, tmp_path):
    rng = np.random.default_rng(123)
    src = tmp_path / "test"
    src.mkdir()
    truth = {}
    for i in range(24):  # enough images that one odd miss (seen in ~1 of 100) stays far from the bar
        im, c, b = draw(rng)
        cv2.imwrite(str(src / f"t{i:02d}.png"), im)
        truth[f"t{i:02d}"] = (c, b)
    save_dir = run(trained, src, imgsz=S, save_txt=True, save_conf=True, project=tmp_path, name="t")
    hits = 0
    for stem, (c, b) in truth.items():
        f = save_dir / "labels" / f"{stem}.txt"
        if not f.exists():
            continue
        rows = read_labels(f)
        best = rows[rows[:, 5].argmax()]
        box = xywhn2xyxy(best[None, 1:5], S, S)
        hits += int(best[0]) == c and box_iou_np(box, b[None])[0, 0] >= 0.5
    assert hits >= 20, f"only {hits}/24 images had the drawn shape found with IoU >= 0.5 and the right class"


def test_trained_model_tracks_a_moving_object_in_video(trained, tmp_path):
    rng = np.random.default_rng(7)
    truth, frames = [], []
    for k in range(10):  # a circle moving right, on a wider frame than the training images
        im, c, b = draw(rng, 96, 64, cls=1, xy=(4 + 5 * k, 14), size=30)
        frames.append(im)
        truth.append(b)
    src = write_video(tmp_path / "move.avi", frames, fps=5, fourcc="MJPG")
    model = load(trained, imgsz=96)
    save_dir = run(trained, src, imgsz=96, save_txt=True, project=tmp_path, name="m")
    hits = 0
    for k, b in enumerate(truth, 1):
        f = save_dir / "labels" / f"move_{k}.txt"
        if f.exists():
            rows = read_labels(f)
            ious = box_iou_np(xywhn2xyxy(rows[:, 1:5], 96, 64), b[None])[:, 0]
            hits += bool(((ious >= 0.5) & (rows[:, 0] == 1)).any())
    assert hits >= 8, f"moving circle found in {hits}/10 frames"
    # same answer from the Python API on the decoded frames
    cap = cv2.VideoCapture(str(src))
    ok, first = cap.read()
    cap.release()
    det = model(first)[0]
    assert ok and len(det) and box_iou_np(det.xyxy, truth[0][None]).max() >= 0.5


def test_exported_and_yolov5_weights_match_pytorch(trained, tmp_path, monkeypatch):
    """The same detections from the .pt, an exported .onnx and .torchscript, and a YOLOv5-format checkpoint."""
    export = pytest.importorskip("export")
    rng = np.random.default_rng(11)
    ims = [draw(rng)[0] for _ in range(4)]
    ref = load(trained, imgsz=S)(ims)
    assert all(len(d) for d in ref)
    # one fp32 model in three runtimes (FP32_* in tests/detections.py); boxes come back rounded to whole pixels, so
    # a float error can move a coordinate by 1 px
    tol = dict(score_tol=FP32_SCORE_TOL, box_tol=1.0 + S * FP32_BOX_REL, conf_thres=0.25, iou_thres=0.45)
    w = tmp_path / "m.pt"
    w.write_bytes(Path(trained).read_bytes())
    files = export.run(w, imgsz=(S, S), include=("onnx", "torchscript"))
    for f in files:
        matched, _ = compare_detections(load(f, imgsz=S, trusted=True)(ims), ref, **tol)  # TorchScript: opt-in
        assert matched >= len(ims)  # every image's detections, not only near-ties
    from tests.test_checkpoint import _save_like_yolov5
    model = Model(tiny_cfg(), verbose=False)
    model.load_state_dict(torch.load(trained, weights_only=True)["model"])
    model.names = dict(NAMES)
    y5 = tmp_path / "yolov5_format.pt"
    _save_like_yolov5(model, y5, monkeypatch)
    # YOLOv5 stores fp16 weights: the reference is our own checkpoint of the same fp16-rounded weights, so what is
    # compared is the loader, in fp32 on both sides
    model.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    rounded = save_checkpoint(make_checkpoint(model), tmp_path / "rounded.pt")
    out = load(y5, imgsz=S)(ims)
    assert all(b.names == NAMES for b in out)
    matched, _ = compare_detections(out, load(rounded, imgsz=S)(ims), **tol)
    assert matched >= len(ims)
