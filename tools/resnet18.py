"""torchvision ResNet-18 (its state dict key names) as an ONNX graph with dynamic batch, height and width."""

from __future__ import annotations

import numpy as np
import onnx

from onnx_graph import GraphBuilder

BN_EPS = 1e-5
LAYERS = [(1, 64, 1), (2, 128, 2), (3, 256, 2), (4, 512, 2)]  # (index, channels, first stride)


def build(state_dict: dict[str, np.ndarray]) -> onnx.ModelProto:
    g = GraphBuilder(state_dict)
    x = g.relu(g.conv_bn("input", "conv1", "bn1", stride=2, pads=[3] * 4, eps=BN_EPS))
    x = g.max_pool(x, kernel=3, stride=2, pad=1)
    for index, _channels, first_stride in LAYERS:
        for b in range(2):
            p = f"layer{index}.{b}"
            s = first_stride if b == 0 else 1
            h = g.relu(g.conv_bn(x, f"{p}.conv1", f"{p}.bn1", stride=s, pads=[1] * 4, eps=BN_EPS))
            h = g.conv_bn(h, f"{p}.conv2", f"{p}.bn2", stride=1, pads=[1] * 4, eps=BN_EPS)
            shortcut = x
            if f"{p}.downsample.0.weight" in state_dict:
                shortcut = g.conv_bn(
                    x, f"{p}.downsample.0", f"{p}.downsample.1", stride=s, pads=[0] * 4, eps=BN_EPS
                )
            x = g.relu(g.add(h, shortcut))
    g.classifier_head(x, "fc")
    num_classes = g.weight("fc.weight").shape[0]
    return g.model("resnet18", ["N", 3, "H", "W"], num_classes)
