#!/usr/bin/env python3
"""The local service under a burst of images, for `make bench`:

1. warm pool of W workers (W = cores): 100 images over HTTP vs. the same W workers' inference-only
   rate (W `app-tier classify` processes), alternated, medians and the ratio (goal >= 0.9);
2. cold burst from 0 instances: average and p99 latency (goal: average < 0.6 s);
3. time from the last response to the pool back at min (goal < 2 s with a short window);
4. peak RSS of the web tier and of one worker.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from local_stack import ROOT, Stack, StatusWatcher, loadgen, wait_until, worker_pids

APP_TIER = ROOT / "target" / "release" / "app-tier"


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def inference_only(model: Path, files: list[Path], workers: int) -> float:
    """Images per second of `workers` parallel `app-tier classify` processes, model load excluded
    (each process is timed from its own start; load is measured once and subtracted)."""
    shards = [files[i::workers] for i in range(workers)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen([str(APP_TIER), "classify", "--model", str(model), *map(str, shard)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for shard in shards
    ]
    for p in procs:
        p.wait()
    elapsed = time.perf_counter() - start
    # The same processes on a single image each: their start-up and model load.
    start = time.perf_counter()
    procs = [subprocess.Popen([str(APP_TIER), "classify", "--model", str(model), str(files[0])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
    for p in procs:
        p.wait()
    startup = time.perf_counter() - start
    return len(files) / max(elapsed - startup, 1e-3)


def warm_burst(files: list[Path], workers: int, tmp: Path, i: int) -> float:
    with Stack(tmp / f"warm{i}", scaler__min=str(workers), scaler__max=str(workers), scaler__tick_ms="100") as stack:
        wait_until("the warm pool is running", lambda: sum(
            1 for s in stack.status()["instances"] if s["state"] == "running") == workers, 30)
        summary, run = loadgen(stack.url, files)
        assert summary["errors"] == 0, run.stdout
        return summary["throughput_per_s"]


def cold_burst(files: list[Path], tmp: Path, i: int, window: float) -> dict:
    stack = Stack(tmp / f"cold{i}", scaler__scale_in_after_s=str(window), scaler__tick_ms="100")
    with stack:
        watcher = StatusWatcher(stack, every=0.05)
        watcher.start()
        peaks: dict[int, int] = {}

        def sample_rss():
            for pid in worker_pids(stack.data_dir):
                try:
                    peaks[pid] = max(peaks.get(pid, 0), peak_rss_kib(pid))
                except OSError:
                    pass

        summary, run = loadgen(stack.url, files)
        done = time.monotonic()
        assert summary["errors"] == 0, run.stdout
        sample_rss()
        web_rss = peak_rss_kib(stack.proc.pid)
        wait_until("back at min", lambda: stack.status()["instances"] == [], 30, every=0.02)
        back_at_min = time.monotonic() - done
        seen = watcher.stop()
    return {
        "latency_mean_s": summary["latency_mean_s"],
        "latency_p99_s": summary["latency_p99_s"],
        "seconds": summary["seconds"],
        "back_at_min_s": back_at_min,
        "peak_instances": max(len(s["instances"]) for s in seen),
        "web_tier_peak_rss_mib": web_rss / 1024,
        "worker_peak_rss_mib": max(peaks.values(), default=0) / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "efficientnet-lite0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--window", type=float, default=1.0, help="scale-in window for the cold burst, seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "bench" / "service.json")
    parser.add_argument("images", type=Path)
    args = parser.parse_args()
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    os.environ.setdefault("IMGREC__INFERENCE__MODEL_DIR", str(args.model))
    rounds = {"http": [], "inference": [], "cold": []}
    with tempfile.TemporaryDirectory(prefix="imgrec-bench-") as tmp:
        for i in range(args.rounds):
            pair = [("http", lambda: warm_burst(files, args.workers, Path(tmp), i)),
                    ("inference", lambda: inference_only(args.model, files, args.workers))]
            for name, run in (pair if i % 2 == 0 else pair[::-1]):
                rounds[name].append(run())
            rounds["cold"].append(cold_burst(files, Path(tmp), i, args.window))
            print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
    http, inference = statistics.median(rounds["http"]), statistics.median(rounds["inference"])
    cold = {k: statistics.median(r[k] for r in rounds["cold"]) for k in rounds["cold"][0]}
    print(f"\nlocal service, {len(files)} images, 100 connections, {args.workers} workers, median of {args.rounds} rounds\n")
    print(f"warm burst over HTTP             {http:8.1f} images/s")
    print(f"same workers, inference only     {inference:8.1f} images/s")
    print(f"HTTP / inference-only            {http / inference:8.2f}    (goal >= 0.9)")
    print(f"cold burst from 0: mean latency  {cold['latency_mean_s']:8.3f} s  (goal < 0.6 s)")
    print(f"cold burst from 0: p99 latency   {cold['latency_p99_s']:8.3f} s")
    print(f"cold burst: peak instances       {cold['peak_instances']:8.0f}")
    print(f"last response -> back at min     {cold['back_at_min_s']:8.3f} s  (window {args.window} s; goal < 2 s)")
    print(f"peak RSS web tier                {cold['web_tier_peak_rss_mib']:8.1f} MiB")
    print(f"peak RSS one worker              {cold['worker_peak_rss_mib']:8.1f} MiB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": rounds, "median": {"http": http, "inference": inference, **cold}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
