"""Model folders with generated weights, through the converter's own path (the real weights need
the internet)."""

from __future__ import annotations

from pathlib import Path

import make_model
import numpy_nets
import torch_writer


def resnet18(tmp: Path) -> Path:
    """ResNet-18 (native size, ToTensor only) in `tmp/resnet18-generated/`, made once per `tmp`."""
    out = tmp / "resnet18-generated"
    if not (out / "manifest.json").exists():
        weights = tmp / "resnet18-random.pth"
        torch_writer.save_zip(numpy_nets.random_resnet18_state(seed=1), weights)
        make_model.write_model("resnet18", weights, out, verify_hash=False)
    return out
