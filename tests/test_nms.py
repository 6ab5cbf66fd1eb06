"""NMS parity with YOLOv5 7.0 on the reference predictions, behaviour on edge cases, and exact equality of the
windowed NMS with the all-candidates implementation it replaced."""
import pytest
import torch
import torchvision

from utils.boxes import xywh2xyxy
from utils.inference.nms import MAX_WH, greedy_nms_topk, non_max_suppression

CASES = {
    "conf0.25_iou0.45": dict(conf_thres=0.25, iou_thres=0.45, max_det=1000),
    "conf0.001_iou0.6_multilabel_maxdet300": dict(conf_thres=0.001, iou_thres=0.6, multi_label=True, max_det=300),
    "conf0.25_iou0.45_agnostic": dict(conf_thres=0.25, iou_thres=0.45, agnostic=True, max_det=1000),
}


@pytest.mark.parametrize("case", list(CASES))
def test_nms_matches_reference(reference, case):
    out = non_max_suppression(reference["nms"]["pred"], **CASES[case])
    for ours, ref in zip(out, reference["nms"][case]):
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max() <= 1e-4


def _pred(boxes_xywh, obj, cls_scores):
    return torch.cat([torch.tensor(boxes_xywh, dtype=torch.float32), torch.tensor(obj)[:, None],
                      torch.tensor(cls_scores, dtype=torch.float32)], 1)[None]


def test_overlapping_boxes_of_different_classes_survive_unless_agnostic():
    p = _pred([[50, 50, 20, 20], [51, 50, 20, 20]], [0.9, 0.8], [[1.0, 0.0], [0.0, 1.0]])
    assert len(non_max_suppression(p, 0.25, 0.45)[0]) == 2
    assert len(non_max_suppression(p, 0.25, 0.45, agnostic=True)[0]) == 1


def test_classes_filter_max_det_and_empty():
    p = _pred([[10, 10, 4, 4], [100, 100, 4, 4], [200, 200, 4, 4]], [0.9, 0.8, 0.7], [[1, 0], [0, 1], [1, 0]])
    out = non_max_suppression(p, 0.25, 0.45, classes=[0])[0]
    assert out[:, 5].tolist() == [0, 0]
    assert len(non_max_suppression(p, 0.25, 0.45, max_det=1)[0]) == 1
    assert non_max_suppression(p, 0.95, 0.45)[0].shape == (0, 6)
    with pytest.raises(ValueError, match="conf_thres"):
        non_max_suppression(p, 1.5, 0.45)
    # boxes come back as xyxy and sorted by confidence
    out = non_max_suppression(p, 0.25, 0.45)[0]
    assert torch.allclose(out[0, :4], torch.tensor([8., 8, 12, 12]))
    assert (out[:-1, 4] >= out[1:, 4]).all()


# ---- exactness of the windowed NMS against the implementation it replaced ----------------------------------

def _nms_before(prediction, conf_thres=0.25, iou_thres=0.45, classes=None, agnostic=False, multi_label=False,
                labels=(), max_det=300, nm=0, max_nms=30000, stable=False):
    """The previous non_max_suppression, kept as the oracle: every candidate goes through one torchvision NMS.
    stable=False is it verbatim (its argsort orders exact score ties arbitrarily); stable=True only pins that
    tie order to candidate order, the order the new implementation defines."""
    if isinstance(prediction, (list, tuple)):
        prediction = prediction[0]
    bs = prediction.shape[0]
    nc = prediction.shape[2] - nm - 5
    mi = 5 + nc
    multi_label &= nc > 1
    device = prediction.device
    out = [torch.zeros((0, 6 + nm), device=device)] * bs
    candidates = prediction[..., 4] > conf_thres
    for xi in range(bs):
        x = prediction[xi][candidates[xi]]
        if labels and len(labels[xi]):
            lb = labels[xi]
            v = torch.zeros((len(lb), nc + nm + 5), device=device, dtype=x.dtype)
            v[:, :4] = lb[:, 1:5]
            v[:, 4] = 1.0
            v[range(len(lb)), lb[:, 0].long() + 5] = 1.0
            x = torch.cat((x, v), 0)
        if not x.shape[0]:
            continue
        scores = x[:, 5:mi] * x[:, 4:5]
        box = xywh2xyxy(x[:, :4])
        mask = x[:, mi:]
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=False).T
            x = torch.cat((box[i], scores[i, j, None], j[:, None].float(), mask[i]), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            keep = conf.view(-1) > conf_thres
            x = torch.cat((box, conf, j.float(), mask), 1)[keep]
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=device)).any(1)]
        if not x.shape[0]:
            continue
        x = x[x[:, 4].argsort(descending=True, stable=stable)[:max_nms]]
        offsets = x[:, 5:6] * (0 if agnostic else MAX_WH)
        keep = torchvision.ops.nms(x[:, :4] + offsets, x[:, 4], iou_thres)[:max_det]
        out[xi] = x[keep]
    return out


