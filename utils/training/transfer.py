"""ImageNet weights into a yaml-built backbone, paired by structure rather than by name.

A torchvision or timm classifier and the yaml backbone built to match it hold the same layers in the same order
under different names (``features.3.conv.0.0.weight`` or ``blocks.1.0.conv_dw.weight`` against
``model.3.expand.conv.weight``). Both state_dicts are cut into *units* (one block each: the yaml's rows with
repeated rows unrolled; the source's numbered blocks, found from its module tree) and each unit into *groups*
(a conv with the BatchNorm that follows it, a standalone norm, an SE's biased conv...). A unit fits when its
groups match the source unit's one to one by tensor shapes; units are paired in forward order from the stems
(see align). A unit that does not fit keeps its initial values: nothing is ever half-loaded.

``num_batches_tracked`` is bookkeeping, not a shape: it never decides whether a unit fits, and it is copied when
the file has it (old files may not).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from models.blocks.torchvision_backbone import TorchVisionBackbone, read_weights_file
from utils.general import LOGGER

NBT = "num_batches_tracked"
# backbone rows from the first of these on are the detector's own (SPPF, attention), not part of an ImageNet model
TAIL_TYPES = frozenset({"SPP", "SPPF", "SPPCSPC", "CBAM", "SE", "Index", "Concat"})
SHOW = 3  # unmatched keys named in the report


@dataclass
class Unit:
    """One block's tensors: ``groups`` are lists of leaf modules, each leaf a list of full state_dict keys."""
    name: str
    groups: list[list[list[str]]]
    sig: tuple = ()  # the groups' shape signatures as a sorted tuple (a multiset): equal sig == the unit fits

    @property
    def keys(self) -> list[str]:
        return [k for g in self.groups for leaf in g for k in leaf]


@dataclass
class TransferReport:
    """How many backbone tensors received ImageNet values, which units kept theirs and what the file had spare."""
    matched: int = 0
    total: int = 0
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (destination unit, source unit)
    skipped: list[str] = field(default_factory=list)  # destination units left as they were
    unmatched_dst: list[str] = field(default_factory=list)  # 'key (shape)' of the first tensors left as they were
    unmatched_src: list[str] = field(default_factory=list)  # 'key (shape)' of the first file tensors not used

    def __str__(self) -> str:
        s = f"transferred {self.matched}/{self.total} tensors"
        if self.skipped:
            s += f"; {len(self.skipped)} units kept initial values, first: {', '.join(self.unmatched_dst)}"
        if self.unmatched_src:
            s += f"; unused from the file, first: {', '.join(self.unmatched_src)}"
        return s


# ---------------------------------------------------------------- cutting a state_dict into units and groups

class _Node:
    """A module path of the state_dict: its own tensor keys and its children that hold tensors, in order."""
    __slots__ = ("keys", "children")

    def __init__(self):
        self.keys: list[str] = []
        self.children: dict[str, _Node] = {}

    def all_keys(self) -> list[str]:
        return self.keys + [k for c in self.children.values() for k in c.all_keys()]


def _tree(keys: list[str], prefix: str = "") -> _Node:
    root = _Node()
    for k in keys:
        node = root
        for part in k[len(prefix):].split(".")[:-1]:
            node = node.children.setdefault(part, _Node())
        node.keys.append(k)
    return root


def _is_container(node: _Node) -> bool:
    """A run of numbered blocks (nn.Sequential of blocks), not one block: all children numbered, some not leaves."""
    kids = node.children
    return bool(kids) and all(n.isdigit() for n in kids) and any(c.children for c in kids.values())


def _unit_keys(node: _Node, path: str, root: bool) -> list[tuple[str, list[str]]]:
    """(name, keys) of node's blocks: the node itself, or at the root and in block runs its children's, with
    consecutive leaf modules (timm's ``conv_stem`` + ``bn1``) merged into one unit."""
    if not root and not _is_container(node):
        return [(path, node.all_keys())]
    out, run, run_name = [], list(node.keys), path
    for name, child in node.children.items():
        p = f"{path}.{name}" if path else name
        if not child.children:
            run_name = run_name if run else p
            run += child.keys
            continue
        if run:
            out.append((run_name, run))
            run = []
        out += _unit_keys(child, p, root=False)
    if run:
        out.append((run_name, run))
    return out


