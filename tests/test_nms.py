"""NMS parity with YOLOv5 7.0 on the reference predictions, and behaviour on edge cases."""
import pytest
import torch

from utils.nms import non_max_suppression

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
