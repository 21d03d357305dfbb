#!/usr/bin/env python3
"""Reference classifier (Pillow + onnxruntime), following the model's manifest.

    reference.py --model models/efficientnet-lite0 FILE...   -> prints FILE_NAME,label per file

It defines "correct" for the Rust classifier. --dump DIR also writes, per file, the preprocessed
tensor (<name>.input.f32) and the logits (<name>.logits.f32) as raw little-endian float32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

FILTERS = {"bilinear": Image.Resampling.BILINEAR}


class Reference:
    def __init__(self, model_dir: Path, threads: int = 1):
        self.manifest = json.loads((model_dir / "manifest.json").read_text())
        self.labels = json.loads((model_dir / self.manifest["labels"]).read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def preprocess(self, path: Path) -> np.ndarray:
        """Image file -> float32 CHW tensor."""
        with Image.open(path) as im:
            im = im.convert("RGB")
            resize = self.manifest.get("resize")
            if resize:
                im = im.resize((resize["width"], resize["height"]), FILTERS[resize["filter"]])
            pixels = np.asarray(im, dtype=np.float32)
        norm = self.manifest["normalize"]
        mean = np.asarray(norm["mean"], dtype=np.float32)
        std = np.asarray(norm["std"], dtype=np.float32)
        return ((pixels - mean) / std).transpose(2, 0, 1).copy()

    def logits(self, tensor: np.ndarray) -> np.ndarray:
        out = self.session.run(
            [self.manifest["output"]["name"]], {self.manifest["input"]["name"]: tensor[None]}
        )
        return out[0][0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dump", type=Path, help="write tensors and logits here")
    parser.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args()
    ref = Reference(args.model, args.threads)
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in args.files:
        try:
            tensor = ref.preprocess(path)
        # Pillow raises SyntaxError (and EOFError) for a broken file found while loading it.
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            print(f"{path.name}: not a readable image: {e}", file=sys.stderr)
            failed += 1
            continue
        logits = ref.logits(tensor)
        if args.dump:
            tensor.astype("<f4").tofile(args.dump / f"{path.name}.input.f32")
            logits.astype("<f4").tofile(args.dump / f"{path.name}.logits.f32")
        print(f"{path.name},{ref.labels[int(np.argmax(logits))]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
