#!/usr/bin/env python3
"""Reliability figures of the local service, for `make bench` (medians of --rounds):

1. peak web-tier RSS while 24 clients upload 40 MP images at once (PNG bomb, flat baseline JPEG,
   progressive JPEG; goal < 1 GiB);
2. peak worker RSS on a batch of 8 large photos (12 MP JPEGs), and on a native-size model (a
   ResNet-18 with generated weights) with the default pixel budget per model run vs none, and on
   one photo of `image_limits.max_native_pixels` (the largest such a model takes) with two
   inference threads, as on a c7i.large (goal: below the app tier's MemoryMax on EC2);
3. a busy worker SIGKILLed (or SIGSTOPped) mid-burst: time from the signal to the last of its
   requests answered by another;
4. SIGTERM to the web tier with 300 requests waiting: time to exit, and how many were answered;
5. growth of the web tier's and the worker's peak RSS over idle while 9 PNG metadata bombs (iCCP,
   zTXt, iTXt chunks of ~2 MiB that inflate to 2 GiB) are classified (goal < 100 MiB);
6. latency of normal uploads while 40 slow senders hold connections announcing 9 MiB bodies
   (goal: p99 < 0.5 s);
7. answers lost when a web tier is paused (SIGSTOP 8 s) past its name lease with 40 requests
   waiting and another takes its name (goal 0 of 100);
8. fleet changes made without the scaler lease by two scalers racing under injected renewal
   delays and failures (300 seeds; goal: never).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

import generated_models  # noqa: E402
from hostile import jpeg_bomb, peak_rss_mib, png_bomb, png_metadata_bomb, slow_sender, upload  # noqa: E402
from local_stack import ROOT, Stack, photos, scratch_dir, wait_until, worker_pids  # noqa: E402

FAST = {"scaler__scale_in_after_s": "2", "scaler__tick_ms": "200"}


def largest_native_size() -> tuple[int, int]:
    """The largest 4:3 image `image_limits.max_native_pixels` allows (config/default.toml)."""
    import tomllib
    most = tomllib.loads((ROOT / "config" / "default.toml").read_text())["image_limits"]["max_native_pixels"]
    width = int((most * 4 / 3) ** 0.5)
    return width, most // width


def app_tier_memory_max_mib() -> float:
    """The app tier's systemd `MemoryMax` on EC2 (packer/files), in MiB."""
    unit = (ROOT / "packer" / "files" / "imgrec-app-tier.service").read_text()
    value = next(line.split("=", 1)[1].strip() for line in unit.splitlines() if line.startswith("MemoryMax="))
    return float(value[:-1]) * {"K": 1 / 1024, "M": 1, "G": 1024}[value[-1]]


def web_tier_peak(kind: str, tmp: Path, i: int) -> float:
    width, height = 8192, 4882
    body = png_bomb(width, height) if kind == "png" else jpeg_bomb(width, height, kind == "progressive jpeg")
    suffix = ".png" if kind == "png" else ".jpg"
    with Stack(tmp / f"web-{kind.replace(' ', '-')}-{i}", **FAST, scaler__max="2") as stack:
        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda n: upload(stack.url, f"b{n}{suffix}", body, timeout=600)[0], range(24)))
        assert answers == [200] * 24, answers
        return peak_rss_mib(stack.proc.pid)


def worker_peak(images: list[bytes], tmp: Path, name: str, **settings: str) -> float:
    """One worker classifies `images` as one receive (uploaded while no worker runs)."""
    stack = Stack(tmp / name, **FAST, scaler__max="1", scaler__min="0", **settings)
    with stack:
        peaks: dict[int, float] = {}
        with ThreadPoolExecutor(len(images)) as pool:
            futures = [pool.submit(upload, stack.url, f"p{n}.jpg", body, timeout=600) for n, body in enumerate(images)]
            while not all(f.done() for f in futures):
                for pid in worker_pids(stack.data_dir):
                    try:
                        peaks[pid] = max(peaks.get(pid, 0), peak_rss_mib(pid))
                    except (OSError, AssertionError):
                        pass
                time.sleep(0.05)
            assert [f.result()[0] for f in futures] == [200] * len(images)
        return max(peaks.values(), default=0.0)


def dead_worker_recovery(files: list[Path], tmp: Path, i: int, fault: signal.Signals = signal.SIGKILL) -> float:
    """Seconds from `fault` to a busy worker to the last of 60 requests answered."""
    data = tmp / f"{fault.name}{i}"
    with Stack(data, **FAST, scaler__max="2") as stack:
        with ThreadPoolExecutor(60) as pool:
            futures = [pool.submit(upload, stack.url, f.name, f.read_bytes()) for f in files[:60]]
            victim = wait_until("a worker holds requests", stack.busy_worker, 30, every=0.02)
            killed = time.monotonic()
            os.kill(victim, fault)
            assert [f.result(timeout=120)[0] for f in futures] == [200] * len(futures)
            return time.monotonic() - killed


