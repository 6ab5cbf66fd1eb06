"""train.py: outputs of tiny runs, loss falling, exact resume, corrupt inputs, non-finite loss, transfer, DDP (gloo),
and the optimiser/schedule/early-stopping pieces. Every run uses a generated 8-image dataset at 64 px."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

import train
from models.yolo import Model
from utils.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from utils.data.synthetic import CLASSES, generate_shapes_dataset
from utils.training.callbacks import Callbacks
from utils.training.optim import cosine_lr, linear_lr, param_groups, smart_optimizer, warmup_iterations, warmup_step

BASE = dict(imgsz=64, batch_size=4, workers=0, exist_ok=False)
NO_AUG = dict(mosaic=0.0, fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, translate=0.0, scale=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = generate_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=8, n_val=4, imgsz=64, seed=0)
    return {"path": str(root), "train": "images/train", "val": "images/val", "names": list(CLASSES)}


@pytest.fixture(scope="module")
def hyp() -> dict:
    return yaml.safe_load((ROOT / "data/hyps/hyp.scratch-low.yaml").read_text())


def read_results(save_dir) -> np.ndarray:
    return np.loadtxt(Path(save_dir) / "results.csv", delimiter=",", skiprows=1, ndmin=2)


@pytest.fixture(scope="module")
def yolov5n_run(data, tmp_path_factory, capture_log):
    project = tmp_path_factory.mktemp("runs")
    with capture_log() as log:
        opt = train.run(data=data, cfg="yolov5n.yaml", epochs=2, project=str(project), name="exp", **BASE)
    return opt, log.text


# ---------------------------------------------------------------------------------------------------------------
# tiny end-to-end runs
# ---------------------------------------------------------------------------------------------------------------
def check_outputs(save_dir: Path, epochs: int) -> None:
    for f in ("weights/last.pt", "weights/best.pt", "results.csv", "results.png", "labels.jpg", "train_batch0.jpg",
              "train_batch1.jpg", "hyp.yaml", "opt.yaml", "confusion_matrix.png", "PR_curve.png"):
        assert (save_dir / f).is_file() and (save_dir / f).stat().st_size > 0, f"missing {f}"
    r = read_results(save_dir)
    assert r.shape == (epochs, 14) and r[:, 0].tolist() == list(range(epochs))
    assert np.isfinite(r[:, 1:4]).all() and (r[:, 1:4] > 0).all()
    saved = yaml.safe_load((save_dir / "opt.yaml").read_text())
    assert saved["epochs"] == epochs and saved["hyp"]["lr0"] == 0.01  # unscaled hyp kept for resuming


def test_tiny_run_stock_yaml_outputs(yolov5n_run):
    opt, log = yolov5n_run
    save_dir = Path(opt.save_dir)
    assert opt.status == train.COMPLETED and save_dir.name == "exp"
    check_outputs(save_dir, 2)
    assert "Starting training for 2 epochs" in log and "mAP50-95" in log
    # finished checkpoints are stripped to fp16 EMA weights that our loader and attempt_load read
    ck = torch.load(save_dir / "weights/best.pt", map_location="cpu", weights_only=True)
    assert ck["optimizer"] is None and ck["epoch"] == -1
    assert ck["model"]["model.0.conv.weight"].dtype == torch.float16
    assert ck["names"] == dict(enumerate(CLASSES)) and ck["yaml"]["nc"] == 5
    from models.experimental import attempt_load
    m = attempt_load(save_dir / "weights/last.pt")
    assert m.names == dict(enumerate(CLASSES))
    assert m(torch.zeros(1, 3, 64, 64))[0].shape == (1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 10)


def test_tiny_run_increments_run_dir(yolov5n_run, data):
    opt, _ = yolov5n_run
    project = Path(opt.save_dir).parent
    opt2 = train.run(data=data, cfg="yolov5n.yaml", epochs=1, project=str(project), name="exp", noval=True,
                     noplots=True, nosave=True, noautoanchor=True, **BASE)
    assert Path(opt2.save_dir) == project / "exp2"
    assert (project / "exp2/weights/last.pt").is_file() and read_results(opt2.save_dir).shape[0] == 1


def test_tiny_run_lightweight_yaml_outputs(data, tmp_path):
    cfg = ROOT / "models" / "yolov5n_MobileNetv2.yaml"
    if not cfg.is_file():
        pytest.skip("models/yolov5n_MobileNetv2.yaml not present")
    opt = train.run(data=data, cfg=cfg.name, epochs=2, project=str(tmp_path), name="mnv2", **BASE)
    assert opt.status == train.COMPLETED
    check_outputs(Path(opt.save_dir), 2)
    ck = load_checkpoint(Path(opt.save_dir) / "weights/best.pt")
    assert any("MobileNetV2_Block" in str(row[2]) for row in ck["yaml"]["backbone"])


def test_loss_falls(data, hyp, tmp_path):
    """Eight fixed images (no augmentation) in one batch, one Adam step per epoch: the training loss falls below
    its first value at once and ends at least 8% lower."""
    h = {**hyp, **NO_AUG, "warmup_epochs": 0.0, "lr0": 0.001}
    opt = train.run(data=data, cfg="yolov5n.yaml", hyp=h, epochs=8, optimizer="Adam", nbs=8, noval=True,
                    noplots=True, noautoanchor=True, project=str(tmp_path), **{**BASE, "batch_size": 8})
    total = read_results(opt.save_dir)[:, 1:4].sum(1)  # box + obj + cls per epoch
    assert (total[1:] < total[0]).all() and total[-1] < 0.92 * total[0], total


def test_flag_combination_freeze_single_cls_multiscale(data, hyp, tmp_path):
    """--freeze keeps layers 0-1 fixed across epochs while the rest trains; --single-cls, --multi-scale, --cos-lr,
    --label-smoothing, --image-weights, --save-period and AdamW run together. hyp.yaml and the checkpoints keep the
    hyperparameters as given: the loss gains are scaled (1 class, 64 px) inside ComputeLoss only."""
    opt = train.run(data=data, cfg="yolov5n.yaml", epochs=2, freeze=[2], single_cls=True, multi_scale=True,
                    cos_lr=True, label_smoothing=0.1, image_weights=True, save_period=1, optimizer="AdamW",
                    noplots=True, noautoanchor=True, project=str(tmp_path), **BASE)
    w = Path(opt.save_dir) / "weights"
    assert opt.status == train.COMPLETED and (w / "epoch0.pt").is_file() and (w / "epoch1.pt").is_file()
    e0, e1 = (torch.load(w / f"epoch{i}.pt", weights_only=True) for i in (0, 1))
    assert e1["names"] == {0: "item"} and e1["yaml"]["nc"] == 1 and e1["hyp"]["label_smoothing"] == 0.1
    assert e1["hyp"] == {**hyp, "label_smoothing": 0.1}  # cls/obj unscaled although nc = 1 and imgsz = 64
    assert yaml.safe_load((Path(opt.save_dir) / "hyp.yaml").read_text()) == hyp
    for k in ("model.0.conv.weight", "model.1.bn.weight", "model.1.bn.bias"):
        assert torch.equal(e0["model"][k], e1["model"][k]), k  # frozen
    assert not torch.equal(e0["model"]["model.2.cv1.conv.weight"], e1["model"]["model.2.cv1.conv.weight"])


# ---------------------------------------------------------------------------------------------------------------
# resume, interruption, non-finite loss
# ---------------------------------------------------------------------------------------------------------------
def interrupt_at(ni_stop: int) -> Callbacks:
    cb = Callbacks()

    def stop(model, ni, *args):
        if ni == ni_stop:
            raise KeyboardInterrupt

    cb.register_action("on_train_batch_end", "interrupt", stop)
    return cb


def test_resume_after_interrupt_matches_uninterrupted_run(data, tmp_path, capture_log):
    """Ctrl-C in epoch 1 keeps epoch 0's last.pt; --resume continues at epoch 1 and reproduces the uninterrupted
    run exactly (optimizer, scheduler, EMA, accumulation counter and every RNG restored)."""
    kw = dict(data=data, cfg="yolov5n.yaml", epochs=3, noval=True, noplots=True, nbs=8, project=str(tmp_path), **BASE)
    ref = train.run(name="ref", **kw)
    with capture_log() as log:
        cut = train.run(name="cut", callbacks=interrupt_at(2 + 1), **kw)  # 2 batches per epoch: epoch 1, batch 1
    assert cut.status == train.INTERRUPTED
    last = Path(cut.save_dir) / "weights/last.pt"
    assert f"python train.py --resume {last}" in log.text and "holds epoch 0" in log.text
    ck = torch.load(last, map_location="cpu", weights_only=True)
    assert ck["epoch"] == 0 and ck["optimizer"] is not None and "rng" in ck
    # CPU training runs channels_last; the file keeps YOLOv5's plain NCHW tensors
    assert all(v.is_contiguous() for k in ("model", "ema") for v in ck[k].values())

    with capture_log() as log:
        res = train.run(resume=str(last))
    assert "Resuming training from" in log.text and "at epoch 1 of 3" in log.text
    assert res.status == train.COMPLETED and Path(res.save_dir) == Path(cut.save_dir)
    r_ref, r_res = read_results(ref.save_dir), read_results(res.save_dir)
    assert r_res[:, 0].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(r_res, r_ref)  # losses, metrics and learning rates of every epoch
    a = torch.load(Path(ref.save_dir) / "weights/last.pt", weights_only=True)["model"]
    b = torch.load(last, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_latest_and_finished_runs(yolov5n_run, tmp_path):
    opt, _ = yolov5n_run
    # a bare --resume picks the newest last.pt under the project; a finished (stripped) run has nothing to resume
    with pytest.raises(ValueError, match="nothing to resume|no training state"):
        train.run(resume=True, project=str(Path(opt.save_dir).parent))
    older, newer = tmp_path / "a/weights/last.pt", tmp_path / "b/weights/last.pt"
    for i, f in enumerate((older, newer)):
        f.parent.mkdir(parents=True)
        f.write_bytes(b"x")
        os.utime(f, (1e9 + i, 1e9 + i))
    assert train.find_latest_run(tmp_path) == newer
    with pytest.raises(FileNotFoundError, match="no last.pt found"):
        train.find_latest_run(tmp_path / "a" / "nothing")


def test_resume_run_folder_comes_from_the_file_location(tmp_path):
    """A checkpoint's stored options cannot choose where the resumed run writes, nor add unknown options."""
    m = Model("yolov5n.yaml", nc=5, verbose=False)
    elsewhere = tmp_path / "elsewhere"
    opt = {**vars(train.parse_opt(argv=[])), "save_dir": str(elsewhere), "epochs": 5, "not_a_flag": 1}
    sgd = torch.optim.SGD(m.parameters(), lr=0.01)
    for run_dir, f in ((tmp_path / "exp", tmp_path / "exp/weights/last.pt"), (tmp_path / "cp", tmp_path / "cp/x.pt")):
        save_checkpoint(make_checkpoint(m, optimizer=sgd, epoch=0, opt=opt), f)
        o = train.resume_opt(str(f), str(tmp_path))
        assert Path(o.save_dir) == run_dir.resolve() and o.epochs == 5 and not hasattr(o, "not_a_flag")
        assert o.weights == str(f.resolve()) and o.resume is True
    assert not elsewhere.exists()


