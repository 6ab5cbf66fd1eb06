"""PyTorch helpers: devices, weight init, model summary/profiling, EMA, DDP utilities."""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from copy import deepcopy

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from utils.general import LOGGER

LOCAL_RANK = int(os.getenv("LOCAL_RANK", -1))
RANK = int(os.getenv("RANK", -1))
WORLD_SIZE = int(os.getenv("WORLD_SIZE", 1))


def select_device(device: str | torch.device = "", batch_size: int = 0, newline: bool = True) -> torch.device:
    """'' -> first CUDA device if any else CPU; 'cpu'; '0' or '0,1'. A missing CUDA device is a clear error."""
    if isinstance(device, torch.device):
        return device
    device = str(device).strip().lower().replace("cuda:", "").replace("none", "")
    if device == "cpu":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1" if not torch.cuda.is_available() else visible
        return torch.device("cpu")
    if device in ("mps",):
        return torch.device("mps")
    if device:
        if not torch.cuda.is_available():
            raise ValueError(f"Invalid CUDA '--device {device}' requested, use '--device cpu' or pass valid "
                             "CUDA device(s)")
        first = device.split(",")[0]
        return torch.device(f"cuda:{first}" if LOCAL_RANK == -1 else f"cuda:{LOCAL_RANK}")
    if torch.cuda.is_available():
        return torch.device("cuda:0" if LOCAL_RANK == -1 else f"cuda:{LOCAL_RANK}")
    return torch.device("cpu")


def time_sync() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.time()


