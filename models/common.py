"""YOLOv5-style import path for every block: ``from models.common import C3, C3_UIB, RepVGGBlock``.

Blocks live in one module per family under models/blocks/; importing them registers them with the builder.
"""
from models.blocks.conv import Concat, Conv, DWConv, Focus, autopad  # noqa: F401
from models.blocks.csp import C3, SPP, SPPF, Bottleneck, CSPBase  # noqa: F401
from models.blocks.ghost import C3Ghost, GhostBottleneck, GhostConv  # noqa: F401
from models.blocks.heads import Detect, Proto, Segment  # noqa: F401
