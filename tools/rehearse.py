#!/usr/bin/env python3
"""`make rehearsal`: the AWS deployment rehearsed on this machine, under its real IAM policies and the
AWS behaviours moto lacks (tools/rehearsal/). Serves until Ctrl-C (watch /dashboard), or with
--burst sends the images once, waits for the groups (On-Demand, Spot) to return to their minimum,
prints what happened (uploads right, peak and final size, AWS calls made and denied) and exits 1 on any denial,
wrong label or error."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from local_stack import loadgen
from rehearsal.stack import ROOT, Rehearsal, burst_outcome, report

MODEL = ROOT / "models" / "efficientnet-lite0"


def expected_labels(images: list[Path], out: Path) -> Path:
    ref = subprocess.run([sys.executable, str(ROOT / "tools" / "reference.py"), "--model", str(MODEL),
                          *map(str, images)], capture_output=True, text=True, check=True)
    out.write_text(ref.stdout)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path, help="a folder of images (the burst's uploads)")
    parser.add_argument("--burst", action="store_true", help="send the images once, report, exit")
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    with tempfile.TemporaryDirectory() as tmp, Rehearsal() as rehearsal:
        print(f"rehearsal: web-instance1 on {rehearsal.url} (dashboard: {rehearsal.url}dashboard), "
              f"AWS at {rehearsal.gateway.endpoint} (IAM enforced), files in {rehearsal.dir}")
        print(f"rehearsal: timing changed from the deployed settings: {rehearsal.timing}")
        if not args.burst:
            stop = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            print("rehearsal: upload with  curl -F myfile=@IMAGE " + rehearsal.url + "   Ctrl-C stops it")
            stop.wait()
            stats = rehearsal.stats()
            print(f"AWS calls: {stats['total_calls']} made, {stats['total_denied']} denied")
            return 0
        expected = expected_labels(images, Path(tmp) / "expected.csv")
        summary, _ = loadgen(rehearsal.url, images, concurrency=args.concurrency, expected=expected)
        outcome = burst_outcome(rehearsal, summary)
        print(report(outcome))
        return 0 if (outcome.denied, outcome.wrong, outcome.errors) == (0, 0, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
