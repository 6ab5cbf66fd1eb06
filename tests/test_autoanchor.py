"""AutoAnchor: BPR maths, keep/replace decisions, k-means anchor evolution."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]

import utils.training.autoanchor as aa
from utils.training.autoanchor import anchor_metrics, check_anchor_order, check_anchors, kmean_anchors, kmeans

ANCHORS_PX = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
                          dtype=torch.float32).view(3, 3, 2)
STRIDE = torch.tensor([8.0, 16.0, 32.0])


class FakeDetect(nn.Module):
    def __init__(self, anchors_px: torch.Tensor, stride: torch.Tensor = STRIDE):
        super().__init__()
        self.nl, self.na = anchors_px.shape[:2]
        self.register_buffer("stride", stride.clone())
        self.register_buffer("anchors", anchors_px / stride.view(-1, 1, 1))


class FakeModel(nn.Module):
    def __init__(self, anchors_px: torch.Tensor):
        super().__init__()
        self.model = nn.Sequential(FakeDetect(anchors_px))


class FakeDataset:
    """Square images of one size; labels (n, 5) cls, x, y, w, h normalised."""

    def __init__(self, wh_px: np.ndarray, img: int = 640, per_image: int = 4):
        wh_px = np.asarray(wh_px, dtype=np.float64)
        self.labels = []
        for i in range(0, len(wh_px), per_image):
            wh = wh_px[i:i + per_image] / img
            self.labels.append(np.concatenate([np.zeros((len(wh), 1)), np.full((len(wh), 2), 0.5), wh], 1))
        self.shapes = np.full((len(self.labels), 2), float(img))


def clustered_wh(centres, n_each: int = 60, spread: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    return np.concatenate([np.asarray(c) * np.exp(rng.randn(n_each, 2) * spread) for c in centres])


def test_bpr_and_aat_exact():
    wh = torch.tensor([[10.0, 10.0], [40.0, 40.0], [100.0, 10.0]])
    k = torch.tensor([[10.0, 10.0], [20.0, 20.0]])
    # label 1: ratios 1 and 0.5 (both fit); label 2: 0.25 (not > 1/4) and 0.5; label 3: 0.1 and 0.2 (none)
    bpr, aat = anchor_metrics(wh, k, thr=4.0)
    assert bpr == pytest.approx(2 / 3)
    assert aat == pytest.approx(1.0)
    bpr, aat = anchor_metrics(wh, k, thr=5.5)  # 0.2 > 1/5.5 now fits label 3
    assert bpr == pytest.approx(1.0) and aat == pytest.approx(5 / 3)


def test_check_anchor_order_flips_reversed_anchors():
    m = FakeDetect(ANCHORS_PX)
    m.anchors[:] = m.anchors.flip(0)
    assert check_anchor_order(m)
    torch.testing.assert_close(m.anchors, ANCHORS_PX / STRIDE.view(-1, 1, 1))
    assert not check_anchor_order(m)  # already consistent with stride: untouched


def test_good_anchors_are_kept(log_lines):
    np.random.seed(0)
    ds = FakeDataset(clustered_wh(ANCHORS_PX.view(-1, 2).tolist(), n_each=20))
    model = FakeModel(ANCHORS_PX)
    before = model.model[-1].anchors.clone()
    bpr = check_anchors(ds, model, thr=4.0, imgsz=640)
    assert bpr > 0.98
    assert torch.equal(model.model[-1].anchors, before)
    msg = next(x for x in log_lines if "Best Possible Recall" in x)
    assert "anchors/target" in msg and msg.rstrip().endswith("Current anchors are a good fit to dataset ✅")


def test_bad_anchors_are_replaced_by_better_bpr(log_lines):
    np.random.seed(0)
    sizes = [[300, 500], [500, 300], [600, 600]]  # far larger than 4x every stock P3/P4 anchor
    ds = FakeDataset(clustered_wh(sizes, n_each=40))
    tiny = torch.full((3, 3, 2), 8.0)  # 8x8 px everywhere: BPR 0
    model = FakeModel(tiny)
    t0 = time.time()
    bpr = check_anchors(ds, model, thr=4.0, imgsz=640)
    assert time.time() - t0 < 10
    assert bpr > 0.98
    new_px = model.model[-1].anchors * STRIDE.view(-1, 1, 1)
    wh = torch.tensor(clustered_wh(sizes, n_each=40), dtype=torch.float32)
    assert anchor_metrics(wh, new_px.view(-1, 2), 4.0)[0] > 0.98
    area = new_px.prod(-1).mean(-1)
    assert (area[1:] >= area[:-1]).all()  # grows with stride
    assert any("poor fit" in x for x in log_lines) and any("Done ✅" in x for x in log_lines)


def test_worse_new_anchors_are_not_used(monkeypatch, log_lines):
    np.random.seed(0)
    ds = FakeDataset(clustered_wh([[300, 500]], n_each=40))
    model = FakeModel(torch.full((3, 3, 2), 60.0))  # poor but non-zero BPR
    before = model.model[-1].anchors.clone()
    monkeypatch.setattr(aa, "kmean_anchors", lambda *a, **k: np.full((9, 2), 2.0, dtype=np.float32))
    check_anchors(ds, model)
    assert torch.equal(model.model[-1].anchors, before)
    assert any("original anchors better" in x for x in log_lines)


def test_kmeans_finds_blob_centres():
    rng = np.random.RandomState(1)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    obs = np.concatenate([c + 0.1 * rng.randn(50, 2) for c in centres])
    k, dist = kmeans(obs, 3, iter=5, rng=np.random.RandomState(0))
    k = k[np.argsort(k @ [1.0, 100.0])]  # order (0,0), (10,0), (0,10) as listed
    np.testing.assert_allclose(k, centres, atol=0.05)
    assert dist < 0.2
    assert kmeans(np.zeros((4, 2)), 3, iter=2)[0].shape == (3, 2)  # degenerate data still gives k centroids
    with pytest.raises(ValueError, match="k=5"):
        kmeans(obs[:4], 5)


def test_kmean_anchors_fits_clusters_deterministically_and_fast():
    sizes = [[20, 20], [80, 40], [40, 160], [200, 120], [300, 500]]
    ds = FakeDataset(clustered_wh(sizes, n_each=50, spread=0.03))
    t0 = time.time()
    k1 = kmean_anchors(ds, n=5, img_size=640, gen=200, verbose=False, seed=3)
    assert time.time() - t0 < 10
    k2 = kmean_anchors(ds, n=5, img_size=640, gen=200, verbose=False, seed=3)
    assert k1.dtype == np.float32 and k1.shape == (5, 2)
    np.testing.assert_array_equal(k1, k2)
    assert (np.diff(k1.prod(1)) > 0).all()  # sorted by area
    np.testing.assert_allclose(k1, np.array(sizes, dtype=np.float32), rtol=0.1)


def test_kmean_anchors_ignores_sub_2px_labels_and_rescales():
    # 300 labels under 2 px would claim an anchor if they took part in k-means
    wh = np.concatenate([clustered_wh([[40, 40], [160, 160]], n_each=30, spread=0.02), np.full((300, 2), 1.0)])
    ds = FakeDataset(wh, img=1280)  # images twice img_size: pixel sizes halve
    k = kmean_anchors(ds, n=2, img_size=640, gen=50, verbose=False, seed=0)
    np.testing.assert_allclose(k, [[20, 20], [80, 80]], rtol=0.1)


def test_kmean_anchors_too_few_labels_falls_back_to_random():
    ds = FakeDataset(np.array([[50.0, 60.0], [70.0, 40.0]]))
    k = kmean_anchors(ds, n=9, img_size=640, gen=20, verbose=False, seed=0)
    assert k.shape == (9, 2) and (k >= 2.0).all()


def test_bad_dataset_shapes_raise():
    ds = FakeDataset(np.array([[50.0, 60.0]]))
    ds.shapes = np.array([640.0, 640.0])
    with pytest.raises(ValueError, match="dataset.shapes"):
        kmean_anchors(ds, n=2, gen=1, verbose=False)
