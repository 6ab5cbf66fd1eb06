"""val.py end to end on a tiny generated dataset: checkpoints in, COCO-exact numbers, files and errors out."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import val
from utils.metrics import DetectionMetrics, coco_iou

NAMES = {0: "red", 1: "green", 2: "blue"}


def _write_split(root: Path, split: str, n: int, rng: np.random.Generator) -> None:
    (root / "images" / split).mkdir(parents=True)
    (root / "labels" / split).mkdir(parents=True)
    sizes = [(64, 64), (48, 64), (64, 40), (56, 72)]  # (h, w): letterbox padding both ways
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        im = np.full((h, w, 3), 40, np.uint8)
        rows = []
        quads = rng.permutation(4)[:0 if i == 1 else rng.integers(1, 4)]  # image 1 is a background image
        for q in quads:  # one object per quadrant: no occlusion
            c = int(rng.integers(0, 3))
            bw, bh = rng.integers(8, w // 2 - 1), rng.integers(8, h // 2 - 1)
            x1 = (q % 2) * (w // 2) + rng.integers(0, w // 2 - bw)
            y1 = (q // 2) * (h // 2) + rng.integers(0, h // 2 - bh)
            color = [0, 0, 0]
            color[2 - c] = 255  # BGR
            cv2.rectangle(im, (int(x1), int(y1)), (int(x1 + bw - 1), int(y1 + bh - 1)), color, -1)
            rows.append(f"{c} {(x1 + bw / 2) / w:.6f} {(y1 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        cv2.imwrite(str(root / "images" / split / f"im{i}.png"), im)
        if rows:
            (root / "labels" / split / f"im{i}.txt").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    _write_split(root, "train", 4, rng)
    _write_split(root, "val", 10, rng)
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "images/train",
                                                    "val": "images/val", "names": NAMES}))
    return root / "data.yaml"


def _tiny_model(nc: int = 3):
    from models.yolo import Model
    torch.manual_seed(0)
    model = Model("yolov5n.yaml", nc=nc, verbose=False)
    det = model.model[-1]
    with torch.no_grad():  # confident, box-shaped outputs so that NMS keeps hundreds and some hit the objects
        for conv in det.m:
            b = conv.bias.view(det.na, -1)
            b[:, 4] += 6.0
            b[:, 5:] += 2.0
            conv.weight.mul_(3.0)
    model.names = dict(NAMES) if nc == 3 else {i: str(i) for i in range(nc)}
    return model


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from utils.checkpoint import make_checkpoint, save_checkpoint
    f = tmp_path_factory.mktemp("w") / "tiny.pt"
    save_checkpoint(make_checkpoint(_tiny_model()), f)
    return f


def _run(dataset, weights, tmp_path, **kw):
    args = dict(data=str(dataset), weights=str(weights), imgsz=64, batch_size=4, workers=0, device="cpu",
                project=str(tmp_path), name="exp", plots=False)
    args.update(kw)
    return val.run(**args)


class _ColourDetector(torch.nn.Module):
    """A stand-in detector for the metric checks: finds the pure-colour rectangles with cv2, then reports each a
    few times with jitter plus hundreds of random boxes, as decoded (bs, N, 5 + nc) rows like Detect's."""

    def __init__(self, n_rows: int = 400):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.stride = torch.tensor([8.0, 16.0, 32.0])
        self.names = dict(NAMES)
        self.n_rows = n_rows

    def forward(self, im, augment=False):
        out = torch.zeros(len(im), self.n_rows, 8)
        for i, x in enumerate(im.float().cpu().numpy()):
            rng = np.random.default_rng(int(x.sum() * 1000) % 2**32)  # deterministic per image
            rows = []
            for c in range(3):
                others = [k for k in range(3) if k != c]
                mask = ((x[c] > 0.99) & (x[others] < 0.01).all(0)).astype(np.uint8)
                n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
                for bx, by, bw, bh, _ in stats[1:]:
                    for _ in range(rng.integers(1, 5)):
                        j = rng.normal(0, 0.12, 4) * [bw, bh, bw, bh]
                        cls = np.full(3, 0.05)
                        cls[c if rng.random() < 0.85 else rng.integers(0, 3)] = 0.9
                        rows.append([bx + bw / 2 + j[0], by + bh / 2 + j[1], bw + j[2], bh + j[3], rng.random(), *cls])
            h, w = x.shape[1:]
            for _ in range(self.n_rows - len(rows)):
                rows.append([rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, w / 2), rng.uniform(4, h / 2),
                             rng.random(), *rng.uniform(0, 0.5, 3)])
            out[i] = torch.tensor(np.array(rows[:self.n_rows]), dtype=torch.float32)
        return out, None


