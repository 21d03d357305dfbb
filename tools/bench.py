#!/usr/bin/env python3
"""Classifier speed, Rust (app-tier bench) against Python onnxruntime on the same images and model,
one thread each. The two sides alternate, round after round, and the medians are compared.

    bench.py --model models/efficientnet-lite0 IMAGE_DIR [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from reference import Reference

ROOT = Path(__file__).resolve().parent.parent
APP_TIER = ROOT / "target" / "release" / "app-tier"


def python_round(ref: Reference, files: list[Path]) -> dict[str, float]:
    prepare, tensors = [], []
    for f in files:
        start = time.perf_counter()
        tensors.append(ref.preprocess(f))
        prepare.append((time.perf_counter() - start) * 1e3)
    result = {"prepare_ms": statistics.median(prepare)}
    name_in, name_out = ref.manifest["input"]["name"], ref.manifest["output"]["name"]
    for batch in (1, 2, 4, 8):
        same = [t for t in tensors if t.shape == tensors[0].shape]
        batches = [np.stack(same[i:i + batch]) for i in range(0, len(same) - batch + 1, batch)]
        if not batches:
            result[f"infer_batch{batch}_ms"] = None
            continue
        ref.session.run([name_out], {name_in: batches[0]})  # warm-up
        times = []
        for b in batches:
            start = time.perf_counter()
            ref.session.run([name_out], {name_in: b})
            times.append((time.perf_counter() - start) * 1e3 / batch)
        result[f"infer_batch{batch}_ms"] = statistics.median(times)
    return result


def rust_round(model: Path, files: list[Path]) -> dict[str, float]:
    out = subprocess.run(
        [str(APP_TIER), "bench", "--model", str(model), "--threads", "1", "--rounds", "1", *map(str, files)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "bench" / "classifier.json")
    parser.add_argument("images", type=Path)
    args = parser.parse_args()
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not files:
        sys.exit(f"no images in {args.images}")
    ref = Reference(args.model, threads=1)
    rounds: dict[str, list[dict]] = {"rust": [], "python": []}
    for i in range(args.rounds):
        # Alternate which side goes first so that drift on a shared machine hits both alike.
        order = ("rust", "python") if i % 2 == 0 else ("python", "rust")
        for side in order:
            rounds[side].append(rust_round(args.model, files) if side == "rust" else python_round(ref, files))
        print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
    med = {
        side: {k: statistics.median(r[k] for r in rs) if rs[0][k] is not None else None for k in rs[0]}
        for side, rs in rounds.items()
    }
    rows = [
        ("decode+preprocess per image", "prepare_ms"),
        *((f"inference per image, batch {b}", f"infer_batch{b}_ms") for b in (1, 2, 4, 8)),
    ]
    print(f"\n{args.model.name}, {len(files)} images, 1 thread, median of {args.rounds} alternating rounds\n")
    print(f"{'stage':32} {'Rust ms':>9} {'Python ms':>10} {'Rust/Python':>12}")
    for label, key in rows:
        r, p = med["rust"][key], med["python"][key]
        if r is None or p is None:
            print(f"{label:32} {'n/a (fewer images of one size than the batch)':>33}")
            continue
        print(f"{label:32} {r:9.3f} {p:10.3f} {r / p:11.2f}x")
    print(f"{'  of which JPEG/PNG decode':32} {med['rust']['decode_ms']:9.3f}")
    print(f"{'  of which resize':32} {med['rust']['resize_ms']:9.3f}")
    share = med["rust"]["prepare_ms"] / med["rust"]["infer_batch1_ms"]
    print(f"\nRust decode+preprocess = {share:.1%} of Rust inference time (batch 1); goal < 10%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"median_ms": med, "rounds": rounds}, indent=2) + "\n")
    print(f"raw figures: {args.out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
