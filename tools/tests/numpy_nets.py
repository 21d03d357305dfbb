"""Plain numpy (float64) forward passes, the yardstick for the ONNX graphs we build."""

from __future__ import annotations

import numpy as np


def conv2d(x, w, stride=1, pads=(0, 0, 0, 0), groups=1, bias=None):
    """x: [C, H, W], w: [O, C/groups, k, k], pads: [top, left, bottom, right]."""
    top, left, bottom, right = pads
    x = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.empty((o, oh, ow))
    og = o // groups
    for g in range(groups):
        xs = x[g * cg:(g + 1) * cg]
        cols = np.lib.stride_tricks.sliding_window_view(xs, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
        cols = cols[:, :oh, :ow]  # [cg, oh, ow, kh, kw]
        ws = w[g * og:(g + 1) * og]
        out[g * og:(g + 1) * og] = np.einsum("chwij,ocij->ohw", cols, ws)
    if bias is not None:
        out += bias[:, None, None]
    return out


def batch_norm(x, sd, prefix, eps):
    g, b = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
    m, v = sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]
    return (x - m[:, None, None]) / np.sqrt(v[:, None, None] + eps) * g[:, None, None] + b[:, None, None]


def max_pool(x, k=3, stride=2, pad=1):
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    return win.max(axis=(3, 4))


def resnet18(sd, x):
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    x = relu(batch_norm(conv2d(x, sd["conv1.weight"], 2, (3, 3, 3, 3)), sd, "bn1", 1e-5))
    x = max_pool(x)
    for layer, stride in ((1, 1), (2, 2), (3, 2), (4, 2)):
        for b in range(2):
            p, s = f"layer{layer}.{b}", stride if b == 0 else 1
            h = relu(batch_norm(conv2d(x, sd[f"{p}.conv1.weight"], s, (1, 1, 1, 1)), sd, f"{p}.bn1", 1e-5))
            h = batch_norm(conv2d(h, sd[f"{p}.conv2.weight"], 1, (1, 1, 1, 1)), sd, f"{p}.bn2", 1e-5)
            if f"{p}.downsample.0.weight" in sd:
                x = batch_norm(conv2d(x, sd[f"{p}.downsample.0.weight"], s), sd, f"{p}.downsample.1", 1e-5)
            x = relu(h + x)
    return sd["fc.weight"] @ x.mean(axis=(1, 2)) + sd["fc.bias"]


def random_resnet18_state(seed=0, classes=1000):
    rng = np.random.default_rng(seed)
    sd = {}

    def conv(name, o, i, k):
        sd[f"{name}.weight"] = (rng.standard_normal((o, i, k, k)) * np.sqrt(2 / (i * k * k))).astype(np.float32)

    def bn(name, c):
        sd[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[f"{name}.bias"] = (rng.standard_normal(c) * 0.1).astype(np.float32)
        sd[f"{name}.running_mean"] = (rng.standard_normal(c) * 0.1).astype(np.float32)
        sd[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[f"{name}.num_batches_tracked"] = np.array(100, dtype=np.int64)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inp = 64
    for layer, ch in ((1, 64), (2, 128), (3, 256), (4, 512)):
        for b in range(2):
            p = f"layer{layer}.{b}"
            conv(f"{p}.conv1", ch, inp if b == 0 else ch, 3)
            bn(f"{p}.bn1", ch)
            conv(f"{p}.conv2", ch, ch, 3)
            bn(f"{p}.bn2", ch)
            if b == 0 and layer > 1:
                conv(f"{p}.downsample.0", ch, inp, 1)
                bn(f"{p}.downsample.1", ch)
        inp = ch
    sd["fc.weight"] = (rng.standard_normal((classes, 512)) / np.sqrt(512)).astype(np.float32)
    sd["fc.bias"] = (rng.standard_normal(classes) * 0.01).astype(np.float32)
    return sd


def _depthwise(x, w, stride, pads):
    top, left, bottom, right = pads
    x = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    k = w.shape[2]
    oh, ow = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride][:, :oh, :ow]
    return np.einsum("chwij,cij->chw", win, w[:, 0])


def tf_same_pads(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return (total // 2, total // 2, total - total // 2, total - total // 2)


def efficientnet_lite0(sd, x, stages, eps=1e-3):
    """lukemelas EfficientNet-Lite0 in eval mode, unfolded BatchNorm, TF SAME padding."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    relu6 = lambda t: np.clip(t, 0, 6)  # noqa: E731
    size = x.shape[1]
    x = relu6(batch_norm(conv2d(x, sd["_conv_stem.weight"], 2, tf_same_pads(size, 3, 2)), sd, "_bn0", eps))
    size, ch, block = x.shape[1], 32, 0
    for expand, k, stride, out_ch, repeats in stages:
        for r in range(repeats):
            s, p = (stride if r == 0 else 1), f"_blocks.{block}"
            h = x
            if expand != 1:
                h = relu6(batch_norm(conv2d(h, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0", eps))
            h = relu6(batch_norm(_depthwise(h, sd[f"{p}._depthwise_conv.weight"], s, tf_same_pads(size, k, s)), sd, f"{p}._bn1", eps))
            h = batch_norm(conv2d(h, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2", eps)
            if s == 1 and ch == out_ch:
                h = h + x
            x, size, ch, block = h, h.shape[1], out_ch, block + 1
    x = relu6(batch_norm(conv2d(x, sd["_conv_head.weight"]), sd, "_bn1", eps))
    return sd["_fc.weight"] @ x.mean(axis=(1, 2)) + sd["_fc.bias"]