def test_interrupt_before_first_epoch_says_nothing_to_resume(data, tmp_path, capture_log):
    with capture_log() as log:
        opt = train.run(data=data, cfg="yolov5n.yaml", epochs=2, noplots=True, noautoanchor=True,
                        project=str(tmp_path), callbacks=interrupt_at(0), **BASE)
    assert opt.status == train.INTERRUPTED and "nothing to resume" in log.text
    assert not (Path(opt.save_dir) / "weights/last.pt").exists()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(yolov5n_run, data, tmp_path, capture_log):
    """Fine-tune from the tiny run (transfer line), then poison a weight in epoch 1: the run stops with a message
    and last.pt still holds epoch 0's finite weights."""
    src = Path(yolov5n_run[0].save_dir) / "weights/best.pt"
    cb = Callbacks()

    def poison(model, ni, *args):
        if ni == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    cb.register_action("on_train_batch_end", "poison", poison)
    with capture_log() as log:
        opt = train.run(data=data, weights=str(src), epochs=3, noval=True, noplots=True, project=str(tmp_path),
                        callbacks=cb, **BASE)
    text = log.text
    assert "Transferred 349/349 tensors from" in text
    assert opt.status == train.NON_FINITE
    assert "non-finite loss at epoch 1" in text and "last good checkpoint" in text
    ck = torch.load(Path(opt.save_dir) / "weights/last.pt", weights_only=True)
    assert ck["epoch"] == 0 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert read_results(opt.save_dir).shape[0] == 1


