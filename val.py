"""Validate a detector on a dataset split: P, R, COCO-exact mAP50 and mAP50-95, plots and COCO json.

Usage:
    python val.py --data shapes.yaml --weights runs/train/exp/weights/best.pt --imgsz 256
    python val.py --data coco.yaml --weights yolov5n.pt --save-json          # also reports pycocotools
    python val.py --data shapes.yaml --weights best.onnx --imgsz 256         # exported models too
    python val.py --data shapes.yaml --weights best_openvino_model --imgsz 256   # also best_ncnn_model, best.mnn

The mAP printed here equals pycocotools' COCOeval bbox AP on the json --save-json writes (same boxes,
same matching, 101-point interpolation, maxDets 100 per image and class); see utils/metrics.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils import backends
from utils.backends import DetectBackend
from utils.boxes import xywh2xyxy, xyxy2xywh
from utils.general import LOGGER, TQDM_BAR_FORMAT, check_img_size, colorstr, first_line, increment_path
from utils.metrics import COCO_MAX_DETS, ConfusionMatrix, DetectionMetrics, xyxy2coco
from utils.torch_utils import select_device, time_sync

# COCO's 80 training classes -> the 91 category ids of the official annotation files
COCO80_TO_91 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31,
                32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58,
                59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89,
                90]


def _callback(callbacks, event: str, *args) -> None:
    if callbacks is not None and hasattr(callbacks, "run"):
        callbacks.run(event, *args)


def max_stride(model) -> int:
    """Largest stride of a model or backend (tensor, list or int attribute; 32 when absent)."""
    s = getattr(model, "stride", 32)
    if torch.is_tensor(s):
        s = s.max().item() if s.numel() else 32
    elif isinstance(s, (list, tuple)):
        s = max(s) if s else 32
    return int(s)


def model_nc(model) -> int | None:
    """Class count a model predicts, when it can be read without a forward pass."""
    if isinstance(getattr(model, "nc", None), int):  # DetectBackend
        return model.nc
    m = getattr(model, "model", None)
    for obj in (model, m, getattr(m, "model", None) if m is not None else None):
        if obj is None:
            continue
        if isinstance(obj, torch.nn.Sequential) and len(obj) and hasattr(obj[-1], "nc"):
            return int(obj[-1].nc)
        y = getattr(obj, "yaml", None)
        if isinstance(y, dict) and "nc" in y:
            return int(y["nc"])
    names = getattr(model, "names", None)
    return len(names) if names else None


def image_id(path: str | Path, index: int, numeric: bool):
    """COCO image id: the numeric file stem for COCO-style names (matches official annotations), else the index."""
    return int(Path(path).stem) if numeric else index


def coco_gt_json(records: list[dict], names: dict, class_map: list[int]) -> dict:
    """Ground-truth COCO json for a YOLO-format split, from the exact boxes the metric used."""
    images, anns = [], []
    for r in records:
        images.append({"id": r["id"], "file_name": Path(r["path"]).name, "width": r["w0"], "height": r["h0"]})
        for row in r["labels"]:
            x, y, w, h = (float(v) for v in row[1:5])
            anns.append({"id": len(anns) + 1, "image_id": r["id"], "category_id": class_map[int(row[0])],
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})  # ids from 1: COCOeval reads 0 as none
    cats = [{"id": class_map[i], "name": str(n)} for i, n in sorted(names.items())]
    return {"images": images, "annotations": anns, "categories": cats}


def coco_evaluate(anno_json: str | Path, pred_json: str | Path, img_ids: list) -> tuple[float, float] | None:
    """pycocotools' (mAP50-95, mAP50) for a prediction json; None when pycocotools is missing or nothing to score."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        LOGGER.info("pycocotools not installed; skipping the COCO cross-check (pip install pycocotools)")
        return None
    dets = json.loads(Path(pred_json).read_text())
    if not dets:
        LOGGER.warning(f"WARNING ⚠️ {pred_json} holds no detections; pycocotools needs at least one")
        return None
    anno = COCO(str(anno_json))
    ev = COCOeval(anno, anno.loadRes(str(pred_json)), "bbox")
    ev.params.imgIds = list(img_ids)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def save_one_txt(predn: torch.Tensor, save_conf: bool, shape: tuple, file: Path) -> None:
    """YOLO label rows `cls x y w h [conf]` normalised to the original image."""
    gn = torch.tensor(shape, dtype=torch.float64)[[1, 0, 1, 0]]
    xywhn = (xyxy2xywh(predn[:, :4].double()) / gn).cpu().numpy()
    with open(file, "a") as f:
        f.writelines(backends.label_lines(predn[:, 5].cpu().numpy(), xywhn,
                                          predn[:, 4].cpu().numpy() if save_conf else None))


