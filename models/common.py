"""YOLOv5-style import path for every block: ``from models.common import C3, C3_UIB, RepVGGBlock``.

Blocks live in one module per family under models/blocks/, on top of the shared layers in models/layers.py;
importing them registers them with the builder.
"""
from models.blocks.attention import CBAM
from models.blocks.conv import Concat, Focus
from models.blocks.csp import C3, SPP, SPPF, Bottleneck, CSPBase
from models.blocks.efficientnet import FusedMBConv, MBConv
from models.blocks.ghost import C3Ghost, GhostBottleneck, GhostConv, GhostNetBottleneck
from models.blocks.heads import Detect, Proto, Segment
from models.blocks.mobilenet import DWSConv, MobileNetV2_Block, MobileNetV3_Block, conv_bn_hswish
from models.blocks.repvgg import RepVGGBlock
from models.blocks.shufflenet import ShuffleNetV2_Block, conv_bn_relu_maxpool
from models.blocks.torchvision_backbone import Index, TorchVisionBackbone
from models.blocks.uib import C3_UIB, UIB
from models.layers import (
                           SE,
                           Conv,
                           DropPath,
                           DWConv,
                           autopad,
                           channel_shuffle,
                           fuse_conv_and_bn,
                           make_act,
                           make_norm,
                           round_channels,
)