def _leaf_sig(sd: dict, leaf: list[str]) -> tuple:
    return tuple(sorted((k.rsplit(".", 1)[-1], tuple(sd[k].shape)) for k in leaf if not k.endswith(NBT)))


def _make_unit(name: str, keys: list[str], sd: dict) -> Unit:
    """Group the unit's leaf modules: a BatchNorm directly after a conv belongs to it, so equal-shaped norms
    (RepVGG's identity BN against its branches' BNs) are told apart by the conv they follow."""
    leaves: dict[str, list[str]] = {}
    for k in keys:
        leaves.setdefault(k.rpartition(".")[0], []).append(k)
    groups: list[list[list[str]]] = []
    prev_conv = False
    for leaf in leaves.values():
        names = {k.rsplit(".", 1)[-1] for k in leaf}
        is_norm = "running_mean" in names
        w = next((k for k in leaf if k.endswith(".weight")), None)
        if is_norm and prev_conv:
            groups[-1].append(leaf)
        else:
            groups.append([leaf])
        prev_conv = not is_norm and w is not None and sd[w].ndim == 4
    sig = tuple(sorted(tuple(_leaf_sig(sd, leaf) for leaf in g) for g in groups))
    return Unit(name, groups, sig)


def source_units(sd: dict) -> list[Unit]:
    """Blocks of a torchvision/timm (or any) state_dict, in its order; a wrapper's single prefix (DataParallel's
    ``module.``) is looked through."""
    node, path = _tree(list(sd)), ""
    while len(node.children) == 1 and not node.keys:
        name, node = next(iter(node.children.items()))
        path = f"{path}.{name}" if path else name
    return [_make_unit(n, ks, sd) for n, ks in _unit_keys(node, path, root=True)]