def test_corrupt_inputs_are_skipped_with_named_warnings(data, tmp_path, capture_log):
    import shutil
    root = tmp_path / "shapes"
    shutil.copytree(data["path"], root, ignore=shutil.ignore_patterns("*.cache"))
    (root / "images/train/broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "labels/train/train_00001.txt").write_text("0 0.5 abc 0.1 0.1\n")
    (root / "labels/train/train_00002.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    with capture_log() as log:
        opt = train.run(data={**data, "path": str(root)}, cfg="yolov5n.yaml", epochs=1, noval=True, noplots=True,
                        noautoanchor=True, project=str(tmp_path / "runs"), **BASE)
    text = log.text
    assert opt.status == train.COMPLETED
    assert "broken.jpg" in text and "train_00001.txt" in text and "train_00002.txt" in text
    assert "6 images" in text  # 9 files, 3 skipped


def test_kill_mid_run_keeps_last_completed_epoch(data, tmp_path):
    """`kill` (SIGTERM) during training: exit code 130, a resume hint, and a resumable last.pt."""
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", str(tmp_path / "data.yaml"), "--cfg", "yolov5n.yaml",
           "--imgsz", "64", "--epochs", "200", "--batch-size", "4", "--workers", "0", "--noplots", "--noval",
           "--noautoanchor", "--project", str(tmp_path / "runs"), "--name", "kill"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    last = tmp_path / "runs/kill/weights/last.pt"
    deadline = time.time() + 180
    while not last.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out[-3000:]
    assert "Training interrupted during epoch" in out and f"--resume {last}" in out, out[-2000:]
    ck = torch.load(last, map_location="cpu", weights_only=True)
    assert ck["epoch"] >= 0 and ck["optimizer"] is not None


# ---------------------------------------------------------------------------------------------------------------
# DDP on two CPU processes (gloo)
# ---------------------------------------------------------------------------------------------------------------
def test_ddp_two_gloo_processes(data, tmp_path):
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train.py"), "--data", str(tmp_path / "data.yaml"), "--cfg", "yolov5n.yaml", "--imgsz", "64",
           "--epochs", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--noplots", "--sync-bn",
           "--project", str(tmp_path / "runs"), "--name", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "DDP: gloo backend, 2 processes" in out
    assert "using per-process BatchNorm" in out  # --sync-bn has no CPU kernel: warned, not crashed
    save_dir = tmp_path / "runs/ddp"
    assert (save_dir / "weights/best.pt").is_file() and read_results(save_dir).shape[0] == 2
    assert out.count("Starting training for 2 epochs") == 1  # only rank 0 logs


# ---------------------------------------------------------------------------------------------------------------
# pieces: flags, transfer, freezing, optimiser, schedules, warmup, early stopping
# ---------------------------------------------------------------------------------------------------------------
def test_bare_file_names_resolve_like_yolov5():
    opt = train.resolve_opt(train.parse_opt(argv=["--cfg", "yolov5n.yaml", "--data", "shapes.yaml",
                                                   "--hyp", "hyp.scratch-high.yaml"]))
    assert Path(opt.cfg) == ROOT / "models/yolov5n.yaml"
    assert Path(opt.data) == ROOT / "data/shapes.yaml"
    assert Path(opt.hyp) == ROOT / "data/hyps/hyp.scratch-high.yaml"
    with pytest.raises(FileNotFoundError, match="no_such_model.yaml.*looked in"):
        train.resolve_opt(train.parse_opt(argv=["--cfg", "no_such_model.yaml"]))
    with pytest.raises(ValueError, match="--cfg .* or --weights"):
        train.resolve_opt(train.parse_opt(argv=[]))
    with pytest.raises(ValueError, match="unknown option 'epoch'"):
        train.run(epoch=3)
    o = train.parse_opt(argv=["--freeze", "10", "--resume", "--cache", "--evolve", "--img", "320"])
    assert o.freeze == [10] and o.resume is True and o.cache == "ram" and o.evolve == 300 and o.imgsz == 320


def test_transfer_by_name_and_shape(tmp_path, capture_log):
    src = Model("yolov5n.yaml", nc=80, verbose=False)
    f = save_checkpoint(make_checkpoint(src), tmp_path / "src.pt")
    dst = Model("yolov5n.yaml", nc=5, verbose=False)
    with capture_log() as log:
        n = train.transfer_weights(dst, load_checkpoint(f)["state_dict"], source=str(f))
    assert n == 349 - 6  # all but the three Detect convs' weight and bias (85 vs 10 outputs per anchor)
    assert f"Transferred 343/349 tensors from {f}" in log.text
    assert torch.equal(dst.state_dict()["model.0.conv.weight"], src.state_dict()["model.0.conv.weight"])
    assert train.transfer_weights(dst, src.state_dict(), exclude=("anchors",)) == 342


def test_freeze_layers():
    m = Model("yolov5n.yaml", nc=5, verbose=False)
    frozen = train.freeze_layers(m, [2])
    assert frozen and all(k.startswith(("model.0.", "model.1.")) for k in frozen)
    assert all(not p.requires_grad for k, p in m.named_parameters() if k.startswith(("model.0.", "model.1.")))
    assert all(p.requires_grad for k, p in m.named_parameters() if not k.startswith(("model.0.", "model.1.")))
    assert {k.split(".")[1] for k in train.freeze_layers(m, [3, 5])} == {"3", "5"}
    assert train.freeze_layers(m, [0]) == [] and all(p.requires_grad for p in m.parameters())


def test_three_parameter_groups():
    m = Model("yolov5n.yaml", nc=5, verbose=False)
    biases, decay, no_decay = param_groups(m)
    n_bn = sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    n_conv = sum(isinstance(x, torch.nn.Conv2d) for x in m.modules())
    n_bias = sum(x.bias is not None for x in m.modules() if isinstance(x, (torch.nn.Conv2d, torch.nn.BatchNorm2d)))
    assert (len(biases), len(decay), len(no_decay)) == (n_bias, n_conv, n_bn)
    assert len(biases) + len(decay) + len(no_decay) == len(list(m.parameters()))
    opt = smart_optimizer(m, "SGD", lr=0.01, momentum=0.937, decay=5e-4)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0] and opt.param_groups[0]["nesterov"]
    adam = smart_optimizer(m, "AdamW", lr=0.001, momentum=0.9, decay=5e-4)
    assert adam.param_groups[0]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="not recognised"):
        smart_optimizer(m, "Lion")


