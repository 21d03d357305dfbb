#!/usr/bin/env python3
"""Where the CPU goes in a warm burst, for `make bench`: the local stack with a warm pool (as many
workers as cores) takes 300 uploads while `perf record` samples the web tier and the workers with
DWARF call stacks; every sample is put in the stage its call stack is in, and the table gives CPU
milliseconds per image by stage. CPU only: time blocked is not sampled, so a separate burst under
`strace` gives the fsync calls per image and the wall time spent in them."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from local_stack import Stack, loadgen, scratch_dir, wait_until, worker_pids

FREQUENCY = 999

# (stage, pattern on any frame of the call stack), first match wins: the outer stages (a decode
# inside validation) come before the generic ones (SQLite, the runtime).
WEB_STAGES = [
    ("validate (decode the upload)", r"upload::validate|imgrec_classifier::decode|mozjpeg|jpeg_|png::"),
    ("HTTP + multipart", r"upload::read|multer::|hyper::|warp::|web_tier::server"),
    ("store put (file, fsync, rename)", r"fs_store|FsObjectStore"),
    ("queue send (SQLite)", r"sqlite_queue|SqliteQueue|sqlite3"),
    ("scaler", r"scaler::|process_fleet|ProcessFleet"),
    ("response dispatch", r"dispatch::"),
]
WORKER_STAGES = [
    ("inference (ONNX Runtime)", r"libonnxruntime|Classifier::logits"),
    ("decode + preprocess", r"Preprocessor|imgrec_classifier::decode|mozjpeg|jpeg_|png::|resize"),
    ("fetch + store (files)", r"fs_store|FsObjectStore"),
    ("queue (SQLite)", r"sqlite_queue|SqliteQueue|sqlite3"),
    ("heartbeat + status", r"heartbeat|SqliteInstanceStatus"),
]
OTHER = "other (async runtime, allocator, kernel)"


def samples(script: str):
    """(pid, frames) per sample of `perf script -F pid,tid,event,ip,sym,dso` output."""
    for block in script.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if lines and re.match(r"\s*\d+/\d+ ", lines[0]):
            yield int(lines[0].split("/", 1)[0]), lines[1:]


def stage_of(frames: list[str], stages) -> str:
    text = "\n".join(frames)
    for stage, pattern in stages:
        if re.search(pattern, text):
            return stage
    return OTHER


def breakdown(script: str, web: set[int], workers: set[int]) -> dict[str, Counter]:
    out = {"web tier": Counter(), "workers": Counter()}
    for pid, frames in samples(script):
        if pid in web:
            out["web tier"][stage_of(frames, WEB_STAGES)] += 1
        elif pid in workers:
            out["workers"][stage_of(frames, WORKER_STAGES)] += 1
    return out


def profile_once(perf: str, images: list[Path], workers: int, repeat: int, tmp: Path) -> tuple[dict, dict[str, Counter]]:
    # Each run's data stays until all are done: see bench_service.py on deleting files.
    tmp.mkdir()
    data = tmp / "data"
    settings = {"scaler__min": str(workers), "scaler__max": str(workers)}
    with Stack(data, **settings) as stack:
        wait_until("the pool is warm", lambda: len(stack.status()["instances"]) == workers
                   and all(i["state"] == "running" for i in stack.status()["instances"]), 30)
        loadgen(stack.url, images[:10], concurrency=10)  # first-request costs out of the way
        web, pool = {stack.proc.pid}, set(worker_pids(data))
        record = tmp / "perf.data"
        pids = ",".join(str(p) for p in [*web, *pool])
        recorder = subprocess.Popen([perf, "record", "-q", "-F", str(FREQUENCY), "--call-graph", "dwarf,8192",
                                     "-p", pids, "-o", str(record)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        summary, run = loadgen(stack.url, images, concurrency=100, repeat=repeat)
        recorder.send_signal(2)
        recorder.wait(30)
    script = subprocess.run([perf, "script", "-F", "pid,tid,event,ip,sym,dso", "-i", str(record)],
                            capture_output=True, text=True, timeout=600).stdout
    if summary["errors"]:
        raise SystemExit(f"the burst had errors: {summary['error_samples']}")
    return summary, breakdown(script, web, pool)


def fsync_times(strace_output: str) -> list[float]:
    """Seconds of each completed fsync/fdatasync in `strace -T` output."""
    return [float(t) for t in re.findall(r"\b(?:fsync|fdatasync)\b.*<([0-9.]+)>\s*$", strace_output, re.M)]


def fsync_waits(strace: str, images: list[Path], workers: int, repeat: int, tmp: Path) -> dict[str, tuple]:
    """Per side: fsync calls per image and wall ms per image spent in them (summed over threads)."""
    tmp.mkdir()
    with Stack(tmp / "data", scaler__min=str(workers), scaler__max=str(workers)) as stack:
        wait_until("the pool is warm", lambda: len(stack.status()["instances"]) == workers
                   and all(i["state"] == "running" for i in stack.status()["instances"]), 30)
        loadgen(stack.url, images[:10], concurrency=10)
        sides = {"web tier": [stack.proc.pid], "workers": worker_pids(tmp / "data")}
        tracers = [(side, out, subprocess.Popen([strace, "-f", "-qq", "-T", "-e", "trace=fsync,fdatasync",
                                                 "-p", str(pid), "-o", str(out)]))
                   for side, pids in sides.items() for pid in pids for out in [tmp / f"strace-{pid}.txt"]]
        time.sleep(1)
        summary, _ = loadgen(stack.url, images, concurrency=100, repeat=repeat)
        for _, _, tracer in tracers:
            tracer.send_signal(2)
        for _, _, tracer in tracers:
            tracer.wait(30)
    n = summary["requests"]
    out: dict[str, tuple] = {}
    for side in sides:
        times = [t for s, path, _ in tracers if s == side for t in fsync_times(path.read_text())]
        out[side] = (len(times) / n, sum(times) * 1000 / n, statistics.median(times) * 1000 if times else 0.0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("images", type=Path)
    parser.add_argument("--repeat", type=int, default=3, help="each image this many times per burst")
    parser.add_argument("--runs", type=int, default=3, help="bursts; the table gives medians")
    args = parser.parse_args()
    perf = shutil.which("perf")
    if perf is None:
        print("profile: NOT RUN (no `perf`: apt-get install linux-perf)")
        return 0
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    workers = os.cpu_count() or 2
    per_run = []  # per run: {side: {stage: ms per image}}, and the run's rate
    rates = []
    os.sync()
    time.sleep(5)
    strace = shutil.which("strace")
    with scratch_dir("imgrec-profile-") as tmp:
        runs = [profile_once(perf, images, workers, args.repeat, tmp / f"run{i}") for i in range(args.runs)]
        waits = fsync_waits(strace, images, workers, args.repeat, tmp / "fsync") if strace else None
    for summary, table in runs:
        n = summary["requests"]
        rates.append(summary["throughput_per_s"])
        per_run.append({side: {stage: count / FREQUENCY * 1000 / n for stage, count in counts.items()}
                        for side, counts in table.items()})
    print(f"CPU per image by stage (ms, median of {args.runs} warm bursts of {len(images) * args.repeat} "
          f"uploads over 100 connections, {workers} workers, {statistics.median(rates):.0f} images/s; "
          f"perf at {FREQUENCY} Hz with DWARF stacks, which itself costs CPU):")
    for side in ("web tier", "workers"):
        stages = sorted({s for run in per_run for s in run[side]})
        medians = {s: statistics.median(run[side].get(s, 0.0) for run in per_run) for s in stages}
        total = statistics.median(sum(run[side].values()) for run in per_run)
        print(f"  {side}: {total:.2f} ms per image")
        for stage, ms in sorted(medians.items(), key=lambda kv: -kv[1]):
            print(f"    {stage:42s} {ms:6.2f}  {ms / max(total, 1e-9):5.1%}")
    if waits is None:
        print("fsync waits: NOT RUN (no `strace`: apt-get install strace)")
        return 0
    print("fsync waits (one burst under strace; wall time, summed over the threads waiting at once):")
    for side, (calls, ms, median) in waits.items():
        print(f"  {side:9s} {calls:5.2f} fsyncs per image, {ms:5.2f} ms per image in them (median call {median:.2f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
