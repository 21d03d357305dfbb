#!/usr/bin/env python3
"""The local service under a burst of images, for `make bench`:

1. warm pool of W workers (W = cores): 100 images over HTTP vs. the same W workers' inference-only
   rate (W `app-tier classify` processes), alternated, medians and the ratio (goal >= 0.9);
2. cold burst from 0 instances: average and p99 latency (goal: average < 0.6 s);
3. time from the last response to the pool back at min (goal < 2 s with a short window);
4. a cold burst of 1,000 requests: throughput / inference-only (goal >= 0.85);
5. peak RSS of the web tier and of one worker (goals < 50 MiB, < 150 MiB);
6. CPU per image of each process in the warm burst (from /proc, so without a profiler's cost);
7. the warm burst again with half the cores for the workers and the other half for the web tier and
   the load generator (as on AWS, where those are other machines), against inference only on the
   workers' cores.

All data folders stay until the end: on a journal-less ext4 (as on these CI machines) creating files
soon after deleting many costs the kernel a scan per new file, so deleting one round's folder would
slow the next round's uploads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from local_stack import (ROOT, Stack, StatusWatcher, cpu_times, loadgen, scratch_dir, thread_cpu_s, wait_until,
                         worker_pids)

APP_TIER = ROOT / "target" / "release" / "app-tier"


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def split_cores() -> tuple[str, str, int]:
    """The workers' cores, the web tier's and load generator's, and how many workers."""
    cores = sorted(os.sched_getaffinity(0))
    half = max(len(cores) // 2, 1)
    return ",".join(map(str, cores[:half])), ",".join(map(str, cores[half:] or cores)), half


def pin(pid: int, cpus: str) -> None:
    """Every thread of `pid` (and what they start later) on `cpus`."""
    subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, stdout=subprocess.DEVNULL)