def _coco_stats(save_dir: Path, stem: str) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt = COCO(str(save_dir / "annotations.json"))
    ev = COCOeval(gt, gt.loadRes(str(save_dir / f"{stem}_predictions.json")), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def test_val_map_equals_pycocotools_on_its_json(dataset, tmp_path, log_lines):
    pytest.importorskip("pycocotools")
    model = _ColourDetector()
    kw = dict(batch_size=4, imgsz=64, model=model, dataloader=_loader(dataset), plots=False)
    (mp, mr, map50, map_, *_), maps, _ = val.run(str(dataset), save_dir=tmp_path, **kw)  # ours, no json
    assert 0.2 < map_ < 0.9 and map50 > map_  # a meaningful score, not 0 == 0
    val.run(str(dataset), save_dir=tmp_path, save_json=True, **kw)
    anno = json.loads((tmp_path / "annotations.json").read_text())
    dets = json.loads((tmp_path / "model_predictions.json").read_text())
    assert len(anno["images"]) == 10 and min(a["id"] for a in anno["annotations"]) == 1
    per = np.bincount([d["image_id"] * 3 + d["category_id"] for d in dets])
    assert per.max() > 100  # the per image-and-class cap of 100 is exercised
    stats = _coco_stats(tmp_path, "model")
    assert abs(map_ - stats[0]) <= 1e-3 and abs(map50 - stats[1]) <= 1e-3  # the requirement
    assert map_ == pytest.approx(stats[0], abs=1e-12) and map50 == pytest.approx(stats[1], abs=1e-12)  # and in fact


def test_val_from_checkpoint_writes_coco_json_and_reports_pycocotools(dataset, weights, tmp_path, log_lines):
    (mp, mr, map50, map_, *losses), maps, t = _run(dataset, weights, tmp_path, save_json=True)
    save_dir = tmp_path / "exp"
    stats = _coco_stats(save_dir, "tiny")
    ours = next(x for x in log_lines if x.startswith("pycocotools:"))  # run() prints both before adopting COCO's
    ours_map, ours_map50 = (float(v) for v in ours.split("ours ")[1].rstrip(")").split(" / "))
    assert stats[1] > 0 and abs(ours_map50 - stats[1]) < 1e-5 and abs(ours_map - stats[0]) < 1e-5
    assert (map_, map50) == pytest.approx((stats[0], stats[1]), abs=1e-12)
    assert len(losses) == 3 and maps.shape == (3,) and len(t) == 3


def test_val_table_speed_line_plots_and_txt(dataset, weights, tmp_path, log_lines):
    _run(dataset, weights, tmp_path, plots=True, verbose=True, save_txt=True, save_conf=True)
    header = next(x for x in log_lines if "Class" in x and "mAP50-95" in x)
    assert header.split() == ["Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95"]
    rows = [x.split() for x in log_lines if x.split()[:1] in (["all"], ["red"], ["green"], ["blue"])]
    assert rows[0][0] == "all" and rows[0][1] == "10"
    n_labels = sum(len(f.read_text().splitlines()) for f in (dataset.parent / "labels" / "val").glob("*.txt"))
    assert int(rows[0][2]) == n_labels
    assert sum(int(r[2]) for r in rows[1:]) == n_labels  # per-class rows add up
    assert any(x.startswith("Speed:") and "pre-process" in x and "NMS per image" in x for x in log_lines)
    save_dir = tmp_path / "exp"
    for f in ("confusion_matrix.png", "PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png",
              "val_batch0_labels.jpg", "val_batch0_pred.jpg"):
        assert (save_dir / f).stat().st_size > 1000, f
    files = sorted((save_dir / "labels").glob("*.txt"))
    assert len(files) == 10
    rows = np.array([list(map(float, line.split())) for line in files[0].read_text().splitlines()])
    assert rows.shape[1] == 6 and set(np.unique(rows[:, 0])) <= {0, 1, 2}
    assert (rows[:, 1:5] >= 0).all() and (rows[:, 1:5] <= 1 + 1e-6).all() and (rows[:, 5] <= 1).all()


def test_training_mode_call_returns_losses(dataset, tmp_path):
    from utils.data.dataloaders import check_dataset, create_dataloader
    from utils.training.loss import ComputeLoss
    model = _tiny_model()
    model.hyp = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0,
                 "fl_gamma": 0.0, "label_smoothing": 0.0}
    data = check_dataset(str(dataset))
    loader = create_dataloader(data["val"], 64, 4, 32, pad=0.5, rect=True, workers=0)[0]
    r, maps, t = val.run(data, batch_size=4, imgsz=64, model=model.eval(), dataloader=loader, save_dir=tmp_path,
                         plots=False, compute_loss=ComputeLoss(model))
    assert len(r) == 7 and all(x > 0 for x in r[4:])  # box, obj, cls losses averaged over batches
    assert 0 <= r[3] <= r[2] <= 1


