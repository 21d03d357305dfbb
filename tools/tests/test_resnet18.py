"""The ResNet-18 path, on generated weights (the real file needs the internet) and, when the real
file is present, on the course's expected answers."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import make_model
import numpy_nets
import torch_writer

REAL_WEIGHTS = Path(".cache/models/resnet18-f37072fd.pth")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resnet18")
    sd = numpy_nets.random_resnet18_state(seed=1)
    weights = tmp / "resnet18-random.pth"
    torch_writer.save_zip(sd, weights)
    out = tmp / "resnet18"
    make_model.write_model("resnet18", weights, out, verify_hash=False)
    return sd, out


def test_converted_graph_matches_numpy_forward_at_several_sizes(generated):
    sd, out = generated
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    for h, w in ((64, 64), (45, 37), (97, 120)):
        x = rng.uniform(0, 1, (3, h, w)).astype(np.float32)
        got = session.run(["logits"], {"input": x[None]})[0][0]
        want = numpy_nets.resnet18(sd, x.astype(np.float64))
        rel = np.abs(got - want).max() / np.abs(want).max()
        print(f"{h}x{w}: max relative error {rel:.2e}")
        assert rel < 1e-4


def test_manifest_is_to_tensor_only(generated):
    _, out = generated
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resize"] is None
    assert manifest["normalize"] == {"mean": [0.0] * 3, "std": [255.0] * 3}
    assert manifest["input"]["shape"] == ["N", 3, "H", "W"]
    assert json.loads((out / "labels.json").read_text())[0] == "tench"


def test_wrong_hash_is_refused(tmp_path, generated):
    sd, _ = generated
    weights = tmp_path / "resnet18-f37072fd.pth"
    torch_writer.save_zip({"fc.weight": np.zeros((2, 2), np.float32)}, weights)
    with pytest.raises(SystemExit, match="SHA-256"):
        make_model.write_model("resnet18", weights, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_real_resnet18_gives_the_course_answers(tmp_path):
    if not REAL_WEIGHTS.exists():
        pytest.skip(
            f"NOT RUN: {REAL_WEIGHTS} is absent (this machine cannot download it); "
            "`make model MODEL=resnet18` on a connected machine fetches it"
        )
    datasets = Path(os.environ.get("DATASETS", "../shared/datasets"))
    out = tmp_path / "resnet18"
    make_model.write_model("resnet18", REAL_WEIGHTS, out)
    expected = dict(csv.reader((datasets / "imagenet-100-resnet18-results.csv").open()))
    files = sorted((datasets / "imagenet-100").glob("*.JPEG"))
    result = subprocess.run(
        [sys.executable, "tools/reference.py", "--model", str(out), *map(str, files)],
        check=True, capture_output=True, text=True,
    )
    got = dict(line.split(",", 1) for line in result.stdout.splitlines())
    assert got == expected
    app_tier = Path("target/release/app-tier")
    rust = subprocess.run([str(app_tier), "classify", "--model", str(out), *map(str, files)],
                          check=True, capture_output=True, text=True)
    assert dict(line.split(",", 1) for line in rust.stdout.splitlines()) == expected
