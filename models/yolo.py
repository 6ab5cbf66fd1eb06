"""YOLOv5-compatible model builder: a yaml (or dict) in, a DetectionModel out.

Usage: python models/yolo.py --cfg yolov5n.yaml [--profile] [--line-profile]
"""
from __future__ import annotations

import argparse
import copy
import inspect
import sys
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import models.common  # registers every block family
from models.blocks.heads import Detect, Segment  # Segment: YOLOv5 scripts import it from models.yolo
from models.layers import default_activation
from models.limits import MAX_REPEATS, check_header, preflight
from models.registry import Row, YamlError, parse_activation, policy_of, resolve_arg, resolve_module
from utils.general import LOGGER, check_yaml, first_line, load_yaml
from utils.torch_utils import initialize_weights, model_info, profile_layers, scale_img
from utils.training.autoanchor import check_anchor_order

PROBE_SIZE = 256  # strides are measured on a zeros(1, ch, 256, 256) forward, as YOLOv5 does


def load_model_yaml(cfg) -> tuple[dict, str]:
    """A yaml path (bare names found under models/) or a dict -> (dict, display name)."""
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg), cfg.get("yaml_file", "model")
    path = check_yaml(cfg)
    d = load_yaml(path, "a mapping with nc, backbone and head", error=YamlError)
    d["yaml_file"] = path.name
    return d, path.name


def _check_from(f, i: int):
    if i == 0:
        if f != -1:
            raise YamlError("the first row must read the input image ('from' -1)")
        return
    for x in ([f] if isinstance(f, int) else f):
        if not isinstance(x, int) or isinstance(x, bool):
            raise YamlError(f"'from' must be an int or a list of ints, got {x!r}")
        if x >= i or (x < 0 and i + x < 0):
            where = "points forward (or at itself)" if x >= i else "points before the first layer"
            raise YamlError(f"'from' index {x} {where}; row {i} can only use layers 0..{i - 1} or -1..-{i}")


def _check_signature(cls, args: list):
    try:
        inspect.signature(cls).bind(*args)
    except TypeError as e:
        raise YamlError(f"{cls.__name__}{inspect.signature(cls)} cannot take args {args}: {e}") from None