def test_single_cls_and_speed_task(dataset, weights, tmp_path):
    r, maps, _ = _run(dataset, weights, tmp_path, single_cls=True, save_txt=True, augment=True)
    assert maps.shape == (1,) and 0 <= r[3] <= r[2] <= 1
    rows = [line.split() for f in (tmp_path / "exp" / "labels").glob("*.txt") for line in f.read_text().splitlines()]
    assert rows and all(len(x) == 5 and x[0] == "0" for x in rows)  # no conf column, one class
    opt = val.parse_opt(["--data", str(dataset), "--weights", str(weights), "--imgsz", "64", "--batch-size", "4",
                         "--task", "speed", "--device", "cpu", "--project", str(tmp_path), "--workers", "0"])
    (r, _, t), = val.main(opt)
    assert len(t) == 3 and all(x >= 0 for x in t)


def test_model_argument_and_weights_file_agree(dataset, weights, tmp_path):
    """train.py's call (model= and dataloader=) and the CLI path give the same numbers for the same weights
    (the same loaded module: a different memory layout alone moves a few near-threshold random boxes)."""
    from utils.backends import DetectBackend
    a = DetectBackend(str(weights), device="cpu")
    r1, _, _ = val.run(str(dataset), batch_size=4, imgsz=64, model=a, dataloader=_loader(dataset), plots=False,
                       save_dir=tmp_path)
    r2, _, _ = _run(dataset, weights, tmp_path)
    assert r1[:4] == pytest.approx(r2[:4], abs=1e-12)


def test_yolov5_pickled_checkpoint_validates(dataset, tmp_path, monkeypatch):
    """A checkpoint pickled the way YOLOv5 writes it (fp16 module objects) scores like our own file of the
    same fp16-rounded weights."""
    try:
        from tests.test_checkpoint import _save_like_yolov5
    except ImportError as e:
        pytest.skip(f"YOLOv5-style checkpoint writer unavailable: {e}")
    from utils.checkpoint import make_checkpoint, save_checkpoint
    model = _tiny_model()
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.copy_(p.half().float())
    _save_like_yolov5(model, tmp_path / "yolov5_style.pt", monkeypatch)
    save_checkpoint(make_checkpoint(model), tmp_path / "ours.pt")
    r1, _, _ = _run(dataset, tmp_path / "yolov5_style.pt", tmp_path)
    r2, _, _ = _run(dataset, tmp_path / "ours.pt", tmp_path)
    assert r1[2] > 0 and r1[:4] == pytest.approx(r2[:4], abs=1e-9)


