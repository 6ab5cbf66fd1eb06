"""COCO-exact AP: our metric against pycocotools COCOeval on generated prediction/label sets."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from utils.metrics import (
    IOU_THRESHOLDS,
    ConfusionMatrix,
    DetectionMetrics,
    ap_per_class,
    coco_iou,
    fitness,
    match_coco,
    xyxy2coco,
)

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def coco_reference(preds: list, labels: list, nc: int, max_dets=(1, 10, 100), ids=None) -> tuple[float, float]:
    """pycocotools (mAP50-95, mAP50) for per-image preds (n, 6) xywh conf cls and labels (m, 5) cls xywh."""
    ids = list(range(len(labels))) if ids is None else [int(i) for i in ids]
    gt = {"images": [{"id": i, "width": 1000, "height": 1000} for i in ids],
          "categories": [{"id": c, "name": str(c)} for c in range(nc)], "annotations": []}
    for i, lb in zip(ids, labels):
        for row in lb:
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": int(row[0]),
                                      "bbox": [float(v) for v in row[1:5]], "area": float(row[3] * row[4]),
                                      "iscrowd": 0})
    dt = [{"image_id": i, "category_id": int(r[5]), "bbox": [float(v) for v in r[:4]], "score": float(r[4])}
          for i, p in zip(ids, preds) for r in p]
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        ev = COCOeval(cg, cg.loadRes(dt), "bbox")
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if max_dets[-1] == 100:
        return float(ev.stats[0]), float(ev.stats[1])
    # summarize() reads maxDets=100 literally for stats[0]; for other caps read the precision array directly
    s = ev.eval["precision"][:, :, :, 0, -1]  # (T, R, K) at area 'all', the last (our) cap
    return float(s[s > -1].mean()), float(s[0][s[0] > -1].mean())


def ours(preds: list, labels: list, nc: int, max_det: int = 100) -> dict:
    m = DetectionMetrics(nc, max_det=max_det)
    for s in range(0, len(preds), 7):  # several batches, like val.py
        m.update(preds[s:s + 7], labels[s:s + 7])
    return m.compute()


def _jitter(rng, boxes: np.ndarray, scale: float) -> np.ndarray:
    out = boxes.copy()
    out[:, :2] += rng.normal(0, scale, (len(boxes), 2)) * boxes[:, 2:]
    out[:, 2:] *= np.exp(rng.normal(0, scale, (len(boxes), 2)))
    return out


def make_scene(rng, n_img: int, nc: int, gt_range=(0, 8), extra=(0, 10), integer=False, crowd=False,
               present=None, pred_classes=None, quantise_scores=False, dup=(1, 3)) -> tuple[list, list]:
    """Ground truths plus noisy duplicate detections and random false positives per image."""
    preds, labels = [], []
    present = list(range(nc)) if present is None else present
    pred_classes = list(range(nc)) if pred_classes is None else pred_classes
    for _ in range(n_img):
        ng = rng.integers(*gt_range) if gt_range[1] > gt_range[0] else gt_range[0]
        if crowd:  # many same-class objects overlapping heavily
            c0 = rng.uniform(100, 900, 2)
            xy = c0 + rng.normal(0, 25, (ng, 2))
            wh = rng.uniform(40, 90, (ng, 2))
        else:
            xy = rng.uniform(0, 900, (ng, 2))
            wh = rng.uniform(5, 200, (ng, 2))
        g = np.concatenate((xy, wh), 1)
        if integer:
            g = np.round(g / 10) * 10 + np.array([0, 0, 10, 10])
        gc = rng.choice(present, ng) if not crowd else np.full(ng, rng.choice(present))
        labels.append(np.concatenate((gc[:, None], g), 1))
        rows = []
        for k in range(ng):
            for _ in range(rng.integers(*dup)):
                b = _jitter(rng, g[k:k + 1], 0.12)
                if integer:
                    b = np.round(b / 5) * 5 + np.array([0, 0, 5, 5])
                c = gc[k] if rng.random() < 0.85 else rng.choice(pred_classes)
                if c not in pred_classes:
                    continue
                rows.append([*b[0], rng.random(), c])
        for _ in range(rng.integers(*extra)):
            b = [*rng.uniform(0, 900, 2), *rng.uniform(5, 200, 2)]
            if integer:
                b = list(np.round(np.array(b) / 10) * 10 + 10)
            rows.append([*b, rng.random() * 0.6, rng.choice(pred_classes)])
        p = np.array(rows, np.float64).reshape(-1, 6)
        if quantise_scores:
            p[:, 4] = np.round(p[:, 4] * 10) / 10 + 0.01  # many exact ties, within and across images
        labels[-1] = labels[-1].reshape(-1, 5)
        preds.append(p)
    return preds, labels


def assert_matches_coco(preds, labels, nc, max_det=100):
    ref_map, ref_map50 = coco_reference(preds, labels, nc, (1, 10, max_det))
    r = ours(preds, labels, nc, max_det)
    assert abs(r["map"] - ref_map) <= 1e-3, (r["map"], ref_map)
    assert abs(r["map50"] - ref_map50) <= 1e-3, (r["map50"], ref_map50)
    return r, ref_map, ref_map50


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_scenes_match_pycocotools(seed):
    rng = np.random.default_rng(seed)
    preds, labels = make_scene(rng, 40, 5)
    r, ref, ref50 = assert_matches_coco(preds, labels, 5)
    assert 0.05 < ref < 0.95  # the scene is neither trivial nor hopeless
    assert abs(r["map"] - ref) < 1e-9  # same arithmetic: agreement far beyond the 1e-3 requirement


def test_crowded_scenes_match_pycocotools():
    rng = np.random.default_rng(3)
    preds, labels = make_scene(rng, 25, 3, gt_range=(10, 30), crowd=True, dup=(1, 5))
    assert_matches_coco(preds, labels, 3)


def test_integer_grid_boxes_and_score_ties_match_pycocotools():
    # IoUs land exactly on thresholds (0.5, 0.75, ...) and scores tie within and across images
    rng = np.random.default_rng(4)
    preds, labels = make_scene(rng, 30, 3, gt_range=(2, 12), integer=True, quantise_scores=True, crowd=True)
    assert_matches_coco(preds, labels, 3)


def test_score_ties_across_images_follow_image_id_order():
    # COCOeval ranks equal scores of different images by image id; val.py's ids need not ascend in its order
    rng = np.random.default_rng(11)
    preds, labels = make_scene(rng, 30, 2, quantise_scores=True, dup=(1, 4))
    ids = rng.permutation(1000)[:30]
    ref, ref50 = coco_reference(preds, labels, 2, ids=ids)
    m = DetectionMetrics(2)
    for s in range(0, 30, 8):
        m.update(preds[s:s + 8], labels[s:s + 8], image_ids=ids[s:s + 8])
    r = m.compute()
    assert r["map"] == pytest.approx(ref, abs=1e-12) and r["map50"] == pytest.approx(ref50, abs=1e-12)
    assert abs(ours(preds, labels, 2)["map"] - ref) > 1e-6  # the order really matters in this scene


def test_exact_threshold_iou_and_equal_iou_ties():
    # gt 0..10 x 0..10, det covering exactly half -> IoU 0.5 matches at 0.5 only; two gts equally good
    labels = [np.array([[0, 0, 0, 10, 10], [0, 0, 0, 10, 10], [1, 50, 50, 10, 10]], float)]
    preds = [np.array([[0, 0, 10, 5, 0.9, 0], [0, 0, 10, 10, 0.8, 0], [50, 50, 10, 10, 0.7, 1]], float)]
    assert coco_iou(preds[0][:1, :4], labels[0][:1, 1:]).item() == 0.5
    r, ref, ref50 = assert_matches_coco(preds, labels, 2)
    assert ref50 == pytest.approx(1.0) and r["map50"] == pytest.approx(1.0)


def test_images_without_labels_and_classes_without_predictions():
    rng = np.random.default_rng(5)
    preds, labels = make_scene(rng, 30, 6, pred_classes=[0, 1, 2, 3])  # classes 4, 5 never predicted
    for i in range(0, 30, 3):  # every third image is background with false positives
        labels[i] = np.zeros((0, 5))
    r, _, _ = assert_matches_coco(preds, labels, 6)
    present = set(np.concatenate([lb[:, 0] for lb in labels]).astype(int))
    assert {4, 5} <= present and np.all(r["ap"][np.isin(r["classes"], [4, 5])] == 0)


def test_predictions_for_absent_classes_are_ignored():
    rng = np.random.default_rng(6)
    preds, labels = make_scene(rng, 30, 5, present=[0, 1, 2])  # classes 3, 4 have predictions but no labels
    r, _, _ = assert_matches_coco(preds, labels, 5)
    assert list(r["classes"]) == [0, 1, 2]
    stripped = [p[p[:, 5] < 3] for p in preds]  # dropping them changes nothing
    assert ours(stripped, labels, 5)["map"] == pytest.approx(r["map"], abs=1e-12)


@pytest.mark.parametrize("max_det", [100, 10])
def test_max_det_truncation_per_image_and_class(max_det):
    # 150 detections of one class in an image: COCOeval keeps the best max_det of each (image, class)
    rng = np.random.default_rng(7)
    preds, labels = make_scene(rng, 12, 2, gt_range=(20, 40), extra=(120, 160), dup=(2, 4), crowd=True)
    assert max(np.bincount(p[:, 5].astype(int)).max() for p in preds) > 100
    r, ref, _ = assert_matches_coco(preds, labels, 2, max_det=max_det)
    r_uncapped = ours(preds, labels, 2, max_det=10 ** 6)
    assert abs(r_uncapped["map"] - ref) > 1e-4  # the cap matters in this scene


def test_empty_inputs():
    m = DetectionMetrics(3)
    m.update([np.zeros((0, 6)), np.zeros((0, 6))], [np.zeros((0, 5)), np.array([[1, 0, 0, 5, 5]])])
    r = m.compute()
    assert r["map"] == 0 and r["map50"] == 0 and list(r["classes"]) == [1]
    r = DetectionMetrics(3).compute()
    assert r["map"] == 0 and r["mp"] == 0


def test_perfect_predictions_score_one():
    rng = np.random.default_rng(8)
    _, labels = make_scene(rng, 10, 4)
    preds = [np.concatenate((lb[:, 1:5], rng.random((len(lb), 1)), lb[:, :1]), 1) for lb in labels]
    r = ours(preds, labels, 4)
    assert r["map"] == pytest.approx(1.0) and r["map50"] == pytest.approx(1.0)
    assert r["mp"] == pytest.approx(1.0) and r["mr"] == pytest.approx(1.0)


def test_match_coco_greedy_takes_best_unmatched_gt_in_score_order():
    # gts A (x 0..10) and B (x 2..12); det1 (score .9) overlaps both at 9/11, det2 (score .8) is exactly A.
    # COCOeval gives det1 the later of two equally good gts (B), so det2 still finds A at every threshold.
    gt = np.array([[0, 0, 10, 10], [2, 0, 10, 10]], float)
    det = np.array([[0, 0, 10, 10], [1, 0, 10, 10]], float)  # listed low score first: order must not matter
    keep, correct = match_coco([0, 0], [0, 0], [0.8, 0.9], det, [0, 0], [0, 0], gt)
    iou = coco_iou(det, gt)
    assert iou[1, 0] == iou[1, 1] == 90 / 110
    assert keep.all()
    assert correct[0].all()  # det2 -> A (IoU 1)
    assert correct[1].tolist() == [True] * 7 + [False] * 3  # det1 -> B, IoU 0.818 passes 0.50..0.80
    assert_matches_coco([np.concatenate((det, [[0.8, 0], [0.9, 0]]), 1)], [np.c_[np.zeros(2), gt]], 1)
    # a different image or class never competes
    keep, correct = match_coco([0, 1], [0, 0], [0.8, 0.9], det, [0, 0], [0, 0], gt)
    assert correct[0].all() and not correct[1].any()


def test_per_class_ap_against_pycocotools():
    rng = np.random.default_rng(9)
    preds, labels = make_scene(rng, 30, 4)
    r = ours(preds, labels, 4)
    for c in range(4):  # COCOeval with a single category is our per-class AP
        pc = [p[p[:, 5] == c] for p in preds]
        lc = [lb[lb[:, 0] == c] for lb in labels]
        ref, ref50 = coco_reference(pc, lc, 4)
        i = list(r["classes"]).index(c)
        assert r["ap"][i] == pytest.approx(ref, abs=1e-9) and r["ap50"][i] == pytest.approx(ref50, abs=1e-9)


def test_precision_recall_at_best_f1():
    # one class, 4 gts; detections: 3 hits with high scores and 2 misses with low scores
    labels = [np.array([[0, 0, 0, 10, 10], [0, 20, 0, 10, 10], [0, 40, 0, 10, 10], [0, 60, 0, 10, 10]], float)]
    preds = [np.array([[0, 0, 10, 10, .9, 0], [20, 0, 10, 10, .8, 0], [40, 0, 10, 10, .7, 0],
                       [200, 0, 10, 10, .3, 0], [300, 0, 10, 10, .2, 0]], float)]
    r = ours(preds, labels, 1)
    assert r["mp"] == pytest.approx(1.0) and r["mr"] == pytest.approx(0.75)
    assert 0.3 <= r["curves"]["best_conf"] <= 0.7


def test_ap_per_class_ties_follow_input_order():
    # two detections with the same score: the first in input order is ranked first, like COCOeval
    tp = np.array([[True], [False]])
    a = ap_per_class(tp, [0.5, 0.5], [0, 0], [0])[5][0, 0]
    b = ap_per_class(tp[::-1], [0.5, 0.5], [0, 0], [0])[5][0, 0]
    assert a == pytest.approx(1.0) and b == pytest.approx(0.5, abs=0.01)


def test_confusion_matrix_counts(tmp_path):
    cm = ConfusionMatrix(nc=3)
    labels = [np.array([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [2, 50, 50, 60, 60]], float),
              np.array([[1, 0, 0, 10, 10]], float)]
    preds = [np.array([[0, 0, 10, 10, .9, 0],  # correct class 0
                       [20, 20, 30, 30, .8, 2],  # class 1 called 2
                       [20, 20, 30, 31, .7, 1],  # duplicate on the same gt -> false alarm
                       [80, 80, 90, 90, .6, 1],  # nothing there -> false alarm
                       [50, 50, 60, 60, .1, 2]], float),  # below conf 0.25 -> gt 2 missed
             np.array([[0, 0, 10, 10, .9, 1]], float)]  # must not match image 0's boxes
    cm.update(preds, labels)
    m = cm.matrix
    assert m[0, 0] == 1 and m[2, 1] == 1 and m[1, 1] == 1  # image 1's class 1 matched
    assert m[1, 3] == 2 and m[3, 2] == 1  # two false alarms of class 1, class 2 missed
    assert m.sum() == 6
    cm2 = ConfusionMatrix(nc=3)
    for p, lb in zip(preds, labels):
        cm2.process_batch(p, lb)
    assert (cm2.matrix == m).all()
    f = cm.plot(tmp_path, names={0: "a", 1: "b", 2: "c"})
    assert f.exists() and f.stat().st_size > 1000


def _naive_confusion(preds, labels, nc, conf=0.25, iou_thres=0.45):
    """Per image, per pair: best IoU pairs claim first; one det per gt and one gt per det."""
    m = np.zeros((nc + 1, nc + 1), np.int64)
    for p, lb in zip(preds, labels):
        p = p[p[:, 4] > conf]
        pairs = []
        for gi, g in enumerate(lb):
            for di, d in enumerate(p):
                w = min(g[3], d[2]) - max(g[1], d[0])
                h = min(g[4], d[3]) - max(g[2], d[1])
                inter = max(w, 0) * max(h, 0)
                iou = inter / ((g[3] - g[1]) * (g[4] - g[2]) + (d[2] - d[0]) * (d[3] - d[1]) - inter + 1e-7)
                if iou > iou_thres:
                    pairs.append((iou, gi, di))
        # unique detection first (its best gt), then unique gt among those, both by IoU
        best_for_det = {}
        for iou, gi, di in sorted(pairs, key=lambda x: -x[0]):
            best_for_det.setdefault(di, (iou, gi))
        used_g, used_d = set(), set()
        for di, (_iou, gi) in sorted(best_for_det.items(), key=lambda kv: -kv[1][0]):
            if gi not in used_g:
                used_g.add(gi)
                used_d.add(di)
                m[int(p[di, 5]), int(lb[gi, 0])] += 1
        for gi in set(range(len(lb))) - used_g:
            m[nc, int(lb[gi, 0])] += 1
        for di in set(range(len(p))) - used_d:
            m[int(p[di, 5]), nc] += 1
    return m


def test_confusion_matrix_matches_naive_loop():
    rng = np.random.default_rng(12)
    preds, labels = make_scene(rng, 20, 4, crowd=True, gt_range=(3, 10))
    def to_xyxy(b):
        return np.c_[b[:, :2], b[:, :2] + b[:, 2:4]]

    preds = [np.c_[to_xyxy(p), p[:, 4:]] for p in preds]
    labels = [np.c_[lb[:, :1], to_xyxy(lb[:, 1:])] for lb in labels]
    cm = ConfusionMatrix(4)
    cm.update(preds, labels)
    ref = _naive_confusion(preds, labels, 4)
    assert ref.sum() > 100 and ref[:4, :4].sum() > 20
    assert (cm.matrix == ref).all()


def test_curve_plots_written(tmp_path):
    rng = np.random.default_rng(10)
    preds, labels = make_scene(rng, 10, 3)
    m = DetectionMetrics(3)
    m.update(preds, labels)
    m.compute(plot=True, save_dir=tmp_path, names=["x", "y", "z"])
    for f in ("PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png"):
        assert (tmp_path / f).stat().st_size > 1000


def test_fitness_and_xyxy2coco():
    assert fitness([0.5, 0.5, 0.6, 0.4]) == pytest.approx(0.1 * 0.6 + 0.9 * 0.4)
    assert fitness(np.array([[0, 0, 1, 0], [0, 0, 0, 1]])).tolist() == pytest.approx([0.1, 0.9])
    assert xyxy2coco(np.array([[1, 2, 4, 8]])).tolist() == [[1, 2, 3, 6]]
    assert len(IOU_THRESHOLDS) == 10 and IOU_THRESHOLDS[2] == np.linspace(.5, .95, 10)[2]


@pytest.mark.parametrize("scene", [dict(crowd=True, dup=(1, 5)), dict(integer=True, quantise_scores=True, crowd=True),
                                   dict(quantise_scores=True, dup=(1, 4))])
def test_compiled_matching_equals_the_numpy_loop(scene, monkeypatch):
    """The greedy matching runs compiled (utils/match_kernel.py) where numba is there and in numpy otherwise;
    both give the same correct matrix on crowded scenes, IoUs exactly on thresholds and tied scores (the
    pycocotools tests above run the compiled one)."""
    import utils.metrics as metrics
    preds, labels = make_scene(np.random.default_rng(6), 30, 3, gt_range=(2, 12), **scene)
    assert metrics._match_kernel() is not None  # numba is a requirement
    compiled = DetectionMetrics(3).update(preds, labels)
    monkeypatch.setattr(metrics, "MATCH_COMPILED", False)
    numpy_loop = DetectionMetrics(3).update(preds, labels)
    assert sum(c.sum() for c in compiled) > 50  # plenty of matches to get wrong
    for a, b in zip(compiled, numpy_loop):
        np.testing.assert_array_equal(a, b)
