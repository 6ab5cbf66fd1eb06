"""Block registry: each block declares how it consumes a yaml row, so the builder needs no per-class branches.

A block class sets ``yaml_args`` to the name of one of the policies below (or to its own callable with the
same signature) and is registered with ``@register``.  A policy turns a :class:`Row` into
``(constructor_args, out_channels, repeats)``; ``repeats`` is how many copies the builder stacks (1 for blocks
that take ``n`` themselves, like C3).

Policies live with the class that owns them (its ``yaml_args``) or in this module's own tables (``register(...,
yaml_args=)`` and torch.nn classes): nothing here sets an attribute on a class it does not own, so building a
yaml (accepted or not) leaves every class as it was.

Register your own block from user code::

    from models.registry import register
    @register
    class MyBlock(nn.Module):
        yaml_args = "channels"        # args [c2, ...] -> MyBlock(c1, c2, ...)
"""
from __future__ import annotations

import ast
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from utils.general import make_divisible


class YamlError(ValueError):
    """A model yaml that cannot be built; the message names the row and the cause."""


MAX_CHANNELS = 8192  # a row's output channels after width_multiple (YOLOv5's largest: 1280); see models/limits.py


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
        """Channels from the yaml after width_multiple, bounded before any layer of that width is made."""
        if not isinstance(c, int) or isinstance(c, bool) or c < 1:
            raise YamlError(f"output channels must be a positive int, got {str(c)[:40]!r}")
        out = c if c == self.no else make_divisible(c * self.width_multiple, 8)
        if out > MAX_CHANNELS:
            raise YamlError(f"{c} channels x width_multiple {self.width_multiple:g} = {out} is more than the "
                            f"{MAX_CHANNELS} allowed")
        return out


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
# policies given as register(..., yaml_args=): kept here rather than set on the class, which may not be ours
_POLICY_OF: dict[type, str | Policy] = {}
# torch.nn modules usable by name in yaml, as in YOLOv5 yamls ('nn.Upsample', 'nn.BatchNorm2d', ...); 'same'
# unless listed. Looked up by class, never stored on it: a torch.nn class is shared by the whole process.
_NN_POLICY: dict[type, str] = {nn.BatchNorm2d: "batchnorm"}


def register(cls=None, *, name: str | None = None, yaml_args: str | Policy | None = None):
    """Make a block usable from yaml by class name (or ``name``). Usable as a bare or called decorator."""
    def wrap(c):
        if yaml_args is None and not hasattr(c, "yaml_args"):
            raise TypeError(f"{c.__name__} needs a 'yaml_args' class attribute (one of {sorted(POLICIES)})")
        if yaml_args is not None:
            _POLICY_OF[c] = yaml_args
        REGISTRY[name or c.__name__] = c
        return c
    return wrap(cls) if cls is not None else wrap


def _is_torch_nn(cls) -> bool:
    return isinstance(cls, type) and cls.__module__.startswith("torch.nn.")


def policy_of(cls) -> Policy:
    if cls in _POLICY_OF:
        p = _POLICY_OF[cls]
    elif _is_torch_nn(cls):
        p = _NN_POLICY.get(cls, "same")
    else:
        p = getattr(cls, "yaml_args", "same")
    if callable(p):
        return p
    if p not in POLICIES:
        raise YamlError(f"{cls.__name__}.yaml_args = {p!r} is not one of {sorted(POLICIES)}")
    return POLICIES[p]


def resolve_module(name: str):
    """Map a yaml module name to a class, or raise YamlError suggesting the closest registered names."""
    if name in REGISTRY:
        return REGISTRY[name]
    if len(name) > 100:
        raise YamlError(f"module name '{name[:40]}...' is longer than 100 characters")
    if name.startswith("nn."):
        cls = getattr(nn, name[3:], None) if name[3:].isidentifier() else None
        if isinstance(cls, type) and issubclass(cls, nn.Module) and cls is not nn.Module:
            return cls
        if cls is not None:
            raise YamlError(f"'{name}' is not a torch.nn layer class")
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
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):  # deep nesting, huge ints: a string
        return a


MAX_ACTIVATION_TEXT = 200
MAX_ACTIVATION_NUMEL = 1024  # nn.PReLU(num_parameters=...) is the only activation with weights


def _activation_class(target: ast.AST):
    """The torch.nn activation class an ``nn.Name`` node names, or None."""
    if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "nn"):
        return None
    cls = getattr(nn, target.attr, None)
    ok = isinstance(cls, type) and issubclass(cls, nn.Module) and cls is not nn.MultiheadAttention
    return cls if ok and (cls.__module__ == "torch.nn.modules.activation" or cls is nn.Identity) else None


def parse_activation(text: str | None) -> nn.Module | None:
    """Parse the yaml ``activation:`` key, e.g. 'nn.LeakyReLU(0.1)': a torch.nn activation called with literal
    arguments. Nothing is evaluated (ast.literal_eval on each argument); anything else is a one-line YamlError."""
    if text is None:
        return None
    text = str(text)
    shown = text if len(text) <= 60 else text[:60] + "..."
    hint = "use a torch.nn activation with literal arguments, e.g. nn.SiLU() or nn.LeakyReLU(0.1)"
    if len(text) > MAX_ACTIVATION_TEXT:
        raise YamlError(f"activation '{shown}' is longer than {MAX_ACTIVATION_TEXT} characters; {hint}")
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise YamlError(f"activation '{shown}' is not valid syntax ({type(e).__name__}); {hint}") from None
    call = node if isinstance(node, ast.Call) else None
    cls = _activation_class(call.func if call else node)
    if cls is None:
        raise YamlError(f"activation '{shown}' is not a torch.nn activation; {hint}")
    try:
        args = [ast.literal_eval(a) for a in call.args] if call else []
        if call and any(k.arg is None for k in call.keywords):
            raise ValueError("**kwargs")
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords} if call else {}
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        raise YamlError(f"activation '{shown}' has a non-literal argument; {hint}") from None
    try:
        with torch.device("meta"):  # measure before allocating: nn.PReLU(10**12) is a few bytes of yaml
            n = sum(t.numel() for t in cls(*args, **kwargs).parameters())
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        cause = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise YamlError(f"activation '{shown}': {type(e).__name__}: {cause[:120]}") from None
    if n > MAX_ACTIVATION_NUMEL:
        raise YamlError(f"activation '{shown}' has {n:,} weights; at most {MAX_ACTIVATION_NUMEL} allowed")
    return cls(*args, **kwargs)
