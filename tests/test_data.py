"""Dataset yaml, label verification/cache, augmentations, dataloader, converters, plots and the shapes generator."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from utils.boxes import scale_boxes, xywhn2xyxy
from utils.data.augmentations import (
    DEFAULT_AUGMENT_HYP,
    box_candidates,
    copy_paste,
    letterbox,
    mixup,
    multi_scale,
    random_perspective,
)
from utils.data.convert import convert_coco, convert_voc
from utils.data.convert import main as convert_main
from utils.data.dataloaders import LoadImagesAndLabels, check_dataset, create_dataloader, img2label_paths
from utils.data.synthetic import CLASSES, generate_shapes_dataset, render_image
from utils.data.synthetic import main as synthetic_main
from utils.plots import Annotator, colors, plot_images, plot_labels, plot_results

ROOT = Path(__file__).resolve().parents[1]
# one saturated colour per class (BGR), far apart so every pixel can be attributed to a class
CLASS_BGR = np.array([[0, 0, 255], [0, 255, 0], [255, 0, 0]], dtype=np.float64)
BG = 255  # white background, distinct from the 114 grey padding


def _write(root: Path, split: str, stem: str, im: np.ndarray | None, rows: list | str | None, ext: str = "png"):
    """Write an image (array via cv2) and its label file (rows of numbers, or raw text) in YOLO layout."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    f = root / "images" / split / f"{stem}.{ext}"
    if im is not None:
        cv2.imwrite(str(f), im)
    if rows is not None:
        text = rows if isinstance(rows, str) else "".join(" ".join(f"{v:g}" for v in r) + "\n" for r in rows)
        (root / "labels" / split / f"{stem}.txt").write_text(text)
    return f