def shutdown_with_300_waiting(files: list[Path], tmp: Path, i: int) -> dict:
    stack = Stack(tmp / f"term{i}", **FAST, scaler__max="1").start()
    with ThreadPoolExecutor(300) as pool:
        futures = [pool.submit(upload, stack.url, f"r{n}_{files[n % len(files)].name}",
                               files[n % len(files)].read_bytes()) for n in range(300)]
        wait_until("250 are waiting", lambda: stack.status()["waiting_requests"] >= 250, 60, every=0.05)
        waiting = stack.status()["waiting_requests"]
        started = time.monotonic()
        stack.proc.send_signal(signal.SIGTERM)
        stack.proc.wait(60)
        took = time.monotonic() - started
        statuses = [f.result(timeout=30)[0] for f in futures]
    return {"waiting": waiting, "exit_s": took, "answered": statuses.count(200), "refused_503": statuses.count(503)}


def metadata_bomb_growth(files: list[Path], tmp: Path, i: int) -> tuple[float, float]:
    """MiB the web tier's and the worker's peak RSS grow over idle on 9 metadata bombs."""
    from PIL import Image

    buf = io.BytesIO()
    Image.open(files[0]).convert("RGB").save(buf, "PNG")
    plain = buf.getvalue()
    bombs = [png_metadata_bomb(plain, kind) for kind in ("iCCP", "zTXt", "iTXt")]
    data = tmp / f"meta{i}"
    with Stack(data, **{**FAST, "scaler__scale_in_after_s": "60"}, scaler__max="1") as stack:
        assert upload(stack.url, "plain.png", plain)[0] == 200
        (worker,) = worker_pids(data)
        web_idle, worker_idle = peak_rss_mib(stack.proc.pid), peak_rss_mib(worker)
        with ThreadPoolExecutor(9) as pool:
            answers = list(pool.map(lambda n: upload(stack.url, f"bomb{n}.png", bombs[n % 3])[0], range(9)))
        assert answers == [200] * 9, answers
        return peak_rss_mib(stack.proc.pid) - web_idle, peak_rss_mib(worker) - worker_idle


def latency_beside_slow_senders(files: list[Path], tmp: Path, i: int) -> list[float]:
    """Seconds each of 40 normal uploads took while 40 slow senders trickled 9 MiB bodies."""
    with Stack(tmp / f"slow{i}", **FAST) as stack:
        assert upload(stack.url, "warm.jpg", files[0].read_bytes())[0] == 200
        slow = [slow_sender(stack.url, 9 << 20, b"\xff" * 1024) for _ in range(40)]
        took = []
        try:
            for n in range(40):
                for s in slow:
                    s.sendall(b"\xff" * 64)
                started = time.monotonic()
                assert upload(stack.url, f"n{n}_{files[n].name}", files[n].read_bytes(), timeout=60)[0] == 200
                took.append(time.monotonic() - started)
        finally:
            for s in slow:
                s.close()
        return took


def answers_lost_in_a_pause(files: list[Path], tmp: Path, i: int) -> int:
    """Of 100 uploads (40 waiting at web tier A when it is SIGSTOPped for 8 s, 60 sent to A, B and
    C after it resumes, C having taken A's name meanwhile), how many got no label."""
    data = tmp / f"pause{i}"
    settings = {**FAST, "scaler__max": "4"}
    a = Stack(data, log_name="a", **settings).start()
    b, c = Stack(data, log_name="b", **settings), Stack(data, log_name="c", **settings)
    try:
        with ThreadPoolExecutor(100) as pool:
            def send(stack, n):
                return upload(stack.url, f"{n}_{files[n].name}", files[n].read_bytes(), timeout=120)[0]

            before = [pool.submit(send, a, n) for n in range(40)]
            wait_until("requests wait at A", lambda: a.status()["waiting_requests"] >= 10, 30, every=0.02)
            a.proc.send_signal(signal.SIGSTOP)
            # B and C may wait for A to resume if it was stopped holding the database's write lock.
            time.sleep(1)
            b.launch()
            time.sleep(7)
            c.launch()
            time.sleep(2)
            a.proc.send_signal(signal.SIGCONT)
            b.wait_ready()
            c.wait_ready()
            after = [pool.submit(send, s, n) for n, s in zip(range(40, 100), [a, b, c] * 20)]
            statuses = [f.result(timeout=180) for f in before + after]
    finally:
        a.proc.send_signal(signal.SIGCONT)
        for s in (a, b, c):
            if s.proc and s.proc.poll() is None:
                s.stop()
    return sum(1 for st in statuses if st != 200)


