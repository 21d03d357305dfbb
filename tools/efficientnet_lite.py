"""EfficientNet-Lite0 (lukemelas EfficientNet-PyTorch key names) as an ONNX graph.

Lite differs from EfficientNet-B0: ReLU6 instead of swish, no squeeze-excite, stem and head not
scaled. Convolutions use TensorFlow SAME padding (the extra pixel goes bottom/right), computed
statically for the fixed input size; BatchNorm eps is 1e-3.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from onnx_graph import GraphBuilder

BN_EPS = 1e-3
IMAGE_SIZE = 224
# (expand ratio, kernel, stride, output channels, repeats)
STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]
STEM_CHANNELS = 32


def same_pads(size: int, kernel: int, stride: int) -> tuple[list[int], int]:
    """TF SAME padding [top, left, bottom, right] for a square input, and the output size."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    before = total // 2
    return [before, before, total - before, total - before], out


def build(state_dict: dict[str, np.ndarray], image_size: int = IMAGE_SIZE) -> onnx.ModelProto:
    g = GraphBuilder(state_dict)
    size = image_size
    pads, size = same_pads(size, 3, 2)
    x = g.relu6(g.conv_bn("input", "_conv_stem", "_bn0", stride=2, pads=pads, eps=BN_EPS))
    channels = STEM_CHANNELS
    block = 0
    for expand, kernel, stride, out_channels, repeats in STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            p = f"_blocks.{block}"
            h = x
            if expand != 1:
                h = g.relu6(g.conv_bn(h, f"{p}._expand_conv", f"{p}._bn0", stride=1, pads=[0] * 4, eps=BN_EPS))
            hidden = channels * expand
            pads, new_size = same_pads(size, kernel, s)
            h = g.relu6(
                g.conv_bn(h, f"{p}._depthwise_conv", f"{p}._bn1", stride=s, pads=pads, groups=hidden, eps=BN_EPS)
            )
            h = g.conv_bn(h, f"{p}._project_conv", f"{p}._bn2", stride=1, pads=[0] * 4, eps=BN_EPS)
            if s == 1 and channels == out_channels:
                h = g.add(h, x)
            x, size, channels = h, new_size, out_channels
            block += 1
    x = g.relu6(g.conv_bn(x, "_conv_head", "_bn1", stride=1, pads=[0] * 4, eps=BN_EPS))
    g.classifier_head(x, "_fc")
    num_classes = g.weight("_fc.weight").shape[0]
    return g.model("efficientnet_lite0", ["N", 3, image_size, image_size], num_classes)