def _rect_dataset(root: Path, n: int = 6, h: int = 96, w: int = 128, seed: int = 0) -> Path:
    """Images of solid class-coloured, non-overlapping rectangles on white, with exact labels."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        im = np.full((h, w, 3), BG, np.uint8)
        rows = []
        cells = [(0, 0), (0, 1), (1, 0), (1, 1)]
        for r, c in cells[: 1 + i % 4]:  # one object per quadrant, so objects never overlap
            bw, bh = rng.integers(w // 6, w // 2 - 4), rng.integers(h // 6, h // 2 - 4)
            x1 = c * w // 2 + rng.integers(1, w // 2 - bw)
            y1 = r * h // 2 + rng.integers(1, h // 2 - bh)
            k = int(rng.integers(0, 3))
            im[y1:y1 + bh, x1:x1 + bw] = CLASS_BGR[k]
            rows.append([k, (x1 + bw / 2) / w, (y1 + bh / 2) / h, bw / w, bh / h])
        _write(root, "train", f"im{i}", im, rows)
    return root / "images" / "train"


# ------------------------------------------------------------------------------------------------ letterbox & co
def test_letterbox_shapes_ratio_and_padding():
    im = np.full((100, 50, 3), 7, np.uint8)  # h=100, w=50
    out, ratio, (dw, dh) = letterbox(im, 64, auto=False)
    assert out.shape == (64, 64, 3) and ratio == (0.64, 0.64) and (dw, dh) == (16.0, 0.0)
    assert (out[:, :16] == 114).all() and (out[:, 16:48] == 7).all() and (out[:, 48:] == 114).all()
    out, _, (dw, dh) = letterbox(im, 64, auto=True, stride=32)  # minimum rectangle: 64 x 32
    assert out.shape == (64, 32, 3) and (dw, dh) == (0.0, 0.0)
    out, ratio, pad = letterbox(im, (64, 80), auto=False, scaleFill=True)
    assert out.shape == (64, 80, 3) and ratio == (80 / 50, 64 / 100) and pad == (0.0, 0.0)
    out, ratio, pad = letterbox(np.zeros((20, 30, 3), np.uint8), 64, auto=False, scaleup=False)
    assert ratio == (1.0, 1.0) and pad == (17.0, 22.0) and out.shape == (64, 64, 3)


def test_box_candidates_filters_small_thin_and_shrunk():
    before = np.array([[0, 0, 20, 20], [0, 0, 20, 20], [0, 0, 20, 20], [0, 0, 300, 3]], float).T
    after = np.array([[0, 0, 20, 20], [0, 0, 1.5, 20], [0, 0, 5, 5], [0, 0, 301, 2.5]], float).T
    assert box_candidates(before, after).tolist() == [True, False, False, False]  # ok, <2 px, area 6%, ar 120


def test_random_perspective_moves_boxes_with_pixels():
    random.seed(3)
    im = np.full((80, 80, 3), BG, np.uint8)
    im[20:40, 30:60] = (0, 0, 255)
    lb = np.array([[0, 30, 20, 60, 40]], float)
    out, lb2 = random_perspective(im, lb, degrees=0, translate=0.2, scale=0.3, shear=0)
    x1, y1, x2, y2 = np.round(lb2[0, 1:]).astype(int)
    red = (out[..., 2] > 200) & (out[..., 0] < 60)
    ys, xs = np.nonzero(red)
    assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1
    assert abs(ys.min() - y1) <= 1 and abs(ys.max() + 1 - y2) <= 1


def test_mixup_keeps_both_label_sets():
    a, b = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 200, np.uint8)
    np.random.seed(0)
    im, lb = mixup(a, np.ones((2, 5)), b, np.zeros((3, 5)))
    assert lb.shape == (5, 5) and 60 < im.mean() < 140  # Beta(32, 32) ratio stays near 0.5


def test_copy_paste_mirrors_free_boxes_only():
    im = np.full((40, 100, 3), BG, np.uint8)
    im[5:15, 10:30] = (0, 0, 255)  # mirrored spot (70..90) is free
    im[20:35, 40:48] = (0, 255, 0)  # mirrored spot (52..60) overlaps the third box
    im[20:35, 52:60] = (255, 0, 0)
    lb = np.array([[0, 10, 5, 30, 15], [1, 40, 20, 48, 35], [2, 52, 20, 60, 35]], float)
    np.random.seed(0)
    out, lb2 = copy_paste(im.copy(), lb, p=1.0)
    assert len(lb2) == 4 and lb2[3].tolist() == [0, 70, 5, 90, 15]
    assert (out[5:15, 70:90] == (0, 0, 255)).all() and (out[20:35, 52:60] == (255, 0, 0)).all()


def test_multi_scale_sizes_are_stride_multiples():
    random.seed(0)
    x = torch.zeros(2, 3, 64, 96)
    for _ in range(10):
        y = multi_scale(x, 96, 32)
        assert y.shape[2] % 32 == 0 and y.shape[3] % 32 == 0 and 32 <= max(y.shape[2:]) <= 160


# ------------------------------------------------------------------------------------------------ check_dataset
def test_check_dataset_resolves_paths_names_and_errors(tmp_path):
    _rect_dataset(tmp_path / "ds", n=2)
    (tmp_path / "ds" / "images" / "val").mkdir()
    f = tmp_path / "d.yaml"
    f.write_text(yaml.safe_dump({"path": "ds", "train": "images/train", "val": ["images/val"],
                                 "names": ["a", "b", "c"]}))
    d = check_dataset(f)
    assert d["names"] == {0: "a", 1: "b", 2: "c"} and d["nc"] == 3
    assert d["train"] == str((tmp_path / "ds" / "images" / "train").resolve()) and Path(d["val"][0]).is_absolute()
    d = check_dataset({"path": str(tmp_path / "ds"), "train": "images/train", "val": "images/train",
                       "names": {"0": "x", "1": "y"}})
    assert d["names"] == {0: "x", 1: "y"} and d["nc"] == 2

    with pytest.raises(FileNotFoundError, match="nope_missing.yaml"):
        check_dataset("nope_missing.yaml")
    f.write_text(yaml.safe_dump({"path": str(tmp_path / "ds"), "train": "images/train", "val": "images/gone",
                                 "names": ["a"]}))
    with pytest.raises(FileNotFoundError, match="images/gone"):
        check_dataset(f)
    f.write_text(yaml.safe_dump({"path": str(tmp_path / "ds"), "train": "images/train", "val": "images/val"}))
    with pytest.raises(ValueError, match="names"):
        check_dataset(f)
    f.write_text(yaml.safe_dump({"path": str(tmp_path / "ds"), "train": "images/train", "val": "images/val",
                                 "names": ["a", "b"], "nc": 3}))
    with pytest.raises(ValueError, match="nc=3"):
        check_dataset(f)


def test_check_dataset_generates_missing_dataset(tmp_path):
    f = tmp_path / "gen.yaml"
    f.write_text(yaml.safe_dump({"path": str(tmp_path / "shapes"), "train": "images/train", "val": "images/val",
                                 "names": list(CLASSES), "generate": "shapes",
                                 "generate_args": {"n_train": 5, "n_val": 3, "imgsz": 64, "seed": 1}}))
    with pytest.raises(FileNotFoundError):
        check_dataset(f, autogenerate=False)
    d = check_dataset(f)
    assert len(list(Path(d["train"]).glob("*.jpg"))) == 5 and len(list(Path(d["val"]).glob("*.jpg"))) == 3
    assert len(list((tmp_path / "shapes" / "labels" / "val").glob("*.txt"))) == 3
    mtime = (tmp_path / "shapes" / ".generator.json").stat().st_mtime_ns
    check_dataset(f)  # current: not rebuilt
    assert (tmp_path / "shapes" / ".generator.json").stat().st_mtime_ns == mtime
    y = yaml.safe_load(f.read_text())
    y["generate_args"]["n_train"] = 4
    f.write_text(yaml.safe_dump(y))
    d = check_dataset(f)  # other arguments: stale, replaced
    assert len(list(Path(d["train"]).glob("*.jpg"))) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shapes")]  # no temporary folders left
    user = tmp_path / "mine"
    _rect_dataset(user, n=2)
    generate_shapes_dataset(user, 5, 3, 64)  # a folder the generator did not write is never replaced
    assert sorted(p.name for p in (user / "images" / "train").iterdir()) == ["im0.png", "im1.png"]


def test_bare_dataset_name_resolves_under_data():
    try:
        d = check_dataset("shapes.yaml", autogenerate=False)
        assert d["yaml_file"] == str(ROOT / "data" / "shapes.yaml") and d["nc"] == len(CLASSES)
    except FileNotFoundError as e:  # not generated yet here: the yaml was found, its dataset was not
        assert "datasets/shapes" in str(e) and "shapes.yaml" in str(e)


def test_shapes_yaml_in_repo_is_valid():
    d = yaml.safe_load((ROOT / "data" / "shapes.yaml").read_text())
    assert d["generate"] == "shapes" and list(d["names"].values()) == list(CLASSES)
    assert d["generate_args"]["n_train"] >= 500 and d["generate_args"]["n_val"] >= 100


# ------------------------------------------------------------------------------------------------ synthetic
def test_synthetic_is_deterministic_and_labels_are_valid(tmp_path):
    a_im, a_lb = render_image(123, 96)
    b_im, b_lb = render_image(123, 96)
    c_im, _ = render_image(124, 96)
    assert np.array_equal(a_im, b_im) and np.array_equal(a_lb, b_lb) and not np.array_equal(a_im, c_im)
    labels = [render_image(s, 128)[1] for s in range(70, 120)]
    n_obj = [len(x) for x in labels]
    assert 0 in n_obj and max(n_obj) > 2  # some background-only images, some crowded ones
    all_lb = np.concatenate(labels)
    assert set(np.unique(all_lb[:, 0]).astype(int)) == set(range(len(CLASSES)))
    assert (all_lb[:, 1:] > 0).all() and (all_lb[:, 1:] <= 1).all() and all_lb[:, 3:].min() * 128 >= 6
    r1 = generate_shapes_dataset(tmp_path / "a", 3, 2, 64, seed=5)
    r2 = synthetic_main(["--root", str(tmp_path / "b"), "--n-train", "3", "--n-val", "2", "--imgsz", "64",
                         "--seed", "5"])
    assert len(list((r2 / "images" / "val").glob("*.jpg"))) == 2
    for f in (r1 / "labels" / "train").glob("*.txt"):
        assert f.read_text() == (r2 / "labels" / "train" / f.name).read_text()


# ------------------------------------------------------------------------------------------------ verification
def _jpeg_bytes(h=32, w=32, seed=0) -> bytes:
    noisy = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", noisy)[1].tobytes()


def test_label_verification_reports_each_bad_file(tmp_path, log_lines):
    root = tmp_path / "v"
    ok = np.full((32, 32, 3), 90, np.uint8)
    _write(root, "train", "good", ok, [[0, 0.5, 0.5, 0.2, 0.2]])
    _write(root, "train", "nolabel", ok, None)
    _write(root, "train", "emptylabel", ok, "")
    _write(root, "train", "dup", ok, [[1, 0.5, 0.5, 0.2, 0.2], [1, 0.5, 0.5, 0.2, 0.2], [0, 0.3, 0.3, 0.1, 0.1]])
    _write(root, "train", "zero", None, [[0, 0.5, 0.5, 0.2, 0.2]], ext="jpg")
    (root / "images" / "train" / "zero.jpg").write_bytes(b"")
    _write(root, "train", "garbage", None, None, ext="jpg")
    (root / "images" / "train" / "garbage.jpg").write_bytes(b"not an image at all" * 10)
    _write(root, "train", "trunc", None, None, ext="jpg")
    data = _jpeg_bytes(64, 64)
    (root / "images" / "train" / "trunc.jpg").write_bytes(data[: len(data) // 2])
    _write(root, "train", "tiny", np.zeros((8, 30, 3), np.uint8), None)
    _write(root, "train", "cols", ok, [[0, 0.5, 0.5, 0.2]])
    _write(root, "train", "nonnum", ok, "0 0.5 0.5 0.1 0.1\n1 0.5 abc 0.1 0.1\n")
    _write(root, "train", "neg", ok, [[0, -0.1, 0.5, 0.2, 0.2]])
    _write(root, "train", "big", ok, [[0, 0.5, 1.2, 0.2, 0.2]])
    _write(root, "train", "cls", ok, [[0, 0.5, 0.5, 0.2, 0.2], [7, 0.5, 0.5, 0.1, 0.1]])

    ds = LoadImagesAndLabels(root / "images" / "train", img_size=32, nc=3)
    usable = sorted(Path(f).stem for f in ds.im_files)
    assert usable == ["dup", "emptylabel", "good", "nolabel"]
    assert any("4 images, 2 backgrounds, 9 corrupt" in m for m in log_lines)
    expect = {"zero.jpg": "0 bytes", "garbage.jpg": "cannot identify", "trunc.jpg": "truncated",
              "tiny.png": "< 10 pixels", "cols.txt": "line 1: expected 5 columns", "nonnum.txt": "line 2: non-numeric",
              "neg.txt": "line 1: negative", "big.txt": "line 1: coordinate 1.2 > 1", "cls.txt": "line 2: class id 7",
              "dup.txt": "1 duplicate labels removed"}
    for name, why in expect.items():
        hits = [m for m in log_lines if name in m and "WARNING" in m]
        assert len(hits) == 1 and why in hits[0], (name, hits)
    dup = ds.labels[usable.index("dup")]
    assert dup.shape == (2, 5) and dup.dtype == np.float32
    assert ds.shapes.shape == (4, 2)

    log_lines.clear()  # warnings are replayed from the cache, class check applies again
    ds2 = LoadImagesAndLabels(root / "images" / "train", img_size=32, nc=3)
    assert ds2.cache_loaded and len(ds2) == 4 and any("trunc.jpg" in m for m in log_lines)
    assert len(LoadImagesAndLabels(root / "images" / "train", img_size=32)) == 5  # no nc: class 7 accepted
    assert len(LoadImagesAndLabels(root / "images" / "train", img_size=32, nc=1, single_cls=True)) == 5


def test_cache_is_reused_and_rebuilt_when_labels_change(tmp_path):
    path = _rect_dataset(tmp_path, n=3)
    ds = LoadImagesAndLabels(path, img_size=64)
    assert not ds.cache_loaded and ds.cache_path == tmp_path / "labels" / "train.cache" and ds.cache_path.exists()
    assert LoadImagesAndLabels(path, img_size=64).cache_loaded
    lf = tmp_path / "labels" / "train" / "im0.txt"
    lf.write_text(lf.read_text() + "2 0.1 0.1 0.05 0.05\n")
    st = lf.stat()
    os.utime(lf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds3 = LoadImagesAndLabels(path, img_size=64)
    assert not ds3.cache_loaded and len(ds3.labels[0]) == len(ds.labels[0]) + 1
    _write(tmp_path, "train", "extra", np.full((40, 40, 3), 3, np.uint8), None)  # new image, also a rebuild
    ds4 = LoadImagesAndLabels(path, img_size=64)
    assert not ds4.cache_loaded and len(ds4) == 4


def test_grayscale_rgba_16bit_and_exif_images_load(tmp_path):
    root = tmp_path / "fmt"
    (root / "images").mkdir(parents=True)
    gray = np.tile(np.arange(0, 240, 6, dtype=np.uint8), (30, 1))  # 30 x 40
    cv2.imwrite(str(root / "images" / "gray.png"), gray)
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., :3] = (10, 20, 200)
    rgba[..., 3] = 0  # fully transparent: colour must still come through
    cv2.imwrite(str(root / "images" / "rgba.png"), rgba)
    g16 = np.full((30, 40), 40000, np.uint16)
    cv2.imwrite(str(root / "images" / "g16.png"), g16)
    exif_im = np.zeros((20, 40, 3), np.uint8)
    exif_im[:, :10] = 255  # left strip white in the stored orientation
    pil = Image.fromarray(exif_im)
    ex = pil.getexif()
    ex[0x0112] = 6  # display rotated 90 degrees clockwise
    pil.save(root / "images" / "exif.jpg", exif=ex.tobytes(), quality=95)
    ds = LoadImagesAndLabels(root / "images", img_size=40, augment=False)
    by = {Path(f).stem: i for i, f in enumerate(ds.im_files)}
    assert ds.shapes[by["exif"]].tolist() == [20, 40]  # (w, h) after EXIF rotation
    ims = {k: ds.load_image(i)[0] for k, i in by.items()}
    assert ims["gray"].shape == (30, 40, 3) and np.abs(ims["gray"][..., 0].astype(int) - gray).max() <= 1
    assert (ims["gray"][..., 0] == ims["gray"][..., 2]).all()
    assert np.abs(ims["rgba"].astype(int) - (10, 20, 200)).max() <= 1
    assert ims["g16"].dtype == np.uint8 and abs(int(ims["g16"].mean()) - 40000 // 257) <= 1
    e = ims["exif"]
    assert e.shape == (40, 20, 3) and e[:8].mean() > 200 and e[12:].mean() < 50  # strip is now on top


# ------------------------------------------------------------------------------------------------ dataloader
@pytest.mark.parametrize("degrees,shear,min_fill", [(0, 0, 0.9), (4, 2, 0.7)])
def test_augmented_boxes_cover_their_objects(tmp_path, degrees, shear, min_fill):
    """After mosaic/perspective/flips every output box is filled by its class colour, and object pixels lie in
    a box of their class. Rotation/shear leave empty corners in a box (box labels have no shape), hence min_fill."""
    path = _rect_dataset(tmp_path, n=8)
    hyp = {**DEFAULT_AUGMENT_HYP, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0, "degrees": degrees, "shear": shear,
           "translate": 0.1, "scale": 0.5, "fliplr": 0.5, "flipud": 0.5}
    random.seed(0)
    np.random.seed(0)
    n_boxes = 0
    for mosaic in (1.0, 0.0):
        ds = LoadImagesAndLabels(path, img_size=128, augment=True, hyp={**hyp, "mosaic": mosaic})
        for i in range(12):
            im, t, _, shapes = ds[i % len(ds)]
            assert (shapes is None) == (mosaic == 1.0)
            img = im.numpy().transpose(1, 2, 0)[..., ::-1].astype(np.float64)  # back to HWC BGR
            dist = np.linalg.norm(img[:, :, None] - CLASS_BGR[None, None], axis=-1)  # (H, W, 3 classes)
            owner = np.where(dist.min(-1) < 60, dist.argmin(-1), -1)
            h, w = owner.shape
            inside = np.zeros((3, h, w), bool)
            for row in t.numpy():
                c = int(row[1])
                x1, y1, x2, y2 = xywhn2xyxy(row[None, 2:6], w, h)[0]
                xi1, yi1, xi2, yi2 = int(np.ceil(x1)), int(np.ceil(y1)), int(x2), int(y2)
                inside[c, max(yi1 - 1, 0):yi2 + 1, max(xi1 - 1, 0):xi2 + 1] = True
                patch = owner[yi1 + 1:yi2 - 1, xi1 + 1:xi2 - 1]  # interior: edges are blended by resampling
                if min(patch.shape) >= (4 if not degrees else 10):
                    assert (patch == c).mean() > min_fill, (mosaic, i, row, (patch == c).mean())
                    n_boxes += 1
            obj = owner >= 0
            covered = inside[owner.clip(0), np.arange(h)[:, None], np.arange(w)[None]]
            if obj.sum() > 20:
                assert covered[obj].mean() > 0.95
    assert n_boxes > 30


def test_loader_batches_rect_shapes_and_scale_back(tmp_path):
    root = tmp_path / "r"
    rng = np.random.default_rng(0)
    sizes = [(60, 120), (64, 100), (100, 50), (90, 40), (70, 70)]  # (h, w)
    for i, (h, w) in enumerate(sizes):
        _write(root, "val", f"r{i}", rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
               [[i % 3, 0.5, 0.4, 0.3, 0.2], [1, 0.25, 0.75, 0.1, 0.3]])
    loader, ds = create_dataloader(root / "images" / "val", 64, 2, 32, rect=True, pad=0.5, workers=0)
    assert len(ds) == 5 and ds.batch_shapes.shape == (3, 2) and (ds.batch_shapes % 32 == 0).all()
    seen = 0
    for bi, (ims, targets, paths, shapes) in enumerate(loader):
        assert ims.dtype == torch.uint8 and tuple(ims.shape[2:]) == tuple(ds.batch_shapes[bi])
        assert targets.shape[1] == 6 and set(targets[:, 0].int().tolist()) == set(range(len(paths)))
        for j, p in enumerate(paths):
            (h0, w0), ratio_pad = shapes[j]
            k = ds.im_files.index(p)
            assert ds.shapes[k].tolist() == [w0, h0]
            t = targets[targets[:, 0] == j]
            boxes = xywhn2xyxy(t[:, 2:6], ims.shape[3], ims.shape[2])
            back = scale_boxes(ims.shape[2:], boxes.clone(), (h0, w0), ratio_pad)
            truth = xywhn2xyxy(torch.from_numpy(ds.labels[k][:, 1:]), w0, h0)
            assert torch.allclose(back, truth, atol=0.6)
            seen += 1
    assert seen == 5


def test_cache_ram_and_disk_match_uncached(tmp_path):
    path = _rect_dataset(tmp_path, n=4)
    ref = [LoadImagesAndLabels(path, 64)[i][0] for i in range(4)]
    for kind in ("ram", "disk"):
        ds = LoadImagesAndLabels(path, 64, cache_images=kind)
        for i in range(4):
            assert torch.equal(ds[i][0], ref[i])
    assert len(list(path.glob("*.npy"))) == 4
    assert all(x is not None for x in LoadImagesAndLabels(path, 64, cache_images="ram").ims)


def test_distributed_sampler_splits_dataset(tmp_path, monkeypatch):
    path = _rect_dataset(tmp_path, n=5)
    monkeypatch.setenv("WORLD_SIZE", "2")
    got = []
    for rank in (0, 1):
        loader, _ = create_dataloader(path, 64, 2, 32, rank=rank, workers=0, shuffle=True)
        assert isinstance(loader.sampler, torch.utils.data.distributed.DistributedSampler)
        got.append(set(loader.sampler))
    assert len(got[0]) == 3 and got[0] | got[1] == set(range(5))


def test_workers_and_collate_quad(tmp_path):
    path = _rect_dataset(tmp_path, n=8)
    loader, ds = create_dataloader(path, 64, 4, 32, workers=2, augment=False)
    assert loader.num_workers == min(os.cpu_count(), 4, 2)
    ims, t, paths, _ = next(iter(loader))
    assert ims.shape == (4, 3, 64, 64) and len(paths) == 4
    loader, _ = create_dataloader(path, 64, 4, 32, workers=0, quad=True)
    random.seed(1)
    for _ in range(4):  # both quad variants keep boxes on their objects
        ims, t, paths, _ = next(iter(loader))
        assert ims.shape == (1, 3, 128, 128) and len(paths) == 1 and (t[:, 0] == 0).all()
        img = ims[0].numpy().transpose(1, 2, 0)[..., ::-1].astype(float)
        for row in t.numpy():
            x1, y1, x2, y2 = xywhn2xyxy(row[None, 2:6], 128, 128)[0].round().astype(int)
            patch = img[y1 + 1:y2 - 1, x1 + 1:x2 - 1]
            assert np.linalg.norm(patch - CLASS_BGR[int(row[1])], axis=-1).mean() < 60


def test_image_weights_indices_and_single_cls(tmp_path):
    path = _rect_dataset(tmp_path, n=4)
    ds = LoadImagesAndLabels(path, 64, image_weights=True, single_cls=True)
    assert all((lb[:, 0] == 0).all() for lb in ds.labels)
    ds.indices = np.array([2, 2, 2, 2])
    assert all(ds[i][2] == ds.im_files[2] for i in range(4))


def test_img2label_paths():
    p = os.sep.join(["", "d", "images", "x", "images", "train", "a.b.jpg"])
    assert img2label_paths([p]) == [os.sep.join(["", "d", "images", "x", "labels", "train", "a.b.txt"])]


# ------------------------------------------------------------------------------------------------ converters
def _voc_xml(fname, w, h, objs):
    o = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objs)
    return (f"<annotation><filename>{fname}</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{o}</annotation>")


def test_convert_voc(tmp_path):
    src = tmp_path / "voc"
    for split, stem, objs in (("train", "a", [("dog", (10, 20, 50, 60), 0), ("cat", (0, 0, 80, 40), 1)]),
                              ("train", "b", []), ("test", "c", [("cat", (40, 30, 80, 60), 0)])):
        (src / "images" / split).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(src / "images" / split / f"{stem}.JPG"), np.zeros((60, 80, 3), np.uint8))
        (src / "images" / split / f"{stem}.xml").write_text(_voc_xml(f"{stem}.JPG", 80, 60, objs))
    f = convert_voc(src, tmp_path / "out")
    d = check_dataset(f)
    assert d["names"] == {0: "cat", 1: "dog"} and d["val"].endswith("images/test") and d["test"]
    rows = np.loadtxt(tmp_path / "out" / "labels" / "train" / "a.txt", ndmin=2)
    assert np.allclose(rows, [[1, 30 / 80, 40 / 60, 40 / 80, 40 / 60], [0, 0.5, 20 / 60, 1.0, 40 / 60]], atol=1e-6)
    assert (tmp_path / "out" / "labels" / "train" / "b.txt").read_text() == ""
    ds = LoadImagesAndLabels(d["val"], 64)
    assert len(ds) == 1 and ds.labels[0][0, 0] == 0
    convert_main(["voc", str(src), str(tmp_path / "out2"), "--skip-difficult", "--names", "dog,cat",
                  "--mode", "symlink"])
    rows = np.loadtxt(tmp_path / "out2" / "labels" / "train" / "a.txt", ndmin=2)
    assert rows.shape == (1, 5) and rows[0, 0] == 0
    assert (tmp_path / "out2" / "images" / "train" / "a.JPG").is_symlink()
    with pytest.raises(ValueError, match="not in --names"):
        convert_voc(src, tmp_path / "out3", names=["dog"])


def test_convert_coco(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for n in ("p.jpg", "q.jpg"):
        cv2.imwrite(str(imgs / n), np.zeros((50, 100, 3), np.uint8))
    js = {"images": [{"id": 1, "file_name": "p.jpg", "width": 100, "height": 50},
                     {"id": 2, "file_name": "q.jpg", "width": 100, "height": 50}],
          "categories": [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 18, "bbox": [10, 5, 20, 10], "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 3, "bbox": [90, 40, 20, 20], "iscrowd": 0},
                          {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1}]}
    (tmp_path / "a.json").write_text(json.dumps(js))
    f = convert_coco(tmp_path / "a.json", imgs, tmp_path / "out", split="val")
    d = yaml.safe_load(f.read_text())
    assert d["names"] == {0: "car", 1: "dog"}
    rows = np.loadtxt(tmp_path / "out" / "labels" / "val" / "p.txt", ndmin=2)
    assert np.allclose(rows, [[1, 0.2, 0.2, 0.2, 0.2], [0, 0.95, 0.9, 0.1, 0.2]], atol=1e-6)  # second box clipped
    assert (tmp_path / "out" / "labels" / "val" / "q.txt").read_text() == ""  # crowd skipped
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        convert_coco(tmp_path / "bad.json", imgs, tmp_path / "o2")


# ------------------------------------------------------------------------------------------------ plots
def _near(im: np.ndarray, color, tol: float = 40) -> np.ndarray:
    return np.linalg.norm(im.astype(float) - np.array(color, float), axis=-1) < tol


def test_plot_images_draws_boxes_and_predictions(tmp_path):
    ims = torch.zeros(2, 3, 64, 64)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.5, 0.5], [1, 2, 32, 32, 20, 20]])  # normalised and pixel rows
    out = plot_images(ims, targets, ["a.jpg", "b.jpg"], tmp_path / "b.jpg", names=["x", "y", "z"])
    assert (tmp_path / "b.jpg").exists() and out.shape == (128, 128, 3)  # 2x2 grid of 64 px tiles
    box0 = _near(out[:64, :64], colors(1))
    assert box0[18:47, 15:18].any(1).all() and box0[18:47, 47:50].any(1).all()  # left/right edges x=16, x=48
    assert not box0[24:40, 24:40].any()  # interior stays black
    box1 = _near(out[:64, 64:], colors(2))  # second tile is top right, box 22..42 in pixels
    assert box1[24:41, 21:24].any(1).all() and not _near(out[:64, 64:], colors(1)).any()
    preds = torch.tensor([[0, 0, 0.5, 0.5, 0.4, 0.4, 0.9], [0, 1, 0.5, 0.5, 0.2, 0.2, 0.1]])
    out = plot_images(ims[:1], preds, fname=None)
    assert _near(out, colors(0)).sum() > 20 and not _near(out, colors(1)).any()  # conf 0.1 hidden


def test_annotator_box_label():
    a = Annotator(np.zeros((50, 80, 3), np.uint8), line_width=2)
    a.box_label([10, 20, 60, 45], "cat 0.9", color=(0, 255, 0))
    im = a.result()
    assert (im[30, 10] == (0, 255, 0)).all() and (im[5:20, 10:40] == (0, 255, 0)).all(-1).any()


def test_plot_labels_and_results(tmp_path):
    lb = np.random.default_rng(0).uniform(0.05, 0.5, (50, 5))
    lb[:, 0] = np.arange(50) % 3
    f = plot_labels(lb, ["a", "b", "c"], tmp_path)
    assert f.name == "labels.jpg" and cv2.imread(str(f)) is not None
    csv_f = tmp_path / "results.csv"
    csv_f.write_text("epoch, train/box_loss, metrics/mAP_0.5\n" + "".join(f"{i}, {1 / (i + 1)}, {i / 10}\n"
                                                                          for i in range(6)))
    out = plot_results(csv_f)
    assert out == tmp_path / "results.png" and cv2.imread(str(out)).shape[0] > 100
    with pytest.raises(FileNotFoundError):
        plot_results(tmp_path / "missing.csv")


# ------------------------------------------------------------------------------------------------ hyps
def test_hyp_files_match_published_values():
    low = yaml.safe_load((ROOT / "data/hyps/hyp.scratch-low.yaml").read_text())
    assert low == {"lr0": 0.01, "lrf": 0.01, "momentum": 0.937, "weight_decay": 0.0005, "warmup_epochs": 3.0,
                   "warmup_momentum": 0.8, "warmup_bias_lr": 0.1, "box": 0.05, "cls": 0.5, "cls_pw": 1.0,
                   "obj": 1.0, "obj_pw": 1.0, "iou_t": 0.20, "anchor_t": 4.0, "fl_gamma": 0.0, "hsv_h": 0.015,
                   "hsv_s": 0.7, "hsv_v": 0.4, "degrees": 0.0, "translate": 0.1, "scale": 0.5, "shear": 0.0,
                   "perspective": 0.0, "flipud": 0.0, "fliplr": 0.5, "mosaic": 1.0, "mixup": 0.0,
                   "copy_paste": 0.0}
    high = yaml.safe_load((ROOT / "data/hyps/hyp.scratch-high.yaml").read_text())
    med = yaml.safe_load((ROOT / "data/hyps/hyp.scratch-med.yaml").read_text())
    diff = {"lrf": 0.1, "cls": 0.3, "obj": 0.7, "scale": 0.9, "mixup": 0.1}
    assert high == {**low, **diff, "copy_paste": 0.1}
    assert med == {**low, **diff}
    assert {k: low[k] for k in DEFAULT_AUGMENT_HYP} == DEFAULT_AUGMENT_HYP


def _epoch(loader, epoch: int) -> list:
    loader.sampler.set_epoch(epoch)
    return [(ims.clone(), t.clone(), paths) for ims, t, paths, _ in loader]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
                                    for x, y in zip(a, b))


def test_training_batches_are_a_function_of_seed_and_epoch_only(tmp_path):
    """Persistent workers keep their own random streams, so the sampler hands every sample its seed: the batches
    of an epoch are the same with 0 or 2 workers, with workers kept from earlier epochs or started afresh (what a
    resumed run does), and differ between epochs; loading with workers=0 leaves the caller's streams alone."""
    path = _rect_dataset(tmp_path, n=8)
    hyp = yaml.safe_load((ROOT / "data/hyps/hyp.scratch-low.yaml").read_text())

    def loader(workers: int, seed: int = 0):
        dl, _ = create_dataloader(path, 64, 4, 32, hyp=hyp, augment=True, workers=workers, shuffle=True, seed=seed)
        return dl

    kept = loader(2)
    assert kept.persistent_workers and loader(0).num_workers == 0
    e0, e1 = _epoch(kept, 0), _epoch(kept, 1)  # the same two worker processes serve both epochs
    assert not _same(e0, e1)
    state, np_state = random.getstate(), np.random.get_state()
    assert _same(_epoch(loader(0), 1), e1)
    assert random.getstate() == state and np.array_equal(np.random.get_state()[1], np_state[1])
    assert _same(_epoch(loader(2), 1), e1)  # fresh workers told epoch 1: a resumed run
    assert not _same(_epoch(loader(0, seed=1), 1), e1)


