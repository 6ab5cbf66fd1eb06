"""Convert Pascal VOC xml or COCO json detection annotations into the YOLO layout used by this project.

Output: OUT/images/<split>/*, OUT/labels/<split>/*.txt (rows `cls cx cy w h`, normalised) and OUT/<name>.yaml.

CLI:
  python -m utils.convert voc SRC OUT [--names a,b,c] [--val-fraction 0.1] [--mode copy|symlink|hardlink]
  python -m utils.convert coco ANNOTATIONS.json IMAGES_DIR OUT [--split val] [--mode ...]
VOC splits come from the folder of each xml (train/val/test/valid, e.g. SRC/images/train/x.xml); xml elsewhere
goes to 'train'. --val-fraction moves a deterministic share of train into val when there is no val split.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from utils.boxes import clip_boxes, xyxy2xywhn
from utils.data.dataloaders import IMG_FORMATS, exif_size
from utils.general import LOGGER

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _place(src: Path, dst: Path, mode: str) -> None:
    """Put an image into the output tree by copy, symlink or hardlink (replacing what is there)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if mode == "symlink":
        dst.symlink_to(src.resolve())
    elif mode == "hardlink":
        os.link(src, dst)
    elif mode == "copy":
        shutil.copy2(src, dst)
    else:
        raise ValueError(f"unknown mode '{mode}' (copy, symlink or hardlink)")


def _write_labels(path: Path, cls: np.ndarray, xyxy: np.ndarray, w: int, h: int) -> int:
    """Write normalised clipped boxes; boxes with no area after clipping are dropped. Returns rows written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    xyxy = clip_boxes(xyxy.reshape(-1, 4).astype(np.float64), (h, w))
    keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    xywhn, cls = xyxy2xywhn(xyxy[keep], w, h), np.asarray(cls).reshape(-1)[keep]
    path.write_text("".join(f"{int(c)} {a:.6f} {b:.6f} {d:.6f} {e:.6f}\n" for c, (a, b, d, e) in zip(cls, xywhn)))
    return int(keep.sum())


def _write_yaml(out: Path, names: list[str], splits: set[str], name: str) -> Path:
    d = {"path": str(out.resolve()), "train": "images/train"}
    if "val" in splits:
        d["val"] = "images/val"
    elif "test" in splits:
        d["val"] = "images/test"  # no val split: validate on test, as many VOC-style sets expect
    else:
        d["val"] = "images/train"
    if "test" in splits:
        d["test"] = "images/test"
    d["names"] = dict(enumerate(names))
    f = out / f"{name}.yaml"
    f.write_text(yaml.safe_dump(d, sort_keys=False))
    return f


def _find_image(xml_file: Path, filename: str | None) -> Path | None:
    """Image for a VOC xml: its <filename> beside the xml, else any image with the xml's stem."""
    if filename:
        p = xml_file.parent / Path(filename).name
        if p.is_file():
            return p
    for f in sorted(xml_file.parent.glob(xml_file.stem + ".*")):
        if f.suffix[1:].lower() in IMG_FORMATS:
            return f
    return None


def parse_voc(xml_file: Path) -> dict:
    """Objects of one VOC annotation: {'filename', 'size' (w, h) or None, 'objects': [(name, xyxy, difficult)]}."""
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{xml_file}: invalid xml ({e})") from None
    size = root.find("size")
    wh = None
    if size is not None:
        try:
            wh = int(float(size.findtext("width"))), int(float(size.findtext("height")))
        except (TypeError, ValueError):
            wh = None
    objects = []
    for i, obj in enumerate(root.iter("object"), 1):
        bb = obj.find("bndbox")
        name = (obj.findtext("name") or "").strip()
        if bb is None or not name:
            raise ValueError(f"{xml_file}: object {i} has no name or bndbox")
        try:
            xyxy = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise ValueError(f"{xml_file}: object {i} ('{name}') has a missing or non-numeric bndbox value") from None
        objects.append((name, xyxy, (obj.findtext("difficult") or "0").strip() == "1"))
    return {"filename": root.findtext("filename"), "size": wh, "objects": objects}


