"""Block registry: each block declares how it consumes a yaml row, so the builder needs no per-class branches.

A block class sets ``yaml_args`` to the name of one of the policies below (or to its own callable with the
same signature) and is registered with ``@register``.  A policy turns a :class:`Row` into
``(constructor_args, out_channels, repeats)``; ``repeats`` is how many copies the builder stacks (1 for blocks
that take ``n`` themselves, like C3).

Register your own block from user code::

    from models.registry import register
    @register
    class MyBlock(nn.Module):
        yaml_args = "channels"        # args [c2, ...] -> MyBlock(c1, c2, ...)
"""
from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from utils.general import make_divisible


class YamlError(ValueError):
    """A model yaml that cannot be built; the message names the row and the cause."""


@dataclass
class Row:
    """One parsed yaml row plus the build state a policy may need."""
    index: int
    frm: int | list[int]
    n: int                      # repeats after depth_multiple
    args: list
    ch: list                    # channels of every layer built so far; ch[-1] is the previous layer
    width_multiple: float
    no: int                     # Detect outputs per level, na * (nc + 5): never width-scaled
    extra: dict = field(default_factory=dict)

    @property
    def c_in(self):
        """Input channels: an int for one source, a list for several."""
        if isinstance(self.frm, int):
            return self.ch[self.frm]
        return [self.ch[x] for x in self.frm]

    def scale_width(self, c: int) -> int:
        return c if c == self.no else make_divisible(c * self.width_multiple, 8)


Policy = Callable[[Row], "tuple[list, int | list, int]"]


def single_input(row: Row) -> int:
    """The one input width of a row (for policies of blocks that read a single layer); a YamlError otherwise."""
    if not isinstance(row.frm, int):
        raise YamlError(f"takes one input, but 'from' lists {len(row.frm)} layers")
    c1 = row.c_in
    if isinstance(c1, (list, tuple)):  # e.g. a TorchVisionBackbone row, whose output is one tensor per stage
        raise YamlError("its input layer has several outputs; select one with an Index row first")
    return c1


def channels(row: Row):
    """args [c2, *rest] -> (c1, c2_scaled, *rest), stacked n times."""
    if not row.args:
        raise YamlError("needs at least the output channels as its first argument")
    c1, c2 = single_input(row), row.scale_width(row.args[0])
    return [c1, c2, *row.args[1:]], c2, row.n


def csp(row: Row):
    """args [c2, *rest] -> (c1, c2_scaled, n, *rest), built once: the block repeats its inner layers itself."""
    if not row.args:
        raise YamlError("needs at least the output channels as its first argument")
    c1, c2 = single_input(row), row.scale_width(row.args[0])
    return [c1, c2, row.n, *row.args[1:]], c2, 1


def concat(row: Row):
    c_in = row.c_in
    if not isinstance(c_in, list):
        c_in = [c_in]
    return list(row.args), sum(c_in), row.n


def same(row: Row):
    """Pass-through modules (upsampling, pooling, activations): channels unchanged."""
    return list(row.args), row.c_in, row.n


def batchnorm(row: Row):
    return [single_input(row)], row.c_in, row.n


def head(row: Row):
    """Detect-like heads: the list of input channels is appended to the args."""
    c_in = row.c_in if isinstance(row.frm, list) else [row.c_in]
    return [*row.args, c_in], None, 1


def raw(row: Row):
    """Arguments passed verbatim plus the input channels first; the block reports its output channels through
    ``yaml_out_channels(c_in, *args)`` (for blocks such as whole torchvision backbones with several outputs)."""
    cls = row.extra["cls"]
    return [row.c_in, *row.args], cls.yaml_out_channels(row.c_in, *row.args), row.n


POLICIES: dict[str, Policy] = {"channels": channels, "csp": csp, "concat": concat, "same": same,
                               "batchnorm": batchnorm, "head": head, "raw": raw}
REGISTRY: dict[str, type] = {}


def register(cls=None, *, name: str | None = None, yaml_args: str | Policy | None = None):
    """Make a block usable from yaml by class name (or ``name``). Usable as a bare or called decorator."""
    def wrap(c):
        if yaml_args is not None:
            c.yaml_args = yaml_args
        if not hasattr(c, "yaml_args"):
            raise TypeError(f"{c.__name__} needs a 'yaml_args' class attribute (one of {sorted(POLICIES)})")
        REGISTRY[name or c.__name__] = c
        return c
    return wrap(cls) if cls is not None else wrap


def policy_of(cls) -> Policy:
    p = getattr(cls, "yaml_args", "same")
    if callable(p):
        return p
    if p not in POLICIES:
        raise YamlError(f"{cls.__name__}.yaml_args = {p!r} is not one of {sorted(POLICIES)}")
    return POLICIES[p]


# torch.nn modules usable by name in yaml, as in YOLOv5 yamls ('nn.Upsample', 'nn.BatchNorm2d', ...).
_NN_POLICY = {"BatchNorm2d": "batchnorm"}


def resolve_module(name: str):
    """Map a yaml module name to a class, or raise YamlError suggesting the closest registered names."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith("nn.") and hasattr(nn, name[3:]):
        cls = getattr(nn, name[3:])
        if not hasattr(cls, "yaml_args"):
            cls.yaml_args = _NN_POLICY.get(name[3:], "same")
        return cls
    close = difflib.get_close_matches(name, list(REGISTRY), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; register it with models.registry.register"
    raise YamlError(f"unknown module '{name}'{hint}")


def resolve_arg(a, names: dict):
    """Strings in yaml args name things ('nc', 'anchors', 'None') or are literals; anything else stays a string."""
    if not isinstance(a, str):
        return a
    if a in names:
        return names[a]
    try:
        return ast.literal_eval(a)
    except (ValueError, SyntaxError):
        return a


def parse_activation(text: str | None) -> nn.Module | None:
    """Parse the yaml ``activation:`` key, e.g. 'nn.LeakyReLU(0.1)', without a general eval."""
    if text is None:
        return None
    node = ast.parse(str(text), mode="eval").body
    call = node if isinstance(node, ast.Call) else None
    target = call.func if call else node
    if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "nn"
            and hasattr(nn, target.attr)):
        raise YamlError(f"activation '{text}' must be a torch.nn module such as nn.SiLU() or nn.LeakyReLU(0.1)")
    args = [ast.literal_eval(a) for a in call.args] if call else []
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords} if call else {}
    return getattr(nn, target.attr)(*args, **kwargs)