def test_image_weights_reach_persistent_workers(tmp_path):
    """--image-weights resamples dataset.indices in the training process between epochs; the sampler reads them
    there, so workers started before the change still load the resampled images."""
    path = _rect_dataset(tmp_path, n=4)
    hyp = yaml.safe_load((ROOT / "data/hyps/hyp.scratch-low.yaml").read_text())
    dl, ds = create_dataloader(path, 64, 2, 32, hyp={**hyp, "mosaic": 0.0}, augment=True, workers=2, shuffle=True,
                               image_weights=True)
    assert {p for b in _epoch(dl, 0) for p in b[2]} == set(ds.im_files)
    ds.indices = np.array([3, 3, 3, 3])
    assert {p for b in _epoch(dl, 1) for p in b[2]} == {ds.im_files[3]}


def test_auto_cache_holds_small_datasets_in_ram_only(tmp_path, monkeypatch):
    """train.py's default --cache auto keeps the resized images in RAM when they are small beside free memory
    (identical pixels: the cache holds what load_image returns) and reads from disk otherwise; --cache off never
    caches."""
    import utils.data.dataloaders as dl
    path = _rect_dataset(tmp_path, n=4)
    ref = [LoadImagesAndLabels(path, 64)[i][0] for i in range(4)]
    auto = LoadImagesAndLabels(path, 64, cache_images="auto")
    assert all(x is not None for x in auto.ims) and all(torch.equal(auto[i][0], ref[i]) for i in range(4))
    assert all(x is None for x in LoadImagesAndLabels(path, 64, cache_images="off").ims)
    need = sum(auto._resized_bytes(i) for i in range(4))
    monkeypatch.setattr(dl, "AUTO_CACHE_BYTES", need - 1)
    assert all(x is None for x in LoadImagesAndLabels(path, 64, cache_images="auto").ims)
    monkeypatch.setattr(dl, "AUTO_CACHE_BYTES", need)
    monkeypatch.setattr(dl, "_available_memory", lambda: 10 * need - 1)  # over 10% of free memory
    assert all(x is None for x in LoadImagesAndLabels(path, 64, cache_images="auto").ims)
