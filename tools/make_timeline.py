"""The README's timelines from real runs: the local stack (web tier, its scaler, app-tier
processes) takes a burst of 100 and one of 1,000 uploads, and `loadgen --plot` draws instances,
backlog and every request's latency over time. `make timeline` runs it."""

import argparse
import sys
import tempfile
from pathlib import Path

from local_stack import Stack, loadgen

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=Path, required=True, help="a folder of images")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--max", default="20", help="scaler.max for the run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for count in (100, 1000):
        repeat = max(1, count // len(images))
        with tempfile.TemporaryDirectory() as tmp, Stack(Path(tmp) / "data", scaler__max=args.max) as stack:
            inputs = [str(p) for p in images]
            plot = args.out / f"timeline-{count}.svg"
            summary, run = loadgen(stack.url, inputs, concurrency=100, plot=plot, plot_tail=60,
                                   timeout=600, repeat=repeat)
            if summary["errors"]:
                print(run.stderr, file=sys.stderr)
                return 1
            print(f"{plot}: {summary['requests']} requests, {summary['seconds']:.1f} s, "
                  f"p50 {summary['latency_p50_s']:.2f} s, p99 {summary['latency_p99_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
