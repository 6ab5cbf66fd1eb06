"""Distillation (train.py --teacher): the loss terms, confidence weighting, temperature, gradients, level matching,
teacher loading and its errors, and tiny train.py runs with a teacher (logging, results.csv, resume)."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

import train
from models.yolo import Model
from utils.boxes import bbox_iou
from utils.checkpoint import make_checkpoint, save_checkpoint
from utils.data.synthetic import CLASSES, generate_shapes_dataset
from utils.training import RESULT_KEYS, PhaseClock, ResultsCSV
from utils.training.callbacks import Callbacks
from utils.training.distill import (
    DistillLoss,
    decode_cells,
    distill_hyp,
    distill_terms,
    load_teacher,
    match_levels,
    tempered_kl,
)

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(imgsz=64, batch_size=4, workers=0, exist_ok=False)
CPU = torch.device("cpu")


def make_model(nc: int, seed: int, obj_shift: float = 0.0) -> Model:
    """yolov5n, seeded; obj_shift raises every objectness bias so that an untrained teacher has confident cells
    (a fresh head's prior is ~0.01 objectness: no cell would pass distill_conf)."""
    torch.manual_seed(seed)
    m = Model("yolov5n.yaml", nc=nc, verbose=False)
    m.names = {i: CLASSES[i % len(CLASSES)] for i in range(nc)}
    head = m.model[-1]
    with torch.no_grad():
        for conv in head.m:
            conv.bias.view(head.na, -1)[:, 4] += obj_shift
    return m


def save_teacher(path: Path, nc: int = 5, seed: int = 1, obj_shift: float = 6.0) -> Path:
    return save_checkpoint(make_checkpoint(make_model(nc, seed, obj_shift)), path)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = generate_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=8, n_val=4, imgsz=64, seed=0)
    return {"path": str(root), "train": "images/train", "val": "images/val", "names": list(CLASSES)}


def raw_levels(seed: int, nc: int = 3, shapes=((4, 4), (2, 2))) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, ny, nx, 5 + nc, generator=g) * 2 for ny, nx in shapes]


ANCHORS = [torch.tensor([[1.25, 1.625], [2.0, 3.75], [4.125, 2.875]]),
           torch.tensor([[1.875, 3.8125], [3.875, 2.8125], [3.6875, 7.4375]])]


# ---------------------------------------------------------------------------------------------------------------
# the loss terms
# ---------------------------------------------------------------------------------------------------------------
def test_tempered_kl_is_zero_at_equal_logits_and_positive_otherwise():
    t = torch.linspace(-6, 6, 49)
    for temp in (1.0, 2.0, 4.0):
        assert torch.equal(tempered_kl(t, t, temp), torch.zeros_like(t))  # the same float ops on both sides
        s = t + torch.where(torch.arange(49) % 2 == 0, 0.5, -0.7)
        assert (tempered_kl(s, t, temp) > 0).all()


def test_temperature_one_is_binary_kl_and_large_temperature_keeps_the_gradient_scale():
    s = torch.tensor([-3.0, -1.0, 0.5, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, -2.0, 2.5, -1.0, 3.5], dtype=torch.float64)
    p, q = torch.sigmoid(t), torch.sigmoid(s)
    closed = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))
    torch.testing.assert_close(tempered_kl(s, t, 1.0), closed, rtol=1e-12, atol=1e-12)  # float64 rounding
    # T^2 scaling: for large T the KL tends to (s - t)^2 / 8 and its gradient to (s - t) / 4, whatever T is.
    # sigmoid(x) = 1/2 + x/4 - x^3/48: at |x| = |logit| / T <= 0.035 the relative error is below x^2 / 4 ~ 3e-4.
    for temp in (100.0, 1000.0):
        kl = tempered_kl(s, t, temp)
        (grad,) = torch.autograd.grad(kl.sum(), s)
        d = (s - t).detach()
        torch.testing.assert_close(kl.detach(), d ** 2 / 8, rtol=2e-3, atol=0)
        torch.testing.assert_close(grad, d / 4, rtol=2e-3, atol=0)
    # a higher temperature softens the target: the tempered teacher probability moves toward 1/2
    assert torch.sigmoid(t / 4).sub(0.5).abs().lt(torch.sigmoid(t).sub(0.5).abs()).all()


def test_terms_vanish_when_student_equals_teacher_and_not_otherwise():
    t = raw_levels(0)
    lbox, lobj, lcls = distill_terms([x.clone() for x in t], t, ANCHORS, ANCHORS, 2.0, 0.25)
    assert lobj.item() == 0 and lcls.item() == 0  # KL of identical logits, exactly
    # identical boxes: 1 - DIoU = 1 - inter / union, the same area in float32 computed two ways (inter from corner
    # differences, which lose digits for boxes much smaller than their centre offset), so off by 1e-7..1e-5 either way
    assert abs(lbox.item()) < 1e-5
    s = raw_levels(1)
    lbox, lobj, lcls = distill_terms(s, t, ANCHORS, ANCHORS, 2.0, 0.25)
    assert lbox.item() > 0.05 and lobj.item() > 0.01 and lcls.item() > 0.01