def test_lr_schedules_and_warmup(hyp):
    lin, cos = linear_lr(10, 0.01), cosine_lr(10, 0.01)
    assert lin(0) == 1 and lin(10) == pytest.approx(0.01) and lin(5) == pytest.approx(0.505)
    assert cos(0) == 1 and cos(10) == pytest.approx(0.01) and cos(5) == pytest.approx(0.505)
    assert cos(2) > lin(2) and cos(8) < lin(8)  # cosine stays high longer, then falls faster
    assert warmup_iterations(3.0, 10) == 100 and warmup_iterations(3.0, 50) == 150 and warmup_iterations(0, 50) == 0

    m = Model("yolov5n.yaml", nc=5, verbose=False)
    opt = smart_optimizer(m, "SGD", lr=hyp["lr0"], momentum=hyp["momentum"], decay=5e-4)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    acc = warmup_step(opt, 0, 100, lin, 0, hyp, nbs=64, batch_size=16)
    assert acc == 1 and [g["lr"] for g in opt.param_groups] == [0.1, 0.0, 0.0]
    assert all(g["momentum"] == 0.8 for g in opt.param_groups)
    acc = warmup_step(opt, 100, 100, lin, 1, hyp, nbs=64, batch_size=16)
    assert acc == 4 and all(g["lr"] == pytest.approx(0.01 * lin(1)) for g in opt.param_groups)
    assert all(g["momentum"] == pytest.approx(0.937) for g in opt.param_groups)