def to_original_pixels(preds: list[torch.Tensor], targets: torch.Tensor, input_hw, shapes) -> tuple:
    """A batch's detections and labels mapped back to the original images, once, in float64, for the metric,
    the confusion matrix and the json alike: per image, predn (k, 6) x1, y1, x2, y2, conf, cls and labels (m, 5)
    cls, x1, y1, x2, y2. targets: (n, 6) image, cls, cx, cy, w, h in input pixels. Two backends.rescale_boxes
    calls for the whole batch (per row, the same arithmetic as one call per image)."""
    nb = len(preds)
    orig_hw, ratio_pad = [s[0] for s in shapes[:nb]], [s[1] for s in shapes[:nb]]
    n_det = [len(p) for p in preds]
    predn = (torch.cat(preds).detach() if nb else torch.zeros((0, 6))).double().cpu()
    backends.rescale_boxes(predn[:, :4], input_hw, orig_hw, ratio_pad,
                           image=torch.repeat_interleave(torch.arange(nb), torch.tensor(n_det, dtype=torch.long)))
    targets = targets.cpu()
    img = targets[:, 0].long()
    order = img.sort(stable=True)[1]  # each image's labels in their file order
    t = targets[order, 1:].float()
    labels = torch.cat((t[:, :1].double(), xywh2xyxy(t[:, 1:5]).double()), 1)
    backends.rescale_boxes(labels[:, 1:], input_hw, orig_hw, ratio_pad, image=img[order])
    return list(predn.split(n_det)), list(labels.split(torch.bincount(img, minlength=nb).tolist()))


def coco_rows(predns: list[torch.Tensor], labelns: list[torch.Tensor]) -> tuple[list, list]:
    """to_original_pixels' output as DetectionMetrics and the json take it, per image: detections (k, 6) COCO
    x, y, w, h, conf, cls and labels (m, 5) cls, x, y, w, h, float64 numpy."""
    p = torch.cat(predns).numpy() if predns else np.zeros((0, 6))
    lb = torch.cat(labelns).numpy() if labelns else np.zeros((0, 5))
    p = np.concatenate((xyxy2coco(p[:, :4]), p[:, 4:6]), 1)
    lb = np.concatenate((lb[:, :1], xyxy2coco(lb[:, 1:5])), 1)
    return (np.split(p, np.cumsum([len(x) for x in predns])[:-1]),
            np.split(lb, np.cumsum([len(x) for x in labelns])[:-1]))


def output_to_target(output: list[torch.Tensor], max_det: int = 300) -> torch.Tensor:
    """NMS output list -> plot_images rows [img_idx, cls, cx, cy, w, h, conf] (pixels)."""
    rows = []
    for i, o in enumerate(output):
        o = o[:max_det, :6].detach().cpu().float()
        rows.append(torch.cat((torch.full((len(o), 1), i), o[:, 5:6], xyxy2xywh(o[:, :4]), o[:, 4:5]), 1))
    return torch.cat(rows, 0) if rows else torch.zeros((0, 7))