def parse_model(d: dict, ch: list[int], probe: torch.Tensor | None = None, verbose: bool = True):
    """Build nn.Sequential layers from a model dict. Each row is built and run on a probe tensor at once, so a
    channel or shape mismatch is reported against the row that caused it. Returns (model, save list, probe outputs)."""
    for key in ("backbone", "head"):
        if key not in d or not isinstance(d[key], list):
            raise YamlError(f"model yaml is missing the '{key}' list")
    if "nc" not in d:
        raise YamlError("model yaml is missing 'nc' (number of classes)")
    yaml_name = d.get("yaml_file", "model")
    try:
        check_header(d, ch[0] if isinstance(ch, (list, tuple)) and len(ch) == 1 else ch)
        act = parse_activation(d.get("activation"))
    except YamlError as e:
        raise YamlError(f"{yaml_name}: {e}") from None
    nc, gd, gw = d["nc"], d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0)
    anchors = d.get("anchors")
    na = (len(anchors[0]) // 2 if isinstance(anchors, list) else anchors) if anchors is not None else 3
    no = na * (nc + 5)
    names = {"nc": nc, "anchors": anchors, "None": None, "True": True, "False": False}
    n_params = 0
    if verbose:
        LOGGER.info(f"\n{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<40}{'arguments':<30}")
    layers, save, ch, outputs = [], [], list(ch), []
    x = probe
    rows = d["backbone"] + d["head"]
    with default_activation(act):
        for i, row in enumerate(rows):
            text = str(row)
            label = f"{yaml_name} row {i} {text if len(text) <= 120 else text[:120] + '...'}"
            inp = None
            try:
                if not isinstance(row, (list, tuple)) or len(row) != 4:
                    raise YamlError("each row must be [from, number, module, args]")
                f, n, m_name, args = row
                _check_from(f, i)
                cls = resolve_module(str(m_name))
                if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_REPEATS:
                    raise YamlError(f"'number' must be an int in 1..{MAX_REPEATS}, got {str(n)[:40]!r}")
                args = [resolve_arg(a, names) for a in (args if isinstance(args, list) else [args])]
                n_ = max(round(n * gd), 1) if n > 1 else n
                if n_ > MAX_REPEATS:
                    raise YamlError(f"{n} repeats x depth_multiple {gd:g} = {n_} is more than {MAX_REPEATS}")
                ctx = Row(i, f, n_, args, ch, gw, no, extra={"cls": cls})  # for row 0, ch == [image channels]
                ctor_args, c2, repeats = policy_of(cls)(ctx)
                _check_signature(cls, ctor_args)

                def make(cls=cls, ctor_args=ctor_args, repeats=repeats):
                    return nn.Sequential(*(cls(*ctor_args) for _ in range(repeats))) if repeats > 1 \
                        else cls(*ctor_args)
                if x is not None:
                    inp = x if i == 0 else (outputs[f] if isinstance(f, int) else [outputs[j] for j in f])
                n_params += preflight(make, n_params, None if issubclass(cls, Detect) else inp)
                m = make()
                if x is not None:
                    if isinstance(m, Detect):
                        m.stride = torch.tensor([PROBE_SIZE / t.shape[-2] for t in inp])
                        out = None
                    else:
                        m.eval()
                        with torch.no_grad():
                            out = m(inp)
                    outputs.append(out)
            except YamlError as e:
                raise YamlError(f"{label}: {e}") from None
            except (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
                shapes = [tuple(t.shape) for t in (inp if isinstance(inp, list) else [inp])] if inp is not None else []
                raise YamlError(f"{label}: {type(e).__name__}: {first_line(e)} (inputs {shapes}; check this row's "
                                f"channels and args)") from None
            m.i, m.f, m.type = i, f, f"{cls.__module__}.{cls.__name__}".replace("__main__.", "")
            m.np = sum(p.numel() for p in m.parameters())
            if verbose:
                LOGGER.info(f"{i:>3}{str(f):>18}{n_:>3}{m.np:10.0f}  {m.type:<40}{str(ctor_args):<30}")
            save.extend(j % i for j in ([f] if isinstance(f, int) else f) if j != -1)
            layers.append(m)
            if i == 0:
                ch = []
            ch.append(c2 if c2 is not None else (m.out_channels if hasattr(m, "out_channels") else None))
    return nn.Sequential(*layers), sorted(set(save))


class BaseModel(nn.Module):
    """Layer-by-layer forward through model.model, keeping only the outputs a later layer reads."""

    def forward(self, x, profile: bool = False, augment: bool = False, visualize: bool = False):
        if augment:
            return self._forward_augment(x)
        return self._forward_once(x, profile)

    def _forward_once(self, x, profile: bool = False):
        y, timings = [], []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            if profile:
                profile_layers(m, x, timings)
            x = m(x)
            y.append(x if m.i in self.save else None)
        if profile:
            LOGGER.info(f"{sum(timings):10.2f} {'-':>10s} {'-':>10s}  Total")
        return x

    def fuse(self, verbose: bool = True):
        """Fold BatchNorm into convs and re-parameterise multi-branch blocks (RepVGG) for inference."""
        LOGGER.info("Fusing layers... ") if verbose else None
        for m in list(self.model.modules()):
            if m is not self and hasattr(m, "reparameterize"):
                m.reparameterize()
        self.info(verbose=False) if verbose else None
        return self

    def info(self, verbose: bool = False, img_size: int = 640):
        return model_info(self, verbose, img_size)

    def _apply(self, fn):
        # keep the head's non-buffer tensors (stride, cached grids) on the same device/dtype as the weights
        self = super()._apply(fn)
        m = self.model[-1]
        if isinstance(m, Detect):
            m.stride = fn(m.stride)
            m.grid = [fn(g) for g in m.grid]
            m.anchor_grid = [fn(g) for g in m.anchor_grid]
        return self


class DetectionModel(BaseModel):
    """YOLOv5 detection model built from a yaml path or dict."""

    def __init__(self, cfg="yolov5s.yaml", ch: int = 3, nc: int | None = None, anchors=None, verbose: bool = True):
        super().__init__()
        self.yaml, self.yaml_file = load_model_yaml(cfg)
        ch = self.yaml["ch"] = self.yaml.get("ch", ch)
        if nc and nc != self.yaml.get("nc"):
            LOGGER.info(f"Overriding model.yaml nc={self.yaml.get('nc')} with nc={nc}")
            self.yaml["nc"] = nc
        if anchors:
            LOGGER.info(f"Overriding model.yaml anchors with anchors={anchors}")
            self.yaml["anchors"] = round(anchors) if isinstance(anchors, float) else anchors
        try:
            check_header(self.yaml, ch)  # before the probe below is allocated from ch
        except YamlError as e:
            raise YamlError(f"{self.yaml_file}: {e}") from None
        probe = torch.zeros(1, ch, PROBE_SIZE, PROBE_SIZE)
        self.model, self.save = parse_model(copy.deepcopy(self.yaml), ch=[ch], probe=probe, verbose=verbose)
        self.model.train()  # the build probe ran each layer in eval mode
        self.names = {i: f"class{i}" for i in range(self.yaml["nc"])}
        self.inplace = self.yaml.get("inplace", True)
        m = self.model[-1]
        if not isinstance(m, Detect):
            raise YamlError(f"{self.yaml_file}: the last row must be a Detect or Segment head, got {type(m).__name__}")
        self.stride = m.stride.clone()
        check_anchor_order(m)
        m.anchors /= m.stride.view(-1, 1, 1)
        m.initialize_biases()
        initialize_weights(self)
        if verbose:
            self.info()
            LOGGER.info("")

    def _forward_augment(self, x):
        """Test-time augmentation: scales 1, 0.83, 0.67 with a left-right flip at 0.83, merged before NMS."""
        img_size = x.shape[-2:]
        outs = []
        for s, flip in zip((1, 0.83, 0.67), (None, 3, None)):
            xi = scale_img(x.flip(flip) if flip else x, s, gs=int(self.stride.max()))
            yi = self._forward_once(xi)[0]
            yi[..., :4] /= s
            if flip == 3:
                yi[..., 0] = img_size[1] - yi[..., 0]
            outs.append(yi)
        outs = self._clip_augmented(outs)
        return torch.cat(outs, 1), None

    def _clip_augmented(self, y):
        # drop large objects from the upscaled pass and small ones from the downscaled pass
        nl = self.model[-1].nl
        g = sum(4 ** x for x in range(nl))
        i = (y[0].shape[1] // g) * sum(4 ** x for x in range(1))
        y[0] = y[0][:, :-i]
        i = (y[-1].shape[1] // g) * sum(4 ** (nl - 1 - x) for x in range(1))
        y[-1] = y[-1][:, i:]
        return y


Model = DetectionModel
SegmentationModel = DetectionModel


def parse_opt(argv=None):
    parser = argparse.ArgumentParser(description="Build a model yaml and print its summary")
    parser.add_argument("--cfg", type=str, default="yolov5s.yaml", help="model.yaml")
    parser.add_argument("--batch-size", type=int, default=1, help="total batch size for profiling")
    parser.add_argument("--imgsz", type=int, default=640, help="image size for profiling")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu")
    parser.add_argument("--profile", action="store_true", help="profile model speed layer by layer")
    parser.add_argument("--line-profile", action="store_true", help="alias of --profile")
    parser.add_argument("--test", action="store_true", help="build every models/*.yaml")
    return parser.parse_args(argv)


def main(opt) -> int:
    from utils.torch_utils import select_device
    device = select_device(opt.device)
    if opt.test:
        for cfg in sorted((ROOT / "models").glob("*.yaml")):
            try:
                Model(cfg, verbose=False).info()
            except Exception as e:  # report every broken yaml, not just the first
                LOGGER.error(f"{cfg.name}: {e}")
        return 0
    try:
        model = Model(opt.cfg).to(device)
    except (YamlError, FileNotFoundError) as e:
        LOGGER.error(f"ERROR: {first_line(e)}")
        return 1
    if opt.profile or opt.line_profile:
        im = torch.rand(opt.batch_size, 3, opt.imgsz, opt.imgsz).to(device)
        model.eval()
        with torch.no_grad():
            model(im, profile=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_opt()))