def test_early_stopping():
    s = train.EarlyStopping(patience=2)
    assert [s(e, f) for e, f in enumerate([0.1, 0.2, 0.15, 0.19])] == [False, False, False, True]
    assert s.best_epoch == 1
    s = train.EarlyStopping(patience=0)  # disabled
    assert not any(s(e, 0.0 if e else 1.0) for e in range(50))


def test_class_and_image_weights():
    labels = [np.array([[0, .5, .5, .1, .1], [0, .2, .2, .1, .1]]), np.array([[2, .5, .5, .1, .1]]), np.zeros((0, 5))]
    w = train.labels_to_class_weights(labels, 3).numpy()
    np.testing.assert_allclose(w, np.array([0.5, 1, 1]) / 2.5, rtol=1e-6)  # class 1 unseen counts as once
    np.testing.assert_allclose(train.labels_to_image_weights(labels, 3, w), [2 * w[0], w[2], 0.0], rtol=1e-6)


def test_evolve_mutation_respects_limits(hyp):
    keys = [k for k in hyp if k in train.EVOLVE_META]
    rng = np.random.default_rng(0)
    children = [train.mutate_hyp(hyp, np.zeros((0, 1)), keys, rng) for _ in range(20)]
    for c in children:
        assert any(c[k] != hyp[k] for k in keys)  # something always mutates
        for k in keys:
            gain, lo, hi = train.EVOLVE_META[k]
            assert lo <= c[k] <= hi or (gain == 0 and c[k] == hyp[k])
        assert c["fliplr"] == hyp["fliplr"] and c["iou_t"] == hyp["iou_t"]  # gain 0: fixed
    # with a history, the parent is the fitness-weighted mean of the best rows
    hist = np.array([[0.9] + [hyp[k] * 2 for k in keys], [0.1] + [hyp[k] for k in keys]])
    c = train.mutate_hyp(hyp, hist, keys, np.random.default_rng(1), sigma=0.0)
    assert c["lr0"] == pytest.approx(min(hyp["lr0"] * 2, 0.1), rel=0.05)