@torch.no_grad()
def run(data, weights=None, batch_size: int = 32, imgsz: int = 640, conf_thres: float = 0.001,
        iou_thres: float = 0.6, max_det: int = 300, task: str = "val", device: str = "", workers: int = 8,
        single_cls: bool = False, augment: bool = False, verbose: bool = False, save_txt: bool = False,
        save_hybrid: bool = False, save_conf: bool = False, save_json: bool = False, project=ROOT / "runs/val",
        name: str = "exp", exist_ok: bool = False, half: bool = False, dnn: bool = False, model=None,
        dataloader=None, save_dir=Path(""), plots: bool = True, callbacks=None, compute_loss=None,
        trust_weights: bool = False):
    """Validate; returns ((P, R, mAP50, mAP50-95, box, obj, cls losses), per-class mAP50-95 (nc,),
    (pre-process, inference, NMS) ms per image). Called by train.py with model= and dataloader=."""
    from utils.data.dataloaders import check_dataset, create_dataloader

    training = model is not None
    if training:  # called by train.py: the model is already on its device
        device = next(model.parameters()).device
        half &= device.type != "cpu"
        model.half() if half else model.float()
        pt, stride = True, max_stride(model)
        data = data if isinstance(data, dict) else check_dataset(data)
    else:
        if task not in ("train", "val", "test", "speed", "study"):
            raise ValueError(f"--task must be one of train, val, test, speed, study; got '{task}'")
        if weights is None:
            raise ValueError("val.py needs --weights (a .pt, .torchscript, .onnx or .mnn file, or an "
                             "_openvino_model/ or _ncnn_model/ folder)")
        device = select_device(device, batch_size=batch_size)
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
        (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
        data = check_dataset(data)  # before loading weights: a bad yaml is the cheaper error to report
        # one-line errors for a missing file or bad suffix; the backend owns the fp16-on-CPU check
        model = DetectBackend(weights, device=device, fp16=half, trusted=trust_weights)
        pt = bool(getattr(model, "pt", True))
        stride = max_stride(model)
        imgsz = check_img_size(imgsz, stride)
        half = bool(model.fp16) and pt  # exported graphs convert their own input
        if not pt:  # exported graphs: square inputs; the backend decides what a fixed-shape export takes
            batch_size, _ = model.input_shape((imgsz, imgsz), batch_size, square=True)
            LOGGER.info(f"Square inference ({batch_size},3,{imgsz},{imgsz}) for non-PyTorch models")
            if getattr(model, "end2end", False):
                LOGGER.warning(f"WARNING ⚠️ {weights} has NMS in its graph: its baked-in thresholds, not "
                               f"--conf-thres {conf_thres}, decide the detections, so mAP is not comparable")
    if hasattr(model, "eval"):
        model.eval()

    names = dict(data["names"])
    nc = 1 if single_cls else int(data["nc"])
    if single_cls:
        names = {0: names[0] if len(names) == 1 else "item"}
    ncm = model_nc(model)
    if ncm is not None and not single_cls and ncm != nc:
        raise ValueError(f"{weights or 'model'} predicts {ncm} classes but {data.get('yaml_file', 'data')} has "
                         f"nc={nc}; pass matching --weights and --data (or --single-cls)")
    numeric_ids = False
    anno_json = None

    if not training:
        if dataloader is None:
            split = "val" if task in ("speed", "study") else task
            if not data.get(split):
                raise ValueError(f"{data.get('yaml_file', 'dataset')}: no '{split}' split to validate "
                                 f"(keys: {', '.join(k for k in ('train', 'val', 'test') if data.get(k))})")
            if hasattr(model, "warmup"):
                model.warmup(imgsz=(1 if not pt else batch_size, 3, imgsz, imgsz))
            pad, rect = (0.0, False) if task == "speed" else (0.5, pt)
            dataloader = create_dataloader(data[split], imgsz, batch_size, stride, single_cls, pad=pad, rect=rect,
                                           workers=workers, prefix=colorstr(f"{split}: "), nc=nc)[0]
    dataset = getattr(dataloader, "dataset", None)
    if dataset is not None and len(dataset) == 0:
        raise ValueError(f"empty dataset: no images to validate in {getattr(dataset, 'path', data.get('val'))}")
    files = getattr(dataset, "im_files", None)
    if files:
        stems = [Path(f).stem for f in files]
        numeric_ids = all(x.isnumeric() for x in stems) and len({int(x) for x in stems}) == len(stems)
        official = Path(data.get("path", "")) / "annotations" / "instances_val2017.json"
        is_coco = isinstance(data.get("val"), str) and data["val"].endswith("val2017.txt") and nc == 80
        if is_coco and official.is_file() and not single_cls:
            anno_json = official
    class_map = COCO80_TO_91 if anno_json is not None else list(range(max(nc, 1000)))

    metrics = DetectionMetrics(nc, max_det=COCO_MAX_DETS)
    confusion_matrix = ConfusionMatrix(nc=nc)
    s = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
    dt = [0.0, 0.0, 0.0]
    loss = torch.zeros(3, device=device)
    jdict, gt_records, seen = [], [], 0
    end2end = getattr(model, "end2end", False)  # exported with NMS: already per-image (k, 6) detections
    _callback(callbacks, "on_val_start")
    pbar = tqdm(dataloader, desc=s, bar_format=TQDM_BAR_FORMAT, disable=not len(dataloader))
    for batch_i, (im, targets, paths, shapes) in enumerate(pbar):
        _callback(callbacks, "on_val_batch_start")
        t1 = time_sync()
        im = backends.to_input(im, device, half)
        targets = targets.to(device)
        nb, _, height, width = im.shape
        t2 = time_sync()
        dt[0] += t2 - t1

        out = model(im, augment=augment) if augment else model(im)
        if end2end:
            preds, train_out = list(out), None
        else:
            preds, train_out = (out[0], out[1]) if isinstance(out, (list, tuple)) else (out, None)
            if not single_cls and preds.shape[-1] - 5 != nc:
                raise ValueError(f"{weights or 'model'} outputs {preds.shape[-1] - 5} classes but the data has "
                                 f"nc={nc}")
        dt[1] += time_sync() - t2

        if compute_loss and train_out is not None:
            loss += compute_loss([x.float() for x in train_out], targets)[1]

        targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)
        t3 = time_sync()
        preds = backends.postprocess(preds, conf_thres, iou_thres, agnostic=single_cls, multi_label=True,
                                     max_det=max_det, end2end=end2end)
        dt[2] += time_sync() - t3

        if single_cls:
            for pred in preds:
                pred[:, 5] = 0
        # every box back to its original image once, in float64, for the metric and the json alike
        predns, labelns = to_original_pixels(preds, targets, im.shape[2:], shapes)
        coco_preds, coco_labels = coco_rows(predns, labelns)
        ids = []
        for si, (pred, predn) in enumerate(zip(preds, predns)):
            path, (h0, w0) = Path(paths[si]), shapes[si][0]
            seen += 1
            img_id = image_id(path, seen - 1, numeric_ids)
            ids.append(img_id)
            if save_json:
                pn = coco_preds[si]
                jdict += [{"image_id": img_id, "category_id": class_map[int(c)], "bbox": b.tolist(),
                           "score": float(sc)} for b, sc, c in zip(pn[:, :4], pn[:, 4], pn[:, 5])]
                gt_records.append({"id": img_id, "path": str(path), "w0": int(w0), "h0": int(h0),
                                   "labels": coco_labels[si]})
            if save_txt:
                save_one_txt(predn, save_conf, (h0, w0), save_dir / "labels" / f"{path.stem}.txt")
            _callback(callbacks, "on_val_image_end", pred, predn, path, names, im[si])
        metrics.update(coco_preds, coco_labels, ids)
        if plots:
            confusion_matrix.update([p[:, :6].numpy() for p in predns], [lb.numpy() for lb in labelns])

        if plots and batch_i < 3:
            from utils.plots import plot_images
            plot_images(im, targets, paths, save_dir / f"val_batch{batch_i}_labels.jpg", names)
            plot_images(im, output_to_target(preds), paths, save_dir / f"val_batch{batch_i}_pred.jpg", names)
        _callback(callbacks, "on_val_batch_end", batch_i, im, targets, paths, shapes, preds)

    # metrics
    r = metrics.compute(plot=plots, save_dir=save_dir, names=names)
    mp, mr, map50, map_ = r["mp"], r["mr"], r["map50"], r["map"]
    nt = r["nt"]
    pf = "%22s" + "%11i" * 2 + "%11.3g" * 4
    LOGGER.info(s)
    LOGGER.info(pf % ("all", seen, nt.sum(), mp, mr, map50, map_))
    if nt.sum() == 0:
        LOGGER.warning(f"WARNING ⚠️ no labels found in {task} set, can not compute metrics without labels")
    if (verbose or (nc < 50 and not training)) and nc > 1 and len(r["classes"]):
        for i, c in enumerate(r["classes"]):
            LOGGER.info(pf % (names.get(int(c), int(c)), seen, nt[c], r["p"][i], r["r"][i], r["ap50"][i],
                              r["ap"][i]))

    t = tuple(x / max(seen, 1) * 1e3 for x in dt)
    if not training:
        shape = (batch_size, 3, imgsz, imgsz)
        LOGGER.info(f"Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape {shape}" % t)

    if plots:
        confusion_matrix.plot(save_dir=save_dir, names=names)
        _callback(callbacks, "on_val_end", nt, r["tp"], r["fp"], r["p"], r["r"], r["f1"], r["ap"], r["ap50"],
                  r["classes"], confusion_matrix)

    if save_json and seen:
        w = Path(weights[0] if isinstance(weights, (list, tuple)) else weights).stem if weights else "model"
        pred_json = save_dir / f"{w}_predictions.json"
        LOGGER.info(f"\nEvaluating pycocotools mAP... saving {pred_json}...")
        pred_json.write_text(json.dumps(jdict))
        if anno_json is None:
            anno_json = save_dir / "annotations.json"
            anno_json.write_text(json.dumps(coco_gt_json(gt_records, names, class_map)))
        try:
            res = coco_evaluate(anno_json, pred_json, [g["id"] for g in gt_records])
        except Exception as e:  # a cross-check only: report and keep our numbers
            LOGGER.warning(f"WARNING ⚠️ pycocotools unable to run: {e}")
            res = None
        if res is not None:
            LOGGER.info(f"pycocotools: mAP50-95 {res[0]:.5f} mAP50 {res[1]:.5f} "
                        f"(ours {map_:.5f} / {map50:.5f})")
            map_, map50 = res

    if pt and hasattr(model, "float"):
        model.float()
    if not training:
        n_txt = len(list(save_dir.glob("labels/*.txt"))) if save_txt else 0
        saved = f"\n{n_txt} labels saved to {save_dir / 'labels'}" if save_txt else ""
        LOGGER.info(f"Results saved to {colorstr('bold', str(save_dir))}{saved}")
    maps = r["maps"]
    n_batches = max(len(dataloader), 1)
    return (mp, mr, map50, map_, *(loss.cpu() / n_batches).tolist()), maps, t


