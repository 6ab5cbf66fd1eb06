"""tests/detections.py, the comparison every backend-parity test uses: perturbations within tolerance pass, even
where they reorder near-tied detections, and real differences fail."""
from __future__ import annotations

import pytest
import torch

from tests.detections import compare_detections
from utils.inference.nms import non_max_suppression

E = 1e-4  # score perturbation of obj and of each class score
D = 0.05  # px perturbation of x, y, w, h
# conf = obj * cls moves by <= 2E (+E^2); x1 = x - w / 2 moves by <= 1.5 D
TOL = dict(score_tol=2 * E + 1e-7, box_tol=1.5 * D + 1e-6, conf_thres=0.3, iou_thres=0.45)


def _pred(seed: int = 0, n: int = 600, nc: int = 3) -> torch.Tensor:
    """Clustered boxes whose scores sit on a 1e-4 grid: many exact ties, overlaps near the IoU threshold and
    scores at the conf threshold, the cases a float error turns either way."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 8, (n, 2), generator=g) * 12.0 + torch.rand(n, 2, generator=g) * 6
    wh = 20 + torch.randint(0, 3, (n, 2), generator=g) * 4.0
    obj = (torch.rand(n, 1, generator=g) * 0.6 + 0.35).mul(1e4).round().div(1e4)
    obj[: n // 20] = 0.3  # at the threshold
    cls = (torch.rand(n, nc, generator=g) * 0.3 + 0.7).mul(1e4).round().div(1e4)
    cls[n // 20: n // 10, 1] = cls[n // 20: n // 10, 0]  # tied classes
    return torch.cat((xy, wh, obj, cls), 1)[None]


def _perturb(p: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = p.clone()
    q[..., :4] += (torch.rand(q[..., :4].shape, generator=g) * 2 - 1) * D
    q[..., 4:] = (q[..., 4:] + (torch.rand(q[..., 4:].shape, generator=g) * 2 - 1) * E).clamp(0, 1)
    return q


def _nms(p: torch.Tensor, agnostic: bool, max_det: int) -> list[torch.Tensor]:
    return non_max_suppression(p, TOL["conf_thres"], TOL["iou_thres"], agnostic=agnostic, max_det=max_det)


@pytest.mark.parametrize("agnostic, max_det", [(False, 1000), (True, 1000), (False, 25)])
def test_perturbations_within_tolerance_pass(agnostic, max_det):
    differ = 0
    for seed in range(8):
        p = _pred(seed)
        ref = _nms(p, agnostic, max_det)
        got = _nms(_perturb(p, 100 + seed), agnostic, max_det)
        a, b = ref[0][:, [4, 5]], got[0][:, [4, 5]]
        differ += len(a) != len(b) or not torch.equal(a, b)
        matched, _ = compare_detections(got, ref, agnostic=agnostic, max_det=max_det, **TOL)
        assert matched >= len(ref[0]) // 2
    assert differ >= 4, "the perturbations should change the NMS result in most cases, else this tests nothing"


def _scene() -> torch.Tensor:
    """Ten separated boxes with distinct scores (firm rows), a tied overlapping pair and a row at the threshold."""
    rows = [[30 + 60 * (k % 5), 30 + 60 * (k // 5), 30, 30, 0.5 + 0.045 * k, 0.99, 0.01] for k in range(10)]
    rows += [[400, 400, 30, 30, 0.8, 0.9, 0.1], [404, 400, 30, 30, 0.8, 0.9, 0.1], [500, 500, 30, 30, 0.3, 1.0, 0.0]]
    return torch.tensor(rows)[None]


def test_real_differences_fail():
    ref = _nms(_scene(), False, 1000)
    assert len(ref[0]) == 11  # the pair kept one box, the threshold row is out
    firm = 2  # an isolated row, far from every threshold
    changes = {"moved away": (slice(0, 4), 200.0), "rescored": (4, -3 * TOL["score_tol"]),
               "moved a little and rescored": (slice(0, 4, 2), 2 * TOL["box_tol"])}
    for what, (col, delta) in changes.items():
        bad = ref[0].clone()
        bad[firm, col] += delta
        if what.endswith("and rescored"):
            bad[firm, 4] += 3 * TOL["score_tol"]
        with pytest.raises(AssertionError, match="has no match and is no near-tie"):
            compare_detections([bad], ref, **TOL)
    dropped = [torch.cat((ref[0][:firm], ref[0][firm + 1:]))]
    extra = [torch.cat((ref[0], torch.tensor([[700.0, 700, 730, 730, 0.9, 0]])))]
    for bad in (dropped, extra):
        with pytest.raises(AssertionError, match="has no match and is no near-tie"):
            compare_detections(bad, ref, **TOL)
    assert compare_detections(ref, ref, **TOL) == (len(ref[0]), 0)
    # the tied pair may come out either way, the threshold row may appear
    other = ref[0].clone()
    k = int(torch.nonzero(other[:, 0] > 380)[0])
    other[k, [0, 2]] += 4 if other[k, 0] < 386 else -4
    with_thr = torch.cat((other, torch.tensor([[485.0, 485, 515, 515, 0.3 + 1e-4, 0]])))
    assert compare_detections([with_thr], ref, **TOL) == (10, 3)  # the pair on both sides, the new row
    with pytest.raises(AssertionError):
        compare_detections(ref + ref, ref, **TOL)  # a different number of images