def inference_only(model: Path, files: list[Path], workers: int, prefix: tuple[str, ...] = ()) -> float:
    """Images per second of `workers` parallel `app-tier classify` processes, model load excluded
    (each process is timed from its own start; load is measured once and subtracted)."""
    shards = [files[i::workers] for i in range(workers)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen([*prefix, str(APP_TIER), "classify", "--model", str(model), *map(str, shard)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for shard in shards
    ]
    for p in procs:
        p.wait()
    elapsed = time.perf_counter() - start
    # The same processes on a single image each: their start-up, model load and one image.
    start = time.perf_counter()
    procs = [subprocess.Popen([*prefix, str(APP_TIER), "classify", "--model", str(model), str(files[0])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
    for p in procs:
        p.wait()
    startup = time.perf_counter() - start
    # What is left of the first run is the time of all images but the one each process also
    # classified in the second.
    return (len(files) - workers) / max(elapsed - startup, 1e-3)


def warm_burst(files: list[Path], workers: int, tmp: Path, i: int) -> tuple[float, dict]:
    """Images per second, and CPU ms per image of the web tier, the workers and the load generator."""
    with Stack(tmp / f"warm{i}", scaler__min=str(workers), scaler__max=str(workers), scaler__tick_ms="100") as stack:
        wait_until("the warm pool is running", lambda: sum(
            1 for s in stack.status()["instances"] if s["state"] == "running") == workers, 30)
        pids = {"web tier": [stack.proc.pid], "workers": worker_pids(stack.data_dir)}
        before = {side: [cpu_times(p) for p in ps] for side, ps in pids.items()}
        model_before = sum(thread_cpu_s(p, "inference") for p in pids["workers"])
        mine = os.times()
        summary, run = loadgen(stack.url, files)
        assert summary["errors"] == 0, run.stdout
        spent = {side: [cpu_times(p) for p in ps] for side, ps in pids.items()}
        n = summary["requests"]
        cpu = {"workers' inference thread": (sum(thread_cpu_s(p, "inference") for p in pids["workers"])
                                             - model_before) * 1000 / n}
        for side in pids:
            user = sum(a[0] - b[0] for a, b in zip(spent[side], before[side]))
            system = sum(a[1] - b[1] for a, b in zip(spent[side], before[side]))
            cpu[f"{side} user"], cpu[f"{side} system"] = user * 1000 / n, system * 1000 / n
        after = os.times()
        cpu["load generator"] = ((after.children_user - mine.children_user)
                                 + (after.children_system - mine.children_system)) * 1000 / n
        return summary["throughput_per_s"], cpu


def warm_burst_own_cores(files: list[Path], tmp: Path, i, repeat: int = 1) -> float:
    """The warm burst (the images `repeat` times over) with the workers on their own cores."""
    workers_cpus, front_cpus, workers = split_cores()
    with Stack(tmp / f"own{i}", scaler__min=str(workers), scaler__max=str(workers), scaler__tick_ms="100") as stack:
        wait_until("the warm pool is running", lambda: sum(
            1 for s in stack.status()["instances"] if s["state"] == "running") == workers, 30)
        pin(stack.proc.pid, front_cpus)
        for pid in worker_pids(stack.data_dir):
            pin(pid, workers_cpus)
        summary, run = loadgen(stack.url, files, prefix=("taskset", "-c", front_cpus), repeat=repeat)
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


def burst_1000(files: list[Path], tmp: Path, i: int) -> dict:
    """1,000 requests (the images 10 times over) from 0 instances, default scaling."""
    with Stack(tmp / f"big{i}") as stack:
        peaks: dict[int, int] = {}
        summary, run = loadgen(stack.url, files, repeat=10)
        assert summary["errors"] == 0, run.stdout
        for pid in worker_pids(stack.data_dir):
            try:
                peaks[pid] = peak_rss_kib(pid)
            except OSError:
                pass
        return {"throughput": summary["throughput_per_s"], "requests": summary["requests"],
                "web_tier_peak_rss_mib": peak_rss_kib(stack.proc.pid) / 1024,
                "worker_peak_rss_mib": max(peaks.values(), default=0) / 1024}


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
    rounds = {"http": [], "cpu": [], "inference": [], "cold": [], "big": [], "http_own": [], "inference_own": [],
              "big_own": []}
    workers_cpus, front_cpus, own_workers = split_cores()
    # Inodes other runs freed are skipped one by one on ext4 without a journal (see `scratch_dir`):
    # written back, they count for a minute instead of six.
    os.sync()
    time.sleep(5)
    with scratch_dir("imgrec-bench-") as tmp:
        for i in range(args.rounds):
            pair = [("http", lambda: warm_burst(files, args.workers, tmp, i)),
                    ("inference", lambda: inference_only(args.model, files, args.workers))]
            for name, run in (pair if i % 2 == 0 else pair[::-1]):
                result = run()
                if name == "http":
                    result, cpu = result
                    rounds["cpu"].append(cpu)
                rounds[name].append(result)
            own = [("http_own", lambda: warm_burst_own_cores(files, tmp, i)),
                   ("inference_own", lambda: inference_only(args.model, files, own_workers,
                                                            ("taskset", "-c", workers_cpus)))]
            for name, run in (own if i % 2 == 0 else own[::-1]):
                rounds[name].append(run())
            rounds["cold"].append(cold_burst(files, tmp, i, args.window))
            rounds["big"].append(burst_1000(files, tmp, i))
            rounds["big_own"].append(warm_burst_own_cores(files, tmp, f"big{i}", repeat=10))
            print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
    http, inference = statistics.median(rounds["http"]), statistics.median(rounds["inference"])
    cold = {k: statistics.median(r[k] for r in rounds["cold"]) for k in rounds["cold"][0]}
    big = {k: statistics.median(r[k] for r in rounds["big"]) for k in rounds["big"][0]}
    cpu = {k: statistics.median(r[k] for r in rounds["cpu"]) for k in rounds["cpu"][0]}
    print(f"\nlocal service, {len(files)} images, 100 connections, {args.workers} workers, median of {args.rounds} rounds\n")
    print(f"warm burst over HTTP             {http:8.1f} images/s")
    print(f"same workers, inference only     {inference:8.1f} images/s")
    print(f"HTTP / inference-only            {http / inference:8.2f}    (goal >= 0.9)")
    http_own, inference_own = statistics.median(rounds["http_own"]), statistics.median(rounds["inference_own"])
    print(f"\nthe same with {own_workers} worker(s) on cores {workers_cpus}, the web tier and load generator on {front_cpus}:")
    print(f"warm burst over HTTP             {http_own:8.1f} images/s")
    print(f"inference only on {workers_cpus:14s} {inference_own:8.1f} images/s")
    print(f"HTTP / inference-only            {http_own / inference_own:8.2f}    (goal >= 0.9)")
    big_own = statistics.median(rounds["big_own"])
    print(f"1,000-request burst, warm        {big_own:8.1f} images/s")
    print(f"1,000 burst / inference-only     {big_own / inference_own:8.2f}    (goal >= 0.85)\n")
    print(f"cold burst from 0: mean latency  {cold['latency_mean_s']:8.3f} s  (goal < 0.6 s)")
    print(f"cold burst from 0: p99 latency   {cold['latency_p99_s']:8.3f} s")
    print(f"cold burst: peak instances       {cold['peak_instances']:8.0f}")
    print(f"last response -> back at min     {cold['back_at_min_s']:8.3f} s  (window {args.window} s; goal < 2 s)")
    print("1,000-request burst from 0 (all on the same cores, default scaling)")
    print(f"                                 {big['throughput']:8.1f} images/s")
    print(f"1,000 burst / inference-only     {big['throughput'] / inference:8.2f}    (goal >= 0.85)")
    web_rss = max(cold["web_tier_peak_rss_mib"], big["web_tier_peak_rss_mib"])
    worker_rss = max(cold["worker_peak_rss_mib"], big["worker_peak_rss_mib"])
    print(f"peak RSS web tier                {web_rss:8.1f} MiB  (goal < 50 MiB; 1,000 burst and cold burst)")
    print(f"peak RSS one worker              {worker_rss:8.1f} MiB  (goal < 150 MiB)")
    print("\nCPU ms per image in the warm burst (user + system; the two workers together)")
    for side in ("web tier", "workers"):
        user, system = cpu[f"{side} user"], cpu[f"{side} system"]
        print(f"  {side:12s} {user + system:6.2f}  (user {user:.2f}, system {system:.2f})")
    model = cpu["workers' inference thread"]
    rest = cpu["workers user"] + cpu["workers system"] - model
    print(f"    of which the inference thread {model:.2f} (decode, preprocess, model), the rest {rest:.2f} "
          "(queue, files, async runtime)")
    print(f"  {'loadgen':12s} {cpu['load generator']:6.2f}")
    print(f"  {'inference-only':12s} {args.workers * 1000 / inference:6.2f}  (CPU of {args.workers} busy processes)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": rounds, "median": {"http": http, "inference": inference, **cold,
                                                                 "burst_1000": big, "cpu_ms_per_image": cpu,
                                                                 "http_own_cores": http_own,
                                                                 "inference_own_cores": inference_own,
                                                                 "burst_1000_own_cores": big_own}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