def lease_race() -> str:
    """The randomized race of two scalers (services/scaler/tests/lease_race.rs): its summary line."""
    out = subprocess.run(["cargo", "test", "--release", "-q", "-p", "scaler", "--test", "lease_race", "--",
                          "--nocapture"], cwd=ROOT, capture_output=True, text=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("lease race:")), None)
    assert out.returncode == 0 and line, out.stdout[-2000:] + out.stderr[-2000:]
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "bench" / "faults.json")
    parser.add_argument("--only", choices=["first-round", "second-round"],
                        help="only figures 1-4 (the first hardening round) or 5-8 (the second)")
    parser.add_argument("images", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("IMGREC__INFERENCE__MODEL_DIR", str(ROOT / "models" / "efficientnet-lite0"))
    files = sorted(args.images.glob("*.JPEG"))
    results: dict[str, list] = {}

    def record(key: str, value):
        results.setdefault(key, []).append(value)

    first, second = args.only != "second-round", args.only != "first-round"
    with scratch_dir("imgrec-faults-") as tmp:
        if first:
            big = photos(args.images, 8, 4000, 3000)
            resnet = generated_models.resnet18(tmp)
            medium = photos(args.images, 6, 1632, 1224)
            largest_size = largest_native_size()
            largest = photos(args.images, 1, *largest_size)
        for i in range(args.rounds):
            if first:
                for kind in ("png", "jpeg", "progressive jpeg"):
                    record(f"web_peak_mib/{kind}", web_tier_peak(kind, tmp, i))
                record("worker_peak_mib/efficientnet 8x12MP", worker_peak(big, tmp, f"w{i}"))
                for label, budget in (("default", {}), ("unbounded", {"app_tier__max_batch_pixels": "1000000000"})):
                    record(f"worker_peak_mib/resnet18 6x2MP {label}", worker_peak(
                        medium, tmp, f"r{i}-{label}", inference__model_dir=str(resnet), **budget))
                record(f"worker_peak_mib/resnet18 1x{largest_size[0] * largest_size[1] / 1e6:.0f}MP 2 threads", worker_peak(
                    largest, tmp, f"n{i}", inference__model_dir=str(resnet), inference__threads="2"))
                record("dead_worker_recovery_s", dead_worker_recovery(files, tmp, i))
                record("stopped_worker_recovery_s", dead_worker_recovery(files, tmp, i, signal.SIGSTOP))
                record("shutdown_300", shutdown_with_300_waiting(files, tmp, i))
            if second:
                web_growth, worker_growth = metadata_bomb_growth(files, tmp, i)
                record("metadata_bomb_growth_mib/web tier", web_growth)
                record("metadata_bomb_growth_mib/worker", worker_growth)
                record("slow_senders_latency_s", latency_beside_slow_senders(files, tmp, i))
                record("paused_web_tier_answers_lost", answers_lost_in_a_pause(files, tmp, i))
            print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)

    print(f"\nreliability figures, median of {args.rounds} rounds\n")
    if first:
        print_first_round(results)
    if second:
        print_second_round(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


def print_first_round(results: dict):
    for kind in ("png", "jpeg", "progressive jpeg"):
        print(f"web tier peak RSS, 24 x 40 MP {kind:17s} {statistics.median(results[f'web_peak_mib/{kind}']):8.0f} MiB  (goal < 1024)")
    for key in [k for k in results if k.startswith("worker_peak_mib/")]:
        goal = f"  (goal < {app_tier_memory_max_mib():.0f}, the app tier's MemoryMax)" if "threads" in key else ""
        print(f"worker peak RSS, {key.split('/', 1)[1]:31s} {statistics.median(results[key]):8.0f} MiB{goal}")
    print(f"SIGKILLed worker -> its requests answered       {statistics.median(results['dead_worker_recovery_s']):8.2f} s")
    print(f"SIGSTOPped worker -> its requests answered      {statistics.median(results['stopped_worker_recovery_s']):8.2f} s")
    shut = results["shutdown_300"]
    print(f"SIGTERM with {statistics.median(s['waiting'] for s in shut):.0f} waiting -> exit"
          f"                 {statistics.median(s['exit_s'] for s in shut):8.2f} s"
          f"  (answered {statistics.median(s['answered'] for s in shut):.0f}/300, 503 {statistics.median(s['refused_503'] for s in shut):.0f})")


def print_second_round(results: dict):
    for who in ("web tier", "worker"):
        print(f"{who} RSS growth, 9 x 2 GiB metadata bombs     {statistics.median(results[f'metadata_bomb_growth_mib/{who}']):8.1f} MiB  (goal < 100)")
    lat = [sorted(r) for r in results["slow_senders_latency_s"]]
    p50 = statistics.median(r[len(r) // 2] for r in lat)
    p99 = statistics.median(r[min(len(r) - 1, int(len(r) * 0.99))] for r in lat)
    print(f"upload beside 40 slow senders, p50 / p99      {p50:8.3f} / {p99:.3f} s  (goal p99 < 0.5)")
    print(f"answers lost, web tier paused past its lease  {statistics.median(results['paused_web_tier_answers_lost']):8.0f} of 100  (goal 0)")
    race = lease_race()
    results["lease_race"] = race
    print(f"scalers acting without the lease: {race.split(': ', 1)[1]}  (goal: none)")


if __name__ == "__main__":
    sys.exit(main())