def parse_opt(argv=None):
    parser = argparse.ArgumentParser(description="Validate a detector: P, R, COCO-exact mAP")
    parser.add_argument("--data", type=str, default="data/shapes.yaml", help="dataset.yaml path")
    parser.add_argument("--weights", nargs="+", type=str, default="yolov5s.pt", help="model path(s)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    parser.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    parser.add_argument("--task", default="val", help="train, val, test, speed or study")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    parser.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    parser.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    parser.add_argument("--augment", action="store_true", help="augmented inference")
    parser.add_argument("--verbose", action="store_true", help="report mAP by class")
    parser.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    parser.add_argument("--save-hybrid", action="store_true", help="accepted for YOLOv5 compatibility; unused")
    parser.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    parser.add_argument("--save-json", action="store_true", help="save a COCO-JSON results file")
    parser.add_argument("--project", default=ROOT / "runs/val", help="save to project/name")
    parser.add_argument("--name", default="exp", help="save to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    parser.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA)")
    parser.add_argument("--dnn", action="store_true", help="accepted for YOLOv5 compatibility; unused")
    parser.add_argument("--trust-weights", action="store_true",
                        help="allow .torchscript weights, which run the code they carry (only files you trust)")
    return parser.parse_args(argv)


def main(opt) -> list:
    """Run the task; returns the run() results (one per weights file for speed/study)."""
    weights = opt.weights if isinstance(opt.weights, list) else [opt.weights]
    kw = {k: v for k, v in vars(opt).items() if k != "weights"}
    if opt.task in ("train", "val", "test"):
        if opt.conf_thres > 0.001:
            LOGGER.info(f"WARNING ⚠️ confidence threshold {opt.conf_thres} > 0.001 produces invalid results")
        return [run(weights=w, **kw) for w in weights]
    if opt.task == "speed":  # speed benchmarks at deployment thresholds, no plots or json
        kw.update(conf_thres=0.25, iou_thres=0.45, save_json=False)
        return [run(weights=w, plots=False, **kw) for w in weights]
    if opt.task == "study":  # mAP and speed against image size, one txt per weights file
        out = []
        for w in weights:
            f = Path(f"study_{Path(opt.data).stem}_{Path(w).stem}.txt")
            rows = []
            for size in range(256, 1536 + 128, 128):
                kw.update(imgsz=size)
                LOGGER.info(f"\nRunning {f} --imgsz {size}...")
                r, _, t = run(weights=w, plots=False, **kw)
                rows.append(list(r[:4]) + list(t))
            np.savetxt(f, rows, fmt="%10.4g")
            out.append(rows)
        return out
    raise ValueError(f"--task must be one of train, val, test, speed, study; got '{opt.task}'")


def cli(argv=None) -> int:
    """Command-line entry: bad input (missing files, splits, class-count mismatch) ends in one ERROR line."""
    try:
        main(parse_opt(argv))
    # CheckpointError, YamlError and BackendError are ValueErrors; ImportError: .onnx without onnxruntime
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        LOGGER.error(f"ERROR: {first_line(e)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