def test_boxes_compare_decoded_so_different_anchors_are_handled():
    """Student and teacher with different anchors: identical decoded boxes give no box loss, identical raw outputs
    (which decode to different boxes) do."""
    t = raw_levels(0, shapes=((4, 4),))
    a_t, a_s = ANCHORS[0], ANCHORS[0] * 1.5
    s = t[0].clone()
    # solve (2 sigmoid(x))^2 a_s = (2 sigmoid(x_t))^2 a_t for the student's raw wh
    y = torch.sigmoid(t[0][..., 2:4]) * (a_t / a_s).sqrt().view(1, 3, 1, 1, 2)
    s[..., 2:4] = torch.log(y / (1 - y))
    same = distill_terms([s], t, [a_s], [a_t], 2.0, 0.25)[0]
    raw_equal = distill_terms([t[0].clone()], t, [a_s], [a_t], 2.0, 0.25)[0]
    assert same.item() < 1e-4 < 0.01 < raw_equal.item()  # 1e-4: the logit round trip's float32 error
    cell = decode_cells(torch.zeros(1, 4), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(cell, torch.tensor([[0.5, 0.5, 2.0, 3.0]]))  # sigmoid(0) = 1/2: centred, 1 anchor


def test_only_the_teachers_confident_cells_matter():
    """One cell where the teacher is confident (objectness logit +4), all others background (-12): changing the
    student at a background cell changes the loss by ~nothing, at the confident cell by a clear amount."""
    t = raw_levels(0, shapes=((4, 4),))
    t[0][..., 4] = -12.0
    t[0][0, 1, 2, 3, 4] = 4.0
    base = [t[0].clone()]

    def total(cell):
        s = t[0].clone()
        s[cell] += torch.tensor([1.0, -1.0, 0.8, -0.6, 3.0, 2.0, -2.0, 1.5])  # every channel moved
        return sum(distill_terms([s], t, ANCHORS[:1], ANCHORS[:1], 2.0, 0.25)).item()

    ref = sum(distill_terms(base, t, ANCHORS[:1], ANCHORS[:1], 2.0, 0.25)).item()
    confident, background = total((0, 1, 2, 3)), total((1, 0, 0, 0))
    assert confident - ref > 0.01
    # the background cell adds only through objectness, weighted by sigmoid(-12) = 6e-6 and averaged over 96 cells
    assert 0 <= background - ref < 1e-5 * (confident - ref)


def test_hyp_defaults_and_bad_values():
    assert distill_hyp({}) == (1.0, 2.0, 0.25)  # old hyp files (no distill keys) work
    assert distill_hyp({"distill": 0.5, "distill_t": 4, "distill_conf": 0.1}) == (0.5, 4.0, 0.1)
    for bad in ({"distill_t": 0}, {"distill": -1}, {"distill_conf": 1.0}, {"distill": "x"}, {"distill": math.nan},
                {"distill_t": math.inf}):
        with pytest.raises(ValueError, match="distill"):
            distill_hyp(bad)


def test_levels_match_by_stride_and_anchor_count():
    def head(strides, na=3):
        return SimpleNamespace(stride=torch.tensor(strides), na=na, nl=len(strides), nc=3,
                               anchors=torch.ones(len(strides), na, 2))

    s = head([8.0, 16.0, 32.0])
    assert match_levels(s, head([8.0, 16.0, 32.0])) == [(0, 0), (1, 1), (2, 2)]
    assert match_levels(s, head([8.0, 16.0, 32.0, 64.0])) == [(0, 0), (1, 1), (2, 2)]  # a P6 teacher
    assert match_levels(s, head([16.0, 32.0])) == [(1, 0), (2, 1)]
    assert match_levels(s, head([8.0, 16.0, 32.0], na=4)) == []
    with pytest.raises(ValueError, match="no output level shares stride"):
        DistillLoss(SimpleNamespace(model=[s]), SimpleNamespace(model=[head([64.0, 128.0])]), {}, 64)


# ---------------------------------------------------------------------------------------------------------------
# the teacher: loading, errors, gradients, pulling the student toward it
# ---------------------------------------------------------------------------------------------------------------
def test_teacher_is_fused_eval_and_gets_no_gradient(teacher_file):
    teacher = load_teacher(teacher_file, 5, CPU)
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in teacher.modules())  # fused into the convs
    student = make_model(5, seed=0).train()
    d = DistillLoss(student, teacher, {"box": 0.05, "cls": 0.5, "obj": 1.0}, 64)
    x = torch.rand(2, 3, 64, 64)
    raw = d.teacher_outputs(x)
    assert all(not r.is_inference() and not r.requires_grad for r in raw)
    loss, item = d(student(x), raw)
    assert loss.shape == (1,) and item.item() > 0 and loss.item() == pytest.approx(2 * item.item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert len(grads) > 100 and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_yolov5_checkpoint_works_as_teacher(tmp_path, monkeypatch):
    from tests.test_checkpoint import _save_like_yolov5
    src = make_model(3, seed=2, obj_shift=6.0)
    path = tmp_path / "yolov5_teacher.pt"
    _save_like_yolov5(src, path, monkeypatch)
    teacher = load_teacher(path, 3, CPU)
    assert not teacher.training and teacher.model[-1].nc == 3
    with pytest.raises(ValueError, match="predicts 3 classes but the data has 5"):
        load_teacher(path, 5, CPU)


def test_missing_and_corrupt_teacher_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--teacher .*not found"):
        load_teacher(tmp_path / "nope.pt", 5, CPU)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="--teacher: .*bad.pt"):
        load_teacher(bad, 5, CPU)
    # the CLI: exit code 2, one line, before the dataset is read (this one has no images: that would be another error)
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"path": str(tmp_path / "no_images"), "train": "images/train",
                                                        "val": "images/val", "names": ["a"]}))
    cmd = [sys.executable, str(ROOT / "train.py"), "--cfg", "yolov5n.yaml", "--data", str(tmp_path / "data.yaml"),
           "--teacher", str(tmp_path / "nope.pt"), "--project", str(tmp_path / "runs")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = (p.stdout + p.stderr).strip()
    assert p.returncode == 2 and "Traceback" not in out, out[-2000:]
    assert out.splitlines()[-1].endswith(f"--teacher '{tmp_path / 'nope.pt'}' not found")


def test_distillation_moves_the_student_toward_the_teacher(teacher_file):
    """Only the distillation loss, 20 Adam steps on one batch: on the teacher's confident cells the student's
    objectness, class probabilities and boxes (averaged over the three levels) end much closer to the teacher's."""
    teacher = load_teacher(teacher_file, 5, CPU)
    student = make_model(5, seed=0).train()
    d = DistillLoss(student, teacher, {"box": 0.05, "cls": 0.5, "obj": 1.0}, 64)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    raw = d.teacher_outputs(x)

    def gaps() -> np.ndarray:
        """Per level: mean |objectness gap|, mean |class probability gap|, mean 1 - IoU; then the mean of levels."""
        with torch.no_grad():
            p = student(x)
        out = []
        for (i, _), t, a_s, a_t in zip(d.pairs, raw, d.anchors_s, d.anchors_t):
            m = t[..., 4].sigmoid() >= d.conf
            s, tm = p[i][m], t[m]
            idx = m.nonzero()[:, 1]  # each confident cell's anchor
            iou = bbox_iou(decode_cells(s[:, :4], a_s[idx]), decode_cells(tm[:, :4], a_t[idx]))
            out.append([(s[:, 4].sigmoid() - tm[:, 4].sigmoid()).abs().mean().item(),
                        (s[:, 5:].sigmoid() - tm[:, 5:].sigmoid()).abs().mean().item(), (1 - iou).mean().item()])
        return np.array(out).mean(0)

    before = gaps()
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(20):
        loss, _ = d(student(x), raw)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = gaps()
    assert (after < 0.6 * before).all(), (before, after)  # measured: 0.2-0.35x of the gaps before


# ---------------------------------------------------------------------------------------------------------------
# train.py --teacher
# ---------------------------------------------------------------------------------------------------------------
def test_results_csv_and_phase_line_without_teacher_are_unchanged(tmp_path):
    f = tmp_path / "results.csv"
    ResultsCSV(f).write(0, list(range(len(RESULT_KEYS))))
    assert [h.strip() for h in f.read_text().splitlines()[0].split(",")] == ["epoch", *RESULT_KEYS]
    c = PhaseClock()
    assert "teacher" not in c.summary() and "data 0.0s, forward 0.0s, loss 0.0s" in c.summary()
    c.seconds["teacher"] = 1.25
    assert "forward 0.0s, teacher 1.2s, loss 0.0s" in c.summary()


def test_tiny_run_with_teacher(data, teacher_file, tmp_path, capture_log, monkeypatch):
    """train.py --teacher: the teacher sees the student's preprocessed batches, its time is logged as a phase, the
    distillation loss is its own last results.csv column (and results.png panel), and the run finishes."""
    seen = []
    real = DistillLoss.teacher_outputs
    monkeypatch.setattr(DistillLoss, "teacher_outputs", lambda self, imgs: seen.append(imgs) or real(self, imgs))
    student_imgs = []
    cb = Callbacks()
    cb.register_action("on_train_batch_end", "imgs", lambda model, ni, imgs, *a: student_imgs.append(imgs))
    with capture_log() as log:
        opt = train.run(data=data, cfg="yolov5n.yaml", teacher=str(teacher_file), epochs=2, noautoanchor=True,
                        project=str(tmp_path), name="kd", callbacks=cb, **BASE)
    assert opt.status == train.COMPLETED
    assert len(seen) == len(student_imgs) == 4 and all(torch.equal(a, b) for a, b in zip(seen, student_imgs))
    text = log.text
    assert "distillation: teacher" in text and "levels [8.0, 16.0, 32.0]" in text
    phase_lines = [ln for ln in text.splitlines() if ln.startswith("Time per phase")]
    assert len(phase_lines) == 2 and all(", teacher " in ln for ln in phase_lines)
    save_dir = Path(opt.save_dir)
    lines = (save_dir / "results.csv").read_text().splitlines()
    assert [h.strip() for h in lines[0].split(",")] == ["epoch", *RESULT_KEYS, "train/distill_loss"]
    r = np.loadtxt(save_dir / "results.csv", delimiter=",", skiprows=1, ndmin=2)
    assert r.shape == (2, 15) and np.isfinite(r[:, -1]).all() and (r[:, -1] > 0).all()
    assert (save_dir / "results.png").is_file()
    assert yaml.safe_load((save_dir / "opt.yaml").read_text())["teacher"] == str(teacher_file)


def test_teacher_with_other_classes_fails_before_training(data, tmp_path, capture_log):
    wrong = save_teacher(tmp_path / "nc3.pt", nc=3)
    with capture_log() as log, pytest.raises(ValueError, match="predicts 3 classes but the data has 5"):
        train.run(data=data, cfg="yolov5n.yaml", teacher=str(wrong), epochs=1, project=str(tmp_path), **BASE)
    assert "Starting training" not in log.text


def test_resume_keeps_the_teacher_and_matches_the_uninterrupted_run(data, teacher_file, tmp_path, capture_log):
    kw = dict(data=data, cfg="yolov5n.yaml", teacher=str(teacher_file), epochs=3, noval=True, noplots=True, nbs=8,
              noautoanchor=True, project=str(tmp_path), **BASE)
    ref = train.run(name="ref", **kw)
    cb = Callbacks()

    def stop(model, ni, *args):
        if ni == 3:  # epoch 1, batch 1 (2 batches per epoch)
            raise KeyboardInterrupt

    cb.register_action("on_train_batch_end", "interrupt", stop)
    cut = train.run(name="cut", callbacks=cb, **kw)
    assert cut.status == train.INTERRUPTED
    with capture_log() as log:
        res = train.run(resume=str(Path(cut.save_dir) / "weights/last.pt"))
    assert res.status == train.COMPLETED and res.teacher == str(teacher_file)
    assert "distillation: teacher" in log.text and "at epoch 1 of 3" in log.text
    a = np.loadtxt(Path(ref.save_dir) / "results.csv", delimiter=",", skiprows=1, ndmin=2)
    b = np.loadtxt(Path(res.save_dir) / "results.csv", delimiter=",", skiprows=1, ndmin=2)
    assert b.shape == (3, 15)
    np.testing.assert_array_equal(a, b)  # the teacher is deterministic, so resuming changes nothing


def test_bench_distill_table_shows_the_gain_of_each_distilled_run():
    from benchmarks.bench_distill import format_table, parse_opt
    rows = [{"model": "yolov5s", "teacher": "-", "map50": 0.5, "map50_95": 0.3, "train_s": 100.4, "ort_fp32_ms": 9.0},
            {"model": "yolov5n", "teacher": "-", "map50": 0.4, "map50_95": 0.2, "train_s": 50, "ort_fp32_ms": 4.25},
            {"model": "yolov5n", "teacher": "yolov5s", "map50": 0.45, "map50_95": 0.25, "train_s": 70,
             "ort_fp32_ms": "n/a"}]
    lines = format_table(rows, 320).splitlines()
    assert lines[0].startswith("| model | teacher | mAP50 | mAP50-95 | Δ mAP50-95 |") and "@320" in lines[0]
    assert lines[2] == "| yolov5s | - | 0.500 | 0.300 |  | 100 | 9.0 |"
    assert lines[4] == "| yolov5n | yolov5s | 0.450 | 0.250 | +0.050 | 70 | n/a |"
    opt = parse_opt([])
    assert opt.students == ["yolov5n.yaml", "yolov5n_tv_mobilenet_v3_small.yaml", "yolov5n_ShuffleNetV2.yaml"]
    assert opt.teacher_cfg == "yolov5s.yaml" and opt.data == "data/shapes.yaml" and opt.out is None