def convert_voc(src: str | Path, out: str | Path, names: list[str] | None = None, val_fraction: float = 0.0,
                mode: str = "copy", skip_difficult: bool = False, seed: int = 0, name: str | None = None) -> Path:
    """Convert every *.xml under src; returns the written dataset yaml. Classes sort alphabetically unless given."""
    src, out = Path(src), Path(out)
    xmls = sorted(src.rglob("*.xml"))
    if not xmls:
        raise FileNotFoundError(f"no VOC .xml files under {src}")
    items = []
    for x in xmls:
        ann = parse_voc(x)
        im = _find_image(x, ann["filename"])
        if im is None:
            LOGGER.warning(f"WARNING ⚠️ {x}: image '{ann['filename']}' not found, skipped")
            continue
        split = next((SPLIT_NAMES[p.lower()] for p in reversed(x.relative_to(src).parts[:-1])
                      if p.lower() in SPLIT_NAMES), "train")
        items.append((x, im, ann, split))
    found = sorted({o[0] for _, _, a, _ in items for o in a["objects"]})
    if names is None:
        names = found
    unknown = set(found) - set(names)
    if unknown:
        raise ValueError(f"classes {sorted(unknown)} in {src} are not in --names {names}")
    index = {n: i for i, n in enumerate(names)}
    if val_fraction and not any(s == "val" for *_, s in items):
        train = [i for i, it in enumerate(items) if it[3] == "train"]
        chosen = np.random.default_rng(seed).permutation(train)[: int(round(len(train) * val_fraction))]
        for i in chosen:
            items[i] = (*items[i][:3], "val")
    counts = defaultdict(lambda: [0, 0])
    for x, im, ann, split in items:
        with Image.open(im) as pil:
            w, h = exif_size(pil)  # what the dataloader will see
        if ann["size"] and ann["size"] != (w, h) and ann["size"][0] > 0:
            LOGGER.warning(f"WARNING ⚠️ {x}: xml size {ann['size']} differs from image {im.name} size {(w, h)}; "
                           f"using the image size")
        objs = [o for o in ann["objects"] if not (skip_difficult and o[2])]
        cls = np.array([index[o[0]] for o in objs], dtype=int)
        xyxy = np.array([o[1] for o in objs], dtype=np.float64).reshape(-1, 4)
        stem = im.stem
        _place(im, out / "images" / split / im.name, mode)
        counts[split][0] += 1
        counts[split][1] += _write_labels(out / "labels" / split / f"{stem}.txt", cls, xyxy, w, h)
    f = _write_yaml(out, names, set(counts), name or out.name)
    LOGGER.info(f"VOC -> YOLO: {', '.join(f'{s} {n} images {b} boxes' for s, (n, b) in sorted(counts.items()))}; "
                f"{len(names)} classes {names}; yaml {f}")
    return f


def convert_coco(json_file: str | Path, images_dir: str | Path, out: str | Path, split: str = "train",
                 mode: str = "copy", skip_crowd: bool = True, name: str | None = None) -> Path:
    """Convert a COCO instances json; category ids map to 0..nc-1 in id order. Returns the dataset yaml."""
    json_file, images_dir, out = Path(json_file), Path(images_dir), Path(out)
    try:
        d = json.loads(json_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{json_file}: cannot read COCO json ({e})") from None
    for k in ("images", "annotations", "categories"):
        if k not in d:
            raise ValueError(f"{json_file}: missing '{k}' (not a COCO detection json)")
    cats = sorted(d["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    names = [c["name"] for c in cats]
    anns = defaultdict(list)
    for a in d["annotations"]:
        if skip_crowd and a.get("iscrowd", 0):
            continue
        if a["category_id"] not in index:
            raise ValueError(f"{json_file}: annotation {a.get('id')} has unknown category_id {a['category_id']}")
        anns[a["image_id"]].append(a)
    n_img = n_box = 0
    for img in d["images"]:
        im = images_dir / img["file_name"]
        if not im.is_file():
            LOGGER.warning(f"WARNING ⚠️ {json_file}: image {im} not found, skipped")
            continue
        w, h = img.get("width"), img.get("height")
        if not w or not h:
            with Image.open(im) as pil:
                w, h = exif_size(pil)
        a = anns.get(img["id"], [])
        bb = np.array([x["bbox"] for x in a], dtype=np.float64).reshape(-1, 4)
        xyxy = np.concatenate((bb[:, :2], bb[:, :2] + bb[:, 2:]), 1)
        cls = np.array([index[x["category_id"]] for x in a], dtype=int)
        rel = Path(img["file_name"]).name
        _place(im, out / "images" / split / rel, mode)
        n_box += _write_labels(out / "labels" / split / f"{Path(rel).stem}.txt", cls, xyxy, w, h)
        n_img += 1
    splits = {p.name for p in (out / "images").iterdir() if p.is_dir()} if (out / "images").is_dir() else {split}
    f = _write_yaml(out, names, splits, name or out.name)
    LOGGER.info(f"COCO -> YOLO: {split} {n_img} images {n_box} boxes; {len(names)} classes; yaml {f}")
    return f


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description="Convert VOC xml or COCO json annotations to the YOLO layout.")
    sub = p.add_subparsers(dest="fmt", required=True)
    v = sub.add_parser("voc", help="Pascal VOC xml files beside their images")
    v.add_argument("src")
    v.add_argument("out")
    v.add_argument("--names", default=None, help="comma-separated class names in id order (default: sorted)")
    v.add_argument("--val-fraction", type=float, default=0.0)
    v.add_argument("--skip-difficult", action="store_true")
    c = sub.add_parser("coco", help="COCO instances json")
    c.add_argument("json")
    c.add_argument("images")
    c.add_argument("out")
    c.add_argument("--split", default="train")
    c.add_argument("--keep-crowd", action="store_true")
    for s in (v, c):
        s.add_argument("--mode", default="copy", choices=("copy", "symlink", "hardlink"))
        s.add_argument("--name", default=None, help="yaml file name (default: the output folder's name)")
    a = p.parse_args(argv)
    if a.fmt == "voc":
        names = [n.strip() for n in a.names.split(",")] if a.names else None
        f = convert_voc(a.src, a.out, names, a.val_fraction, a.mode, a.skip_difficult, name=a.name)
    else:
        f = convert_coco(a.json, a.images, a.out, a.split, a.mode, not a.keep_crowd, name=a.name)
    print(f)
    return f


def cli(argv: list[str] | None = None) -> None:
    """`python -m utils.convert ...` (or utils.data.convert): main() with bad input reported as one line."""
    try:
        main(argv)
    except (ValueError, OSError) as e:  # bad input folders/files: one line, not a traceback
        LOGGER.error(f"ERROR ❌ {e}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    cli()