def crowded(bs=3, n=3000, nc=4, seed=0, dtype=torch.float32, levels=0, empty=(), nm=0):
    """Decoded predictions shaped like a detector's at conf 0.001: most anchors jittered around a few objects
    (heavy overlap, so NMS suppresses a lot), the rest scattered with small objectness. levels > 0 quantises
    every score to multiples of 1/levels, so exact ties are everywhere."""
    g = torch.Generator().manual_seed(seed)
    k = 6
    centre = torch.rand(bs, k, 2, generator=g, dtype=dtype) * 300
    size = 15 + torch.rand(bs, k, 2, generator=g, dtype=dtype) * 100
    src = torch.randint(0, k, (bs, n), generator=g)
    pick = lambda t: torch.gather(t, 1, src[..., None].expand(-1, -1, 2))
    wh = pick(size) * torch.exp(0.2 * torch.randn(bs, n, 2, generator=g, dtype=dtype))
    xy = pick(centre) + 0.15 * wh * torch.randn(bs, n, 2, generator=g, dtype=dtype)
    bg = torch.rand(bs, n, generator=g) < 0.3
    xy[bg] = torch.rand(int(bg.sum()), 2, generator=g, dtype=dtype) * 320
    obj = torch.rand(bs, n, generator=g, dtype=dtype) ** torch.where(bg, 6.0, 0.7).to(dtype)
    cls = torch.rand(bs, n, nc, generator=g, dtype=dtype) ** 3
    cls.scatter_(2, (src % nc)[..., None], 0.5 + 0.5 * torch.rand(bs, n, 1, generator=g, dtype=dtype))
    if levels:
        obj, cls = (obj * levels).ceil() / levels, (cls * levels).ceil() / levels
    masks = torch.rand(bs, n, nm, generator=g, dtype=dtype)
    p = torch.cat((xy, wh, obj[..., None], cls, masks), 2)
    p[list(empty), :, 4] = 0  # images without a single candidate
    return p


@pytest.fixture(params=["compiled", "torchvision"])
def nms_path(request, monkeypatch):
    """Run a test through the compiled kernel (numba is a requirement, so it must be there) and again through
    the torchvision path it falls back to."""
    import utils.inference.nms as nms
    assert nms._kernel() is not None
    monkeypatch.setattr(nms, "COMPILED", request.param == "compiled")
    return request.param


def _assert_same(new, old):
    assert len(new) == len(old)
    for a, b in zip(new, old):
        assert a.shape == b.shape
        assert torch.equal(a, b)  # bitwise: the same rows from the same float ops, in the same order


def _no_score_ties(p, nc):
    s = (p[..., 5:5 + nc] * p[..., 4:5]).flatten()
    s = s[s > 0]  # an empty image's zeros never become candidates
    return s.unique().numel() == s.numel()


