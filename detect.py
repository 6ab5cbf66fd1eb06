"""Run detection on images, videos, folders, globs, .txt lists, webcams and streams; save annotated results.

Usage:
    python detect.py --weights best.pt --source img.jpg            # image
                                                 path/             # folder
                                                 'path/*.jpg'      # glob
                                                 list.txt          # one path per line
                                                 vid.mp4           # video (--vid-stride N: every Nth frame)
                                                 0                 # webcam
                                                 rtsp://host/live  # rtsp, rtmp, http stream
    python detect.py --weights best.onnx ...                       # exported .onnx too
    python detect.py --weights best_ncnn_model ...                 # best_openvino_model, best.mnn too
    python detect.py --weights best.torchscript --trust-weights ...  # TorchScript runs its own code: opt in

Outputs go to runs/detect/exp{,2,...}: annotated images, annotated .mp4 videos, labels/<stem>[_<frame>].txt
(--save-txt, rows `cls x y w h [conf]` normalised) and crops/<class>/<stem>.jpg (--save-crop).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.general import LOGGER, TQDM_BAR_FORMAT, clean_str, colorstr, first_line, increment_path, safe_path_component
from utils.inference.predictor import Detections, load, save_crop
from utils.inference.sources import Frame, LoadFiles, open_source


class VideoSink:
    """One mp4 writer per output file, opened at the first frame with that frame's size."""

    def __init__(self):
        self.writers: dict[str, cv2.VideoWriter] = {}

    def write(self, path: Path, im: np.ndarray, fps: float) -> None:
        key = str(path)
        if key not in self.writers:
            h, w = im.shape[:2]
            writer = cv2.VideoWriter(key, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not writer.isOpened():
                raise OSError(f"cannot write video '{key}' (OpenCV has no mp4v encoder?)")
            self.writers[key] = writer
        self.writers[key].write(im)

    def close(self) -> None:
        for w in self.writers.values():
            w.release()
        self.writers.clear()


def can_show() -> bool:
    """Whether cv2.imshow works here (not with opencv-python-headless or without a display)."""
    try:
        cv2.imshow("test", np.zeros((8, 8, 3), np.uint8))
        cv2.waitKey(1)
        cv2.destroyAllWindows()
        return True
    except Exception:
        return False


def _output_name(frame: Frame) -> str:
    """File stem of a frame's outputs: the file's stem, or a cleaned stream name."""
    if frame.mode == "stream":
        name = clean_str(frame.path.rstrip("/").split("/")[-1] or frame.path)
        return safe_path_component(Path(name).stem, f"stream{frame.index}")
    return Path(frame.path).stem


def _handle(frame: Frame, det: Detections, save_dir: Path, opts: dict, sink: VideoSink) -> np.ndarray | None:
    """Write the outputs of one frame; returns the annotated image when it was drawn."""
    stem = _output_name(frame)
    suffix = "" if frame.mode == "image" else f"_{frame.frame}"  # one label file / crop name per video frame
    if opts["save_txt"] and len(det):
        txt = save_dir / "labels" / f"{stem}{suffix}.txt"
        with open(txt, "a") as f:
            f.writelines(det.label_lines(opts["save_conf"]))
    if opts["save_crop"]:
        for box, c in zip(det.xyxy, det.cls):  # class names come from the weights file: one safe folder each
            folder = safe_path_component(det.names.get(int(c), ""), fallback=str(int(c)))
            save_crop(box, frame.im0, save_dir / "crops" / folder / f"{stem}{suffix}.jpg")
    annotated = None
    if opts["save_img"] or opts["view_img"]:
        annotated = det.render(opts["line_thickness"], opts["hide_labels"], opts["hide_conf"], im=frame.im0)
    if opts["save_img"]:
        if frame.mode == "image":
            cv2.imwrite(str(save_dir / Path(frame.path).name), annotated)
        else:
            fps = frame.fps / (opts["vid_stride"] if frame.mode == "video" else 1)  # keep the clip's duration
            sink.write(save_dir / f"{stem}.mp4", annotated, fps)
    return annotated


def run(weights=ROOT / "yolov5s.pt", source=ROOT / "data/images", data=None, imgsz=(640, 640), conf_thres=0.25,
        iou_thres=0.45, max_det=1000, device="", view_img=False, save_txt=False, save_conf=False, save_crop=False,
        nosave=False, classes=None, agnostic_nms=False, augment=False, visualize=False, project=ROOT / "runs/detect",
        name="exp", exist_ok=False, line_thickness=3, hide_labels=False, hide_conf=False, half=False,
        vid_stride=1, trust_weights=False) -> Path:
    """Detect on a source and save results; returns the run folder. Bad input raises a one-line error."""
    loader = open_source(source, vid_stride)  # fails fast, before any run folder is made
    try:
        predictor = load(weights, device=device, imgsz=imgsz, conf_thres=conf_thres, iou_thres=iou_thres,
                         classes=classes, agnostic=agnostic_nms, max_det=max_det, half=half, data=data,
                         augment=augment, trusted=trust_weights)
    except BaseException:
        if hasattr(loader, "close"):  # stop stream reader threads
            loader.close()
        raise
    if visualize:
        LOGGER.warning("WARNING ⚠️ --visualize (feature-map plots) is not supported; ignoring it")
    if view_img and not can_show():
        LOGGER.warning("WARNING ⚠️ --view-img needs a display and an OpenCV build with GUI support; ignoring it")
        view_img = False
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    opts = dict(save_txt=save_txt, save_conf=save_conf, save_crop=save_crop, save_img=not nosave,
                view_img=view_img, line_thickness=line_thickness, hide_labels=hide_labels, hide_conf=hide_conf,
                vid_stride=vid_stride)

    files = isinstance(loader, LoadFiles)
    total = loader.total_frames if files else None
    show_bar = files and (loader.nf > 1 or loader.has_video)
    sink, frames_done = VideoSink(), 0
    try:
        with logging_redirect_tqdm(loggers=[LOGGER]), \
                tqdm(total=total, disable=not show_bar, bar_format=TQDM_BAR_FORMAT, desc="detect", unit="img") as bar:
            for frames in loader:
                dets = predictor.predict([f.im0 for f in frames], [f.path for f in frames])
                h, w = predictor.last_input_shape[2:]
                for frame, det in zip(frames, dets):
                    annotated = _handle(frame, det, save_dir, opts, sink)
                    LOGGER.info(f"{frame.describe()}{h}x{w} {det.summary()}{predictor.last_inference_ms:.1f}ms")
                    if view_img and annotated is not None:
                        cv2.imshow(str(frame.path), annotated)
                        if cv2.waitKey(1) & 0xFF == ord("q"):
                            raise KeyboardInterrupt
                frames_done += len(frames)
                bar.update(len(frames))
            if bar.total and bar.n < bar.total:  # skipped files or short videos: finish the bar where we are
                bar.total = bar.n
                bar.refresh()
    except KeyboardInterrupt:
        LOGGER.info("stopped by the user")
    finally:
        sink.close()
        if hasattr(loader, "close"):
            loader.close()
    if frames_done == 0:
        raise ValueError(f"no readable images or video frames in source '{source}'")

    t = predictor.stats
    LOGGER.info(f"Speed: {t[0]:.1f}ms pre-process, {t[1]:.1f}ms inference, {t[2]:.1f}ms NMS per image at shape "
                f"{(1, 3, *predictor.imgsz)}")
    if save_txt or not nosave or save_crop:
        n_labels = len(list((save_dir / "labels").glob("*.txt"))) if save_txt else 0
        s = f"\n{n_labels} labels saved to {save_dir / 'labels'}" if save_txt else ""
        LOGGER.info(f"Results saved to {colorstr('bold', str(save_dir))}{s}")
    return save_dir


def parse_opt(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="YOLOv5-compatible detection on images, videos and streams")
    p.add_argument("--weights", nargs="+", type=str, default=str(ROOT / "yolov5s.pt"),
                   help="model .pt, .onnx, .torchscript, .mnn, _openvino_model/ or _ncnn_model/")
    p.add_argument("--source", type=str, default=str(ROOT / "data/images"),
                   help="file/dir/glob/.txt list/video/webcam index/URL")
    p.add_argument("--data", type=str, default=None, help="(optional) dataset.yaml for class names")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="inference size h,w")
    p.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--view-img", action="store_true", help="show results")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-crop", action="store_true", help="save cropped prediction boxes")
    p.add_argument("--nosave", action="store_true", help="do not save images/videos")
    p.add_argument("--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--augment", action="store_true", help="augmented inference")
    p.add_argument("--visualize", action="store_true", help="visualize features (not supported)")
    p.add_argument("--project", default=str(ROOT / "runs/detect"), help="save results to project/name")
    p.add_argument("--name", default="exp", help="save results to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--line-thickness", default=3, type=int, help="bounding box thickness (pixels)")
    p.add_argument("--hide-labels", default=False, action="store_true", help="hide labels")
    p.add_argument("--hide-conf", default=False, action="store_true", help="hide confidences")
    p.add_argument("--half", action="store_true", help="use FP16 half-precision inference")
    p.add_argument("--vid-stride", type=int, default=1, help="video frame-rate stride")
    p.add_argument("--trust-weights", action="store_true",
                   help="allow .torchscript weights, which run the code they carry (only files you trust)")
    opt = p.parse_args(argv)
    opt.imgsz *= 2 if len(opt.imgsz) == 1 else 1
    if isinstance(opt.weights, list) and len(opt.weights) == 1:
        opt.weights = opt.weights[0]
    return opt


def main(opt: argparse.Namespace) -> int:
    LOGGER.info(colorstr("detect: ") + ", ".join(f"{k}={v}" for k, v in vars(opt).items()))
    try:
        run(**vars(opt))
    except (FileNotFoundError, ValueError, OSError, ImportError) as e:  # bad input (or no onnxruntime): one line
        LOGGER.error(f"ERROR: {first_line(e)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_opt()))