def _loader(dataset, batch_size: int = 4, rect: bool = True):
    from utils.data.dataloaders import check_dataset, create_dataloader
    return create_dataloader(check_dataset(str(dataset))["val"], 64, batch_size, 32, pad=0.5, rect=rect,
                             workers=0)[0]


def test_exported_weights_validate_like_pytorch(dataset, weights, tmp_path):
    """Exported files go through the backend; with the same square batch-1 input they score as the .pt does."""
    import export
    pytest.importorskip("onnxruntime")
    from models.experimental import attempt_load
    files = [Path(f) for f in export.run(weights=str(weights), include=("torchscript", "onnx"), imgsz=(64, 64),
                                         device="cpu")]
    r_pt, _, _ = val.run(str(dataset), batch_size=1, imgsz=64, model=attempt_load(str(weights)),
                         dataloader=_loader(dataset, 1, rect=False), plots=False, save_dir=tmp_path)
    assert r_pt[2] > 0
    for f in files:
        r_exp, _, _ = _run(dataset, f, tmp_path, trust_weights=True)  # our own export
        if f.suffix == ".torchscript":  # the same kernels: the same numbers
            assert r_exp[:4] == pytest.approx(r_pt[:4], abs=1e-9)
        else:  # onnxruntime's arithmetic moves boxes by ~1e-5 px, enough to flip a few near-threshold matches
            assert f.suffix == ".onnx" and r_exp[:4] == pytest.approx(r_pt[:4], abs=1e-3, rel=0.25)
    with pytest.raises(ValueError, match="exported for 64x64"):
        _run(dataset, files[-1], tmp_path, imgsz=96, trust_weights=True)


def test_bad_inputs_give_clear_errors(dataset, weights, tmp_path):
    with pytest.raises(ValueError, match="no 'test' split"):
        _run(dataset, weights, tmp_path, task="test")
    d = yaml.safe_load(dataset.read_text())
    empty = tmp_path / "empty"
    (empty / "images" / "val").mkdir(parents=True)
    bad = tmp_path / "empty.yaml"
    bad.write_text(yaml.safe_dump({**d, "path": str(empty), "train": "images/val"}))
    with pytest.raises((FileNotFoundError, ValueError), match="[Nn]o images"):
        _run(bad, weights, tmp_path)
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump({**d, "names": {0: "a", 1: "b"}}))
    with pytest.raises(ValueError, match="3 classes.*nc=2"):
        _run(two, weights, tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        _run(dataset, tmp_path / "missing.pt", tmp_path)


def test_metric_boxes_are_the_json_boxes():
    # xyxy2coco feeds both; the IoU the metric uses on them is pycocotools' own arithmetic
    a = np.array([[0.1, 0.2, 10.3, 20.7]])
    from utils.metrics import xyxy2coco
    c = xyxy2coco(a)
    assert json.loads(json.dumps(c.tolist())) == c.tolist()  # float64 survives the json round trip exactly
    m = DetectionMetrics(1)
    m.update([np.c_[c, [[0.9, 0]]]], [np.c_[[[0]], c]])
    assert m.compute()["map"] == pytest.approx(1.0)
    assert coco_iou(c, c).item() == 1.0


def test_cli_missing_weights_is_one_error_line(capture_log):
    import logging
    with capture_log(level=logging.ERROR) as errors:
        assert val.cli(["--weights", "definitely_missing.pt", "--data", "shapes.yaml"]) == 1
    assert errors == ["ERROR: weights file 'definitely_missing.pt' not found"]


def test_first_line_of_an_error():
    from utils.general import first_line
    assert first_line(ValueError("bad row\n  traceback detail")) == "bad row"
    assert first_line(RuntimeError()) == "RuntimeError" and first_line(OSError("  \n")) == "OSError"