def initialize_weights(model: nn.Module) -> None:
    """YOLOv5's BatchNorm settings (eps 1e-3, momentum 0.03) and in-place activations."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
            m.momentum = 0.03
        elif isinstance(m, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU)):
            m.inplace = True


def __getattr__(name: str):
    """YOLOv5's `from utils.torch_utils import fuse_conv_and_bn` (or EarlyStopping): the layer lives in models.layers
    (the helpers in utils.training), imported on first use so that loading utils imports neither."""
    if name == "fuse_conv_and_bn":
        from models.layers import fuse_conv_and_bn
        return fuse_conv_and_bn
    if name in ("EarlyStopping", "init_seeds"):  # YOLOv5's homes of these training helpers
        from utils import training
        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def matching_tensors(own: dict, src: dict, prefix: str = "", exclude: tuple[str, ...] = ()) -> dict:
    """The tensors of state_dict `src` that fit state_dict `own` by name and shape: own's key k takes src[prefix + k]
    when that exists with k's shape and k contains none of the `exclude` substrings; cast to own's dtype."""
    out = {}
    for k, v in own.items():
        s = src.get(prefix + k)
        if s is not None and tuple(s.shape) == tuple(v.shape) and not any(x in k for x in exclude):
            out[k] = s.to(v.dtype)
    return out


def load_matching(module: nn.Module, src: dict, prefix: str = "", exclude: tuple[str, ...] = ()) -> tuple[int, int]:
    """Copy into module every tensor of `src` that fits by name and shape (matching_tensors); the others keep their
    values. Returns (tensors copied, tensors of module)."""
    own = module.state_dict()
    picked = matching_tensors(own, src, prefix, exclude)
    module.load_state_dict(picked, strict=False)
    return len(picked), len(own)


def model_flops(model: nn.Module, img_size=640) -> float | None:
    """GFLOPs the YOLOv5 way: thop MACs x2 on a (1, ch, s, s) input, s = max(stride, 32), scaled to img_size."""
    try:
        import thop
    except ImportError:
        return None
    p = next(model.parameters())
    stride = max(int(model.stride.max()), 32) if hasattr(model, "stride") else 32
    ch = model.yaml.get("ch", 3) if hasattr(model, "yaml") else 3
    im = torch.empty((1, ch, stride, stride), device=p.device)
    was_training = model.training
    copy = deepcopy(model).eval()  # thop adds counters to the modules it visits
    with torch.no_grad():
        macs = thop.profile(copy, inputs=(im,), verbose=False)[0]
    model.train(was_training)
    img_size = img_size if isinstance(img_size, (list, tuple)) else [img_size, img_size]
    return macs / 1e9 * 2 * img_size[0] / stride * img_size[1] / stride


def model_info(model: nn.Module, verbose: bool = False, img_size=640) -> tuple:
    """Log '<name> summary: L layers, P parameters, G gradients, X GFLOPs'.

    Returns (layers, params, grads, gflops)."""
    n_p = sum(x.numel() for x in model.parameters())
    n_g = sum(x.numel() for x in model.parameters() if x.requires_grad)
    if verbose:
        LOGGER.info(f"{'layer':>5} {'name':>40} {'gradient':>9} {'parameters':>12} {'shape':>20} {'mu':>10} "
                    f"{'sigma':>10}")
        for i, (name, p) in enumerate(model.named_parameters()):
            LOGGER.info(f"{i:5g} {name:>40} {str(p.requires_grad):>9} {p.numel():12g} {str(list(p.shape)):>20} "
                        f"{p.mean():10.3g} {p.std() if p.numel() > 1 else 0:10.3g}")
    try:
        gflops = model_flops(model, img_size)
    except Exception:  # thop cannot trace some custom modules; the summary still prints
        gflops = None
    fs = f", {gflops:.1f} GFLOPs" if gflops is not None else ""
    name = getattr(model, "yaml_file", "") or "Model"
    name = str(name).replace(".yaml", "").replace("yolov5", "YOLOv5") if name else "Model"
    n_l = len(list(model.modules()))
    LOGGER.info(f"{name} summary: {n_l} layers, {n_p} parameters, {n_g} gradients{fs}")
    return n_l, n_p, n_g, gflops


def profile_layers(m: nn.Module, x, timings: list) -> None:
    """Per-layer time and GFLOPs, printed as the forward runs (models/yolo.py --profile)."""
    try:
        import thop
        flops = thop.profile(deepcopy(m), inputs=(x,), verbose=False)[0] / 1e9 * 2
    except Exception:
        flops = 0.0
    t = time_sync()
    for _ in range(10):
        m(x.copy() if isinstance(x, list) else x)
    timings.append((time_sync() - t) * 100)
    if not len(timings) - 1:
        LOGGER.info(f"{'time (ms)':>10s} {'GFLOPs':>10s} {'params':>10s}  module")
    LOGGER.info(f"{timings[-1]:10.2f} {flops:10.2f} {m.np:10.0f}  {m.type}")


def scale_img(img: torch.Tensor, ratio: float = 1.0, same_shape: bool = False, gs: int = 32) -> torch.Tensor:
    """Resize a (bs, 3, h, w) batch by ratio and pad to a multiple of gs with ImageNet-mean grey."""
    if ratio == 1.0:
        return img
    h, w = img.shape[2:]
    s = (int(h * ratio), int(w * ratio))
    img = F.interpolate(img, size=s, mode="bilinear", align_corners=False)
    if not same_shape:
        h, w = (math.ceil(x * ratio / gs) * gs for x in (h, w))
    return F.pad(img, [0, w - s[1], 0, h - s[0]], value=0.447)


def is_parallel(model: nn.Module) -> bool:
    return isinstance(model, (nn.parallel.DataParallel, nn.parallel.DistributedDataParallel))


def de_parallel(model: nn.Module) -> nn.Module:
    """The underlying model of a DP/DDP wrapper."""
    return model.module if is_parallel(model) else model


def copy_attr(a, b, include=(), exclude=()) -> None:
    for k, v in b.__dict__.items():
        if (len(include) and k not in include) or k.startswith("_") or k in exclude:
            continue
        setattr(a, k, v)


class ModelEMA:
    """Exponential moving average of weights with warm-up: decay * (1 - exp(-updates / tau)) (Polyak averaging)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        self.ema = deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self.decay = lambda x: decay * (1 - math.exp(-x / tau))
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay(self.updates)
        msd = de_parallel(model).state_dict()
        ema = [(v, msd[k].detach()) for k, v in self.ema.state_dict().items() if v.dtype.is_floating_point]
        if ema:  # one multi-tensor call per op instead of ~700 Python-level ops per step; the same arithmetic
            e, m = (list(t) for t in zip(*ema))
            torch._foreach_mul_(e, d)
            torch._foreach_add_(e, m, alpha=1 - d)

    def update_attr(self, model: nn.Module, include=(), exclude=("process_group", "reducer")) -> None:
        copy_attr(self.ema, model, include, exclude)


@contextmanager
def torch_distributed_zero_first(local_rank: int):
    """Let rank 0 do one-time work (dataset caching) while the others wait."""
    if local_rank not in (-1, 0):
        dist.barrier(device_ids=[local_rank] if torch.cuda.is_available() else None)
    yield
    if local_rank == 0:
        dist.barrier(device_ids=[0] if torch.cuda.is_available() else None)


def smart_inference_mode():
    return torch.inference_mode()