NMS_CASES = [
    dict(conf_thres=0.001, iou_thres=0.6, multi_label=True, max_det=300),
    dict(conf_thres=0.001, iou_thres=0.6, multi_label=True, max_det=10),
    dict(conf_thres=0.001, iou_thres=0.6, multi_label=False, max_det=3),
    dict(conf_thres=0.001, iou_thres=0.45, multi_label=True, agnostic=True, max_det=50),
    dict(conf_thres=0.001, iou_thres=0.7, multi_label=True, classes=[1, 3], max_det=20),
    dict(conf_thres=0.25, iou_thres=0.45, max_det=1000),
    dict(conf_thres=0.001, iou_thres=0.6, multi_label=True, max_det=100, max_nms=700),
    dict(conf_thres=0.001, iou_thres=0.6, multi_label=True, max_det=5000),
]


@pytest.mark.parametrize("kw", NMS_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_windowed_nms_equals_previous_implementation(kw, nms_path):
    # float64 scores of this size have no exact ties, so the verbatim old function is a deterministic oracle
    p = crowded(seed=1, dtype=torch.float64, empty=(1,))
    assert _no_score_ties(p, 4)
    _assert_same(non_max_suppression(p, **kw), _nms_before(p, **kw))


@pytest.mark.parametrize("kw", NMS_CASES[:5], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_windowed_nms_with_score_ties(kw, nms_path):
    # 20 score levels: thousands of exact ties, also across window boundaries; the oracle breaks them by
    # candidate order (the only order a windowed search can reproduce)
    p = crowded(seed=2, levels=20, empty=(0,))
    assert not _no_score_ties(p, 4)
    _assert_same(non_max_suppression(p, **kw), _nms_before(p, **kw, stable=True))


def test_windowed_nms_masks_labels_and_all_empty(nms_path):
    p = crowded(bs=2, seed=3, nm=3)
    labels = [torch.tensor([[1, 50.0, 60, 30, 40], [0, 200, 100, 60, 20]]), torch.zeros((0, 5))]
    kw = dict(conf_thres=0.001, iou_thres=0.6, multi_label=True, max_det=40, nm=3)
    _assert_same(non_max_suppression(p, labels=labels, **kw), _nms_before(p, labels=labels, **kw, stable=True))
    p[..., 4] = 0
    out = non_max_suppression(p, **kw)
    assert [o.shape for o in out] == [(0, 9), (0, 9)]


@pytest.mark.parametrize("window", [1, 3, 16])
def test_greedy_nms_topk_any_window_equals_full_nms(window):
    # tiny windows force many extensions (each checked only against survivors so far) and boundary ties
    p = crowded(bs=1, n=1500, seed=4, levels=30)[0]
    boxes, scores = xywh2xyxy(p[:, :4]), p[:, 4] * p[:, 5]
    order = scores.sort(descending=True, stable=True)[1]
    for max_det in (1, 7, 60, 10_000):
        full = order[torchvision.ops.nms(boxes[order], scores[order], 0.5)[:max_det]]
        assert torch.equal(greedy_nms_topk(boxes, scores, 0.5, max_det, window=window), full)


@pytest.mark.parametrize("far, iou_thres", [
    ([[7325.0, 7325, 750, 750, 1.0, 0.99, 0.0], [25, 25, 150, 150, 1.0, 0.0, 0.98]], 0.005),
    ([[7700.0, 7700, 100, 100, 1.0, 0.99, 0.0], [20, 20, 100, 100, 1.0, 0.0, 0.98]], 0.5),  # identical once shifted
])
def test_per_class_split_falls_back_when_the_class_shift_cannot_separate_boxes(nms_path, far, iou_thres):
    # a class-0 box near (7680, 7680) and a class-1 box near (0, 0) overlap once class 1 is shifted by MAX_WH, so
    # the previous single call suppresses across classes there; splitting per class would not, hence the guard
    p = crowded(bs=1, n=2000, nc=2, seed=5, dtype=torch.float64)
    p = torch.cat((torch.tensor([far], dtype=torch.float64), p), 1)
    kw = dict(conf_thres=0.001, iou_thres=iou_thres, multi_label=True, max_det=3000)
    new, old = non_max_suppression(p, **kw), _nms_before(p, **kw)
    x1 = far[1][0] - far[1][2] / 2
    assert not ((old[0][:, 5] == 1) & (old[0][:, 0] == x1)).any()  # the cross-class suppression happened
    _assert_same(new, old)


def test_compiled_kernel_serves_cpu_batches_and_steps_aside_where_it_does_not_apply(monkeypatch):
    """val.py's and detect.py's calls (CPU, float32) go through the compiled kernel; auto-labelling, fp16 and
    a switched-off kernel take the torchvision path, with the same boxes."""
    import utils.inference.nms as nms
    from utils.inference import nms_kernel
    calls = []
    real = nms_kernel.batch_nms
    monkeypatch.setattr(nms_kernel, "batch_nms", lambda *a: calls.append(a[0].shape) or real(*a))
    p = crowded(bs=2, n=800, seed=7)
    kw = dict(conf_thres=0.001, iou_thres=0.6, multi_label=True, max_det=100)
    compiled = nms.non_max_suppression(p, **kw)
    assert calls == [(2, 800, 9)]
    nms.non_max_suppression(p, labels=[torch.tensor([[1, 50.0, 60, 30, 40]]), torch.zeros((0, 5))], **kw)
    nms.non_max_suppression(p.half(), **kw)
    monkeypatch.setattr(nms, "COMPILED", False)
    _assert_same(compiled, nms.non_max_suppression(p, **kw))
    assert len(calls) == 1


def _mixed_sizes(bs=2, n=2500, nc=5, seed=8, dtype=torch.float64):
    """crowded() plus boxes from 2 to 600 px wide, some far outside the image, so grid cells are both much
    larger and much smaller than the boxes in them and queries run past the grid's edges."""
    p = crowded(bs=bs, n=n, nc=nc, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(bs, n, generator=g) < 0.3
    p[..., 2:4][m] = (2 + 598 * torch.rand(int(m.sum()), 2, generator=g, dtype=dtype) ** 3)
    far = torch.rand(bs, n, generator=g) < 0.05
    p[..., :2][far] = -1500 + 4000 * torch.rand(int(far.sum()), 2, generator=g, dtype=dtype)
    return p


@pytest.mark.parametrize("iou_thres", [0.0, 0.05, 0.3, 0.45, 0.6, 0.9, 1.0])
@pytest.mark.parametrize("agnostic", [False, True])
def test_compiled_nms_any_threshold_and_box_size(iou_thres, agnostic):
    # the kernel only compares a candidate with survivors whose centre lies within its reach, a bound that
    # depends on the threshold (unbounded at 0); every threshold and box size gives the oracle's boxes
    p = _mixed_sizes()
    assert _no_score_ties(p, 5)
    kw = dict(conf_thres=0.001, iou_thres=iou_thres, multi_label=True, agnostic=agnostic, max_det=400)
    _assert_same(non_max_suppression(p, **kw), _nms_before(p, **kw))


def test_compiled_nms_many_classes_and_float32():
    # 80 classes shrink the grid to its cell budget; float32 scores tie, broken in candidate order
    p = crowded(bs=2, n=6000, nc=80, seed=9)
    for kw in (dict(conf_thres=0.001, iou_thres=0.6, multi_label=True, max_det=300),
               dict(conf_thres=0.25, iou_thres=0.45, max_det=1000)):
        _assert_same(non_max_suppression(p, **kw), _nms_before(p, **kw, stable=True))


def test_compiled_nms_non_finite_boxes():
    # NaN or infinite corners make torchvision's IoU 0 or NaN: such boxes never suppress and are never
    # suppressed, and the kernel keeps them out of its grid
    p = crowded(bs=1, n=1500, seed=10, dtype=torch.float64)
    p[0, :40, 4] = 1.0  # high scores, so they are visited early
    p[0, :10, 0] = float("nan")
    p[0, 10:20, 2] = float("inf")
    p[0, 20:30, 1] = -float("inf")
    p[0, 30:40, 3] = float("nan")
    kw = dict(conf_thres=0.001, iou_thres=0.5, multi_label=True, max_det=300)
    new, old = non_max_suppression(p, **kw), _nms_before(p, **kw)
    torch.testing.assert_close(new, old, rtol=0, atol=0, equal_nan=True)  # bitwise, NaN equal to NaN
    assert (~torch.isfinite(new[0][:, :4]).all(1)).sum() >= 40  # each class of those rows survived


def test_compiled_nms_orders_float64_scores_closer_than_float32_can_tell():
    # the kernel sorts on each score's float32 rounding and re-sorts runs of equal keys by the exact score
    p = crowded(bs=1, n=600, nc=2, seed=11, dtype=torch.float64)
    p[0, :, 5:] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    p[0, :, 4] = 0.5 + 1e-12 * torch.randperm(600, generator=torch.Generator().manual_seed(0)).double()
    p[0, :, :2] = 20.0 * torch.arange(600, dtype=torch.float64)[:, None] % 300  # spread out: many survive
    kw = dict(conf_thres=0.001, iou_thres=0.6, multi_label=True, max_det=300)
    new = non_max_suppression(p, **kw)
    assert len(torch.unique(new[0][:, 4].float())) == 1  # one float32 key for all of them
    _assert_same(new, _nms_before(p, **kw))


@pytest.mark.parametrize("iou_thres", [0.3, 0.6, 0.85])
def test_compiled_nms_finds_suppressors_at_the_edge_of_its_reach(iou_thres):
    # the farthest a suppressing box's centre can be: a narrow box inside a wide one, touching its edge, the
    # width ratio just above the threshold (IoU = w / W); a reach even 1% shorter misses these
    g = torch.Generator().manual_seed(12)
    n = 200
    w = 10 + 90 * torch.rand(n, generator=g, dtype=torch.float64)
    wide = w / (iou_thres * (1 + 1e-3 + 1e-2 * torch.rand(n, generator=g, dtype=torch.float64)))  # IoU > t
    side = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    cx = 400.0 * torch.arange(n, dtype=torch.float64) % 4000  # pairs far apart from each other
    cy = 400.0 * (torch.arange(n, dtype=torch.float64) // 10)
    h = 20 + 40 * torch.rand(n, generator=g, dtype=torch.float64)
    wide_rows = torch.stack((cx, cy, wide, h, torch.full((n,), 0.9, dtype=torch.float64)), 1)
    narrow_rows = torch.stack((cx + side * (wide - w) / 2, cy, w, h, torch.full((n,), 0.8, dtype=torch.float64)), 1)
    p = torch.cat((torch.cat((wide_rows, narrow_rows)), torch.ones(2 * n, 1, dtype=torch.float64)), 1)[None]
    kw = dict(conf_thres=0.001, iou_thres=iou_thres, max_det=1000)
    new = non_max_suppression(p, **kw)
    assert len(new[0]) == n  # every narrow box suppressed
    _assert_same(new, _nms_before(p, **kw, stable=True))  # equal scores: kept in candidate order


def test_compiled_kernel_spreads_images_over_torch_threads_with_the_same_boxes(monkeypatch):
    """With several torch threads a batch's images are split across them (numba's parallel loop); one thread
    runs them in turn. The boxes are the same either way, and the same as the oracle's."""
    import numba

    from utils.inference import nms_kernel
    calls = []
    real = nms_kernel.batch_nms_parallel
    monkeypatch.setattr(nms_kernel, "batch_nms_parallel", lambda *a: calls.append(1) or real(*a))
    p = crowded(bs=5, n=3000, seed=13)
    kw = dict(conf_thres=0.001, iou_thres=0.6, multi_label=True, max_det=300)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = non_max_suppression(p, **kw)
        assert not calls
        torch.set_num_threads(2)
        two = non_max_suppression(p, **kw)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == (1 if numba.config.NUMBA_NUM_THREADS >= 2 else 0)
    _assert_same(one, two)
    _assert_same(two, _nms_before(p, **kw, stable=True))