def test_evolve_writes_table_and_best_hyp(data, tmp_path):
    """--evolve 2: two one-epoch trainings with mutated hyps, one evolve.csv row each, hyp_evolve.yaml the best row."""
    opt = train.run(data=data, cfg="yolov5n.yaml", epochs=1, evolve=2, noautoanchor=True,
                    project=str(tmp_path / "train"), **BASE)
    save_dir = Path(opt.save_dir)
    assert opt.status == train.COMPLETED and save_dir.parent == tmp_path / "evolve"
    table = np.loadtxt(save_dir / "evolve.csv", delimiter=",", skiprows=1, ndmin=2)
    best = yaml.safe_load((save_dir / "hyp_evolve.yaml").read_text())
    keys = (save_dir / "evolve.csv").read_text().splitlines()[0].split(",")[8:]
    assert table.shape == (2, 8 + len(keys)) and "lr0" in keys
    row = table[table[:, 0].argmax()]
    assert all(best[k] == v for k, v in zip(keys, row[8:]))  # read back from the csv: the same floats


def test_training_helpers_at_yolov5_import_paths():
    """Scripts written for YOLOv5 import these from utils.general / utils.torch_utils; train.X keeps working too."""
    from utils import training
    from utils.general import init_seeds, labels_to_class_weights, labels_to_image_weights
    from utils.torch_utils import EarlyStopping
    assert (init_seeds, labels_to_class_weights, labels_to_image_weights, EarlyStopping) == (
        training.init_seeds, training.labels_to_class_weights, training.labels_to_image_weights,
        training.EarlyStopping)
    assert train.EarlyStopping is EarlyStopping and train.init_seeds is init_seeds
    with pytest.raises(ImportError):
        from utils.general import no_such_helper


def test_cpu_threads_one_per_core_beside_the_workers(monkeypatch):
    """Every core trains (2 threads beside 2 workers on 2 cores, as measured fastest on an idle machine); DDP
    processes split the cores; a caller's lower count and OMP_NUM_THREADS are kept."""
    import utils.training as tr
    cpu = torch.device("cpu")
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(tr.os, "cpu_count", lambda: 4)
    try:
        torch.set_num_threads(4)
        assert tr.set_cpu_threads(cpu, workers=2) == 4 == torch.get_num_threads()
        monkeypatch.setattr(tr, "WORLD_SIZE", 2)
        assert tr.set_cpu_threads(cpu, workers=2) == 2 == torch.get_num_threads()
        monkeypatch.setattr(tr, "WORLD_SIZE", 1)
        torch.set_num_threads(1)
        assert tr.set_cpu_threads(cpu, workers=0) == 1  # never raised above what the caller chose
        torch.set_num_threads(3)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert tr.set_cpu_threads(cpu, workers=2) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert tr.training_memory_format(cpu) is torch.channels_last
    assert tr.training_memory_format(torch.device("cuda")) is torch.contiguous_format
