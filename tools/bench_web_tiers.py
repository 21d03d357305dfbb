#!/usr/bin/env python3
"""What one web tier can take in, for `make bench`: uploads accepted and queued per second (from the
first request sent to the last request in the queue), and web-tier CPU per upload, with 1 and with 3
web tiers on one data folder (uploads split evenly over them). No workers run (scaler max 0), so
this is the front door alone. Sides alternate; medians of --rounds.

On this 2-core machine the web tiers, the load generator and SQLite share the same cores: N web
tiers cannot beat one here. What scales with N on AWS is the CPU per upload, one instance each."""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_stack import LOADGEN, Stack, cpu_times, scratch_dir  # noqa: E402

FRONT_ONLY = {"scaler__max": "0", "web__response_timeout_s": "30", "web__drain_timeout_s": "0"}


def queued(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM messages WHERE queue = 'requests'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def one_round(web_tiers: int, images: Path, uploads: int, concurrency: int, tmp: Path) -> dict:
    data = tmp / f"data-{web_tiers}-{time.monotonic_ns()}"
    stacks = [Stack(data, log_name=f"web{k}", **FRONT_ONLY).start() for k in range(web_tiers)]
    try:
        cpu_before = sum(sum(cpu_times(s.proc.pid)) for s in stacks)
        repeat = max(1, uploads // (100 * web_tiers))
        start = time.monotonic()
        clients = [
            subprocess.Popen([str(LOADGEN), "--url", s.url, "--concurrency", str(concurrency // web_tiers),
                              "--timeout", "60", "--repeat", str(repeat), "--json", str(images)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for s in stacks
        ]
        db = data / "queue.sqlite3"
        total = repeat * 100 * web_tiers
        deadline = start + 120
        while queued(db) < total:
            assert time.monotonic() < deadline, f"only {queued(db)} of {total} queued"
            time.sleep(0.01)
        elapsed = time.monotonic() - start
        cpu = sum(sum(cpu_times(s.proc.pid)) for s in stacks) - cpu_before
        for c in clients:
            c.kill()
            c.wait()
        return {"uploads_per_s": total / elapsed, "web_cpu_ms_per_upload": 1000 * cpu / total}
    finally:
        for s in stacks:
            if s.proc and s.proc.poll() is None:
                s.stop()


def photos(images: Path, width: int, height: int, out: Path) -> Path:
    """The 100 images scaled to width x height as JPEGs (quality 90): uploads of a typical photo size."""
    from PIL import Image

    out.mkdir()
    for f in sorted(images.glob("*.JPEG")):
        Image.open(f).convert("RGB").resize((width, height), Image.BILINEAR).save(out / f.name, "JPEG", quality=90)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path, help="a folder of 100 images")
    parser.add_argument("--uploads", type=int, default=600)
    # Every upload at once: with no workers a client waits for its answer, so a connection sends
    # one upload only.
    parser.add_argument("--concurrency", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="", help="WxH: upload the images scaled to this size")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[int, list[dict]] = {1: [], 3: []}
    with scratch_dir("imgrec-web-tiers-") as tmp:
        images = args.images
        if args.size:
            width, height = map(int, args.size.split("x"))
            images = photos(images, width, height, tmp / "photos")
        for _ in range(args.rounds):
            for n in (1, 3):
                results[n].append(one_round(n, images, args.uploads, args.concurrency, tmp))
    summary = {
        f"{n}_web_tiers": {key: round(statistics.median(r[key] for r in rounds), 2) for key in rounds[0]}
        for n, rounds in results.items()
    }
    summary["ratio_3_to_1"] = round(summary["3_web_tiers"]["uploads_per_s"] / summary["1_web_tiers"]["uploads_per_s"], 2)
    if args.json:
        print(json.dumps(summary))
        return
    what = f"{args.size} JPEGs" if args.size else "the test images"
    print(f"front door ({args.uploads} uploads of {what}, {args.concurrency} connections, no workers; "
          f"medians of {args.rounds}):")
    for n in (1, 3):
        s = summary[f"{n}_web_tiers"]
        print(f"  {n} web tier(s): {s['uploads_per_s']:7.1f} uploads/s accepted and queued, "
              f"{s['web_cpu_ms_per_upload']:.2f} ms web-tier CPU per upload")
    print(f"  3 / 1: {summary['ratio_3_to_1']:.2f} (same 2 cores: the front door is CPU-bound here)")


if __name__ == "__main__":
    main()