def backbone_layers(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """(index, layer) of the yaml backbone rows an ImageNet model can fill: the backbone before its first
    SPP/SPPF/attention row."""
    layers = model.model if hasattr(model, "model") else model
    n = len(model.yaml["backbone"]) if hasattr(model, "yaml") else len(layers)
    out = []
    for i in range(min(n, len(layers))):
        layer = layers[i]
        first = layer[0] if isinstance(layer, nn.Sequential) and len(layer) else layer
        if type(first).__name__ in TAIL_TYPES:
            break
        out.append((i, layer))
    return out


def destination_units(model: nn.Module, sd: dict) -> list[Unit]:
    """Blocks of the yaml backbone, in forward order: one per row, repeated rows unrolled; a TorchVisionBackbone
    row is cut like the torchvision model it wraps."""
    units = []
    for i, layer in backbone_layers(model):
        prefix = f"model.{i}." if hasattr(model, "model") else f"{i}."
        keys = [k for k in sd if k.startswith(prefix)]
        if isinstance(layer, TorchVisionBackbone):
            prefix += "body."
            found = _unit_keys(_tree(keys, prefix), prefix.rstrip("."), root=True)
        else:
            found = _unit_keys(_tree(keys, prefix), prefix.rstrip("."), root=False)
        units += [_make_unit(n, ks, sd) for n, ks in found if ks]
    return units


# ---------------------------------------------------------------- aligning and copying

def align(dst: list[Unit], src: list[Unit]) -> list[tuple[int, int]]:
    """Pairs (i, j) of fitting units as one chain from the stems: destination unit i + 1 takes the source unit
    after unit i's, or skips source units that repeat the last paired one (a yaml with fewer repeats per stage
    than the file). The first destination unit that does not fit ends the chain, so a coincidental shape match
    deeper in the network can never pull in weights from another place."""
    pairs: list[tuple[int, int]] = []
    j = 0
    for i, d in enumerate(dst):
        k = j
        while pairs and k < len(src) and d.sig != src[k].sig and src[k].sig == src[pairs[-1][1]].sig:
            k += 1
        if k >= len(src) or d.sig != src[k].sig:
            break
        pairs.append((i, k))
        j = k + 1
    return pairs


def _key_pairs(d: Unit, s: Unit, dsd: dict, ssd: dict) -> list[tuple[str, str]]:
    """(destination key, source key) for two fitting units: each destination group takes the first unused source
    group of the same shapes, leaf by leaf, tensor by tensor name (weight, bias, running_mean...)."""
    used: set[int] = set()
    out = []
    for g in d.groups:
        gsig = tuple(_leaf_sig(dsd, leaf) for leaf in g)
        j = next(j for j, h in enumerate(s.groups) if j not in used and
                 tuple(_leaf_sig(ssd, leaf) for leaf in h) == gsig)
        used.add(j)
        for dleaf, sleaf in zip(g, s.groups[j]):
            by_name = {k.rsplit(".", 1)[-1]: k for k in sleaf}
            out += [(k, by_name[k.rsplit(".", 1)[-1]]) for k in dleaf if k.rsplit(".", 1)[-1] in by_name]
    return out


def _describe(sd: dict, keys: list[str]) -> list[str]:
    return [f"{k} {tuple(sd[k].shape)}" for k in keys[:SHOW]]


def map_backbone(model: nn.Module, src: dict) -> TransferReport:
    """Copy every fitting unit of `src` (a torchvision/timm state_dict) into `model`'s yaml backbone; returns the
    report. Units that do not fit keep their values."""
    src = {k: v for k, v in src.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    dsd = model.state_dict()
    dst_units, src_units = destination_units(model, dsd), source_units(src)
    pairs = align(dst_units, src_units)
    report = TransferReport(total=sum(len(u.keys) for u in dst_units))
    with torch.no_grad():
        for i, j in pairs:
            d, s = dst_units[i], src_units[j]
            for dk, sk in _key_pairs(d, s, dsd, src):
                if src[sk].shape == dsd[dk].shape:  # num_batches_tracked is not in the signature: check it here
                    dsd[dk].copy_(src[sk].to(dsd[dk].dtype))
            report.matched += len(d.keys)
            report.pairs.append((d.name, s.name))
    paired_d, paired_s = {i for i, _ in pairs}, {j for _, j in pairs}
    left_d = [u for i, u in enumerate(dst_units) if i not in paired_d]
    report.skipped = [u.name for u in left_d]
    report.unmatched_dst = _describe(dsd, [u.keys[0] for u in left_d])
    report.unmatched_src = _describe(src, [u.keys[0] for j, u in enumerate(src_units) if j not in paired_s])
    return report


def transfer_backbone(model: nn.Module, weights: str | Path | dict, source: str = "") -> TransferReport:
    """Map ImageNet weights (a torchvision/timm state_dict, or a local .pth/.pt file holding one)
    onto `model`'s yaml backbone by structure; logs ``transferred M/N tensors`` and warns when nothing fits."""
    src = weights if isinstance(weights, dict) else read_state_dict(weights)
    where = source or ("state_dict" if isinstance(weights, dict) else str(weights))
    report = map_backbone(model, src)
    LOGGER.info(f"ImageNet backbone from {where}: {report}")
    if report.total and not report.matched:
        LOGGER.warning(f"WARNING: nothing in {where} fits this model's backbone (transferred 0/{report.total} "
                       f"tensors): its widths or blocks differ; README 'ImageNet backbones' lists which yaml takes "
                       f"which file")
    return report


def backbone_state_dict(raw) -> dict | None:
    """The flat {name: tensor} dict of a classifier's weights file (bare, or under 'state_dict'/'model' as timm and
    training scripts save it), or None when `raw` is something else (a YOLOv5 or project checkpoint)."""
    if not isinstance(raw, dict) or "yaml" in raw:
        return None
    for key in ("state_dict", "model"):
        if isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    flat = bool(raw) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items())
    return raw if flat else None


def read_state_dict(path: str | Path) -> dict:
    """An ImageNet state_dict from a local torch file, read by torch's weights-only unpickler (no code from the
    file runs). Errors are one line naming the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ImageNet weights file not found: {path} (nothing is downloaded)")
    if p.suffix == ".safetensors":  # refused rather than guessed: pairing follows the file's module order
        raise ValueError(f"{path}: safetensors files list tensors sorted by name, which loses the layer order this "
                         f"mapping pairs by; save the model's state_dict with torch.save (e.g. from "
                         f"timm.create_model(name, pretrained=True)) and pass that .pth")
    sd = backbone_state_dict(read_weights_file(p))
    if sd is None:
        raise ValueError(f"{path}: not an ImageNet state_dict (expected a dict of tensors, e.g. torchvision's or "
                         f"timm's model.state_dict())")
    return sd


def transfer_mobilenet_v2(model: nn.Module, weights: str | Path | dict) -> TransferReport:
    """The former MobileNetV2-only entry point: the same structure mapping (it takes any family)."""
    return transfer_backbone(model, weights)

