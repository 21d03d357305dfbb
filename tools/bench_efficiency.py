#!/usr/bin/env python3
"""CPU efficiency of the local stack, for `make bench`: CPU per image of inference alone over the
whole stack's CPU per image (web tier and every worker, the load generator excluded) in a warm
300-upload burst under the default scaling (up to 20 workers on this machine's cores). Goal: >= 0.9.
Warm: the stack takes bursts until two in a row end with the workers they began with (the pool at
the size the scaler keeps for this load), then the measured one; a worker's start-up (its model
load) is printed on its own, as what each scale-out costs once.

Inference alone is `app-tier classify --threads 1`, start-up removed, run as the stack runs it: one
process per core at once (a burst that fills every core with inference). One process alone on an
otherwise idle machine is printed too: on a machine whose cores share a physical core, caches or a
power budget, it is faster per image than any full machine can be. Where the stack keeps fewer
cores on inference than the machine has (a burst of 300 does not fill 16 cores: on a 16-core host
the stack ran inference on ~7 and 16 inference processes at once ran 1.3-1.5x slower per image
than one), one process per core is a slower baseline than the stack's own: each round then also
measures inference alone with as many processes as the stack kept busy, and the stack is held
against that too.

Each round measures the stack twice, alternating: with the fleet's inference slots (a worker holds
one of one per core from its receive to the end of its model runs, `fleet.inference_slots`, the
default) and without (`= 0`, every worker runs at once); with `--before DIR`, a third time with
another build's binaries (DIR holds its web-tier and app-tier). Inference alone is measured between
every two stacks, and each stack is held against the mean of the two beside it, as the host's
speed drifts within a round too. Medians of the rounds' ratios, and their range.

And one app-tier instance as on EC2, where an instance runs its worker and nothing else: the pool
held at one worker, every thread of its process on the last core, the web tier and the load
generator on the others; its worker's CPU per image against one inference process alone.

And camera photos (12 MP JPEGs with a photo's detail, one baseline scan): the test images are
~2 KiB, where decoding is a small part of a worker's work; in a photo it is most of it, and the
web tier's check of each upload decodes too. One instance as above, the web tier's and its
worker's CPU per photo together against one inference process alone on the same photos.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
from pathlib import Path

from local_stack import (CLK_TCK, ROOT, Stack, cpu_s, loadgen, photos, scratch_dir, thread_cpu_s, wait_until,
                         worker_pids)

APP_TIER = ROOT / "target" / "release" / "app-tier"


def children_cpu(cmds: list[list[str]]) -> float:
    """User + system CPU seconds of running `cmds` at once, to the end of the last (to the
    microsecond: `getrusage`, where `os.times` counts 10 ms ticks)."""
    def spent() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    before = spent()
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for cmd in cmds]
    for proc, cmd in zip(procs, cmds):
        if proc.wait() != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
    return spent() - before


def inference_ms(model: Path, files: list[Path], processes: int = 1) -> tuple[float, float]:
    """CPU ms per image of `processes` single-threaded classify processes at once, their start-up
    removed (each over the images four times less each over them once, per image of the
    difference); and that start-up, per process: what a worker's start costs before its first
    image (ONNX Runtime and the model loaded)."""
    base = [str(APP_TIER), "classify", "--threads", "1", "--model", str(model)]
    once = children_cpu([base + list(map(str, files))] * processes)
    four = children_cpu([base + list(map(str, files * 4))] * processes)
    per_image = (four - once) / (3 * len(files) * processes)
    return per_image * 1000, (once / processes - per_image * len(files)) * 1000


def process_tree_cpu(root: int, data_dir: Path) -> tuple[float, float, float]:
    """CPU seconds of the web tier; of the workers (reaped ones, in the web tier's cutime and
    cstime, and live ones); and of the workers' inference threads (live ones). Exact but for the
    reaped workers (10 ms ticks; a warm burst reaps none)."""
    fields = Path(f"/proc/{root}/stat").read_text().rsplit(")", 1)[1].split()
    web = cpu_s(root)
    workers = sum(int(f) for f in fields[13:15]) / CLK_TCK  # cutime, cstime
    inference = 0.0
    for pid in worker_pids(data_dir):
        try:
            workers += cpu_s(pid)
            inference += thread_cpu_s(pid, "inference")
        except OSError:
            pass  # exited between the listing and the read: counted in cutime next time
    return web, workers, inference


# Warm-up bursts at most before the measured one: the pool reaches its size for this load in two
# to four (the first starts from none, and the scaler sizes later ones by the completion rate it
# sees, which grows as the pool warms: one burst that starts no worker does not mean the next
# will not).
WARM_UPS = 6
# Bursts in a row that start no worker, for the pool to count as warm.
STEADY = 2


def burst_ms(stack: Stack, files: list[Path], client: tuple[str, ...] = (), after_warm_up=lambda: None) -> dict:
    """CPU ms per image of the web tier, of the workers and of their inference threads over a warm
    300-upload burst: after warm-up bursts until `STEADY` in a row end with the workers they began
    with (the pool at its size for this load, every model loaded). A worker started during the
    measured burst would add its start-up, a model load of ~0.1 s of CPU, to the serving cost
    (~0.4 ms per image); `workers_started` says if one was all the same."""
    pool, steady = set(worker_pids(stack.data_dir)), 0
    for _ in range(WARM_UPS):
        summary, run = loadgen(stack.url, files, repeat=3, prefix=client)
        assert summary["errors"] == 0, run.stdout
        wait_until("the warm-up answered", lambda: stack.status()["queue"]["pending"] == 0, 30)
        now = set(worker_pids(stack.data_dir))
        steady = steady + 1 if now == pool else 0
        pool = now
        if steady == STEADY:
            break
    after_warm_up()
    before = process_tree_cpu(stack.proc.pid, stack.data_dir)
    summary, run = loadgen(stack.url, files, repeat=3, prefix=client)
    after = process_tree_cpu(stack.proc.pid, stack.data_dir)
    assert summary["errors"] == 0, run.stdout
    n = summary["requests"]
    web, workers, inference = ((a - b) * 1000 / n for a, b in zip(after, before))
    return {"web_tier_ms": web, "workers_ms": workers, "inference_thread_ms": inference,
            "throughput_per_s": summary["throughput_per_s"],
            "workers_started": len(set(worker_pids(stack.data_dir)) - pool)}


def stack_ms(files: list[Path], tmp: Path, name: str, slots: str | None, build: Path | None = None) -> dict:
    """CPU ms per image of the whole stack (this checkout's, or the one in `build`) over a warm
    300-upload burst."""
    settings = {"scaler__tick_ms": "100", "scaler__scale_in_after_s": "30"}
    if slots is not None:
        settings["fleet__inference_slots"] = slots
    with Stack(tmp / name, web_tier=build / "web-tier" if build else None, **settings) as stack:
        run = burst_ms(stack, files)
        return {**run, "cpu_ms_per_image": run["web_tier_ms"] + run["workers_ms"],
                "workers": len(worker_pids(stack.data_dir))}


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` on `cpus` (threads started later inherit it from their creator)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except OSError:
            pass  # a thread that just ended


def instance_ms(files: list[Path], tmp: Path, name: str) -> dict:
    """CPU ms per image of one worker alone on the last core (an EC2 instance's share of the
    stack), the web tier and the load generator on the other cores, over a warm 300-upload burst."""
    cores = os.cpu_count() or 1
    others, last = set(range(cores - 1)), {cores - 1}
    client = ("taskset", "-c", ",".join(map(str, sorted(others))))
    with Stack(tmp / name, scaler__min="1", scaler__max="1", scaler__tick_ms="100") as stack:
        wait_until("the instance is running",
                   lambda: any(i["state"] == "running" for i in stack.status()["instances"]), 30)
        [worker] = worker_pids(stack.data_dir)

        def place() -> None:  # again after the warm-up, for the threads it started
            pin(stack.proc.pid, others)
            pin(worker, last)

        place()
        run = burst_ms(stack, files, client, after_warm_up=place)
        assert worker_pids(stack.data_dir) == [worker], "the instance was replaced during the burst"
        return run


# Photos per burst: 12 MP each, ~0.12 s of a worker's CPU.
PHOTOS = 12


def busy_cores(run: dict) -> float:
    """The cores a burst kept on inference: its inference threads' CPU per second of the burst."""
    return run["inference_thread_ms"] * run["throughput_per_s"] / 1000


def own_concurrency(busy: float, cores: int) -> int | None:
    """How many inference processes at once match a stack that kept `busy` cores on inference;
    `None` where that is every core (one process per core is then its baseline already)."""
    at = max(1, round(busy))
    return at if at < cores else None


def started(run: dict) -> str:
    """A note when the pool grew during the measured burst (despite the warm-up)."""
    return f", {run['workers_started']} of them started in the burst" if run["workers_started"] else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "efficientnet-lite0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "bench" / "efficiency.json")
    parser.add_argument("--before", type=Path, metavar="DIR",
                        help="also measure the stack of another build (its target/release), alternating")
    parser.add_argument("images", type=Path)
    args = parser.parse_args()
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:100]
    os.environ.setdefault("IMGREC__INFERENCE__MODEL_DIR", str(args.model))
    cores = os.cpu_count() or 1
    rows: dict[str, list] = {"inference": [], "inference one process": [], "start-up": [], "slots": [],
                             "no slots": [], "instance": [], "busy cores": [],
                             "inference at the stack's concurrency": [], "photos": []}
    # One instance alone on a core needs another core for the web tier and the client.
    instance = cores > 1 and shutil.which("taskset") is not None
    sides = [("slots", None, None), ("no slots", "0", None)]
    if args.before:
        rows["before"] = []
        sides.append(("before", None, args.before))
    with scratch_dir("imgrec-efficiency-") as tmp:
        photo_files = []
        if instance:
            (tmp / "photos").mkdir()
            for n, photo in enumerate(photos(args.images, PHOTOS, 4032, 3024)):
                path = tmp / "photos" / f"photo_{n}.jpg"
                path.write_bytes(photo)
                photo_files.append(path)
        for i in range(args.rounds):
            # Inference alone between every two measurements of a stack, each stack against the
            # mean of the two beside it: the host's speed drifts within a round too.
            rows["inference"].append(inference_ms(args.model, files, cores)[0])
            for side, slots, build in sides if i % 2 == 0 else reversed(sides):
                run = stack_ms(files, tmp, f"{side.replace(' ', '-')}-{i}", slots, build)
                rows["inference"].append(inference_ms(args.model, files, cores)[0])
                run["inference_ms"] = (rows["inference"][-2] + rows["inference"][-1]) / 2
                rows[side].append(run)
            busy = statistics.median(busy_cores(rows[s][-1]) for s, _, _ in sides)
            rows["busy cores"].append(busy)
            if at := own_concurrency(busy, cores):
                rows["inference at the stack's concurrency"].append(
                    {"round": i, "processes": at, "ms": inference_ms(args.model, files, at)[0]})
            alone, start_up = inference_ms(args.model, files)
            rows["inference one process"].append(alone)
            rows["start-up"].append(start_up)
            if instance:
                one = instance_ms(files, tmp, f"instance-{i}")
                rows["inference one process"].append(inference_ms(args.model, files)[0])
                one["inference_alone_ms"] = (rows["inference one process"][-2] + rows["inference one process"][-1]) / 2
                rows["instance"].append(one)
                shot = instance_ms(photo_files, tmp, f"photos-{i}")
                shot["inference_alone_ms"] = inference_ms(args.model, photo_files)[0]
                rows["photos"].append(shot)
            print(f"round {i + 1}: "
                  + "; ".join(f"{s}: {rows[s][-1]['cpu_ms_per_image']:.2f} ms/image (web tier "
                              f"{rows[s][-1]['web_tier_ms']:.2f}, workers {rows[s][-1]['workers_ms']:.2f}, of which "
                              f"inference threads {rows[s][-1]['inference_thread_ms']:.2f}; "
                              f"{rows[s][-1]['workers']} workers{started(rows[s][-1])}; inference alone beside it "
                              f"{rows[s][-1]['inference_ms']:.2f}), {rows[s][-1]['throughput_per_s']:.0f}/s"
                              for s, _, _ in sides)
                  + (f"; one instance: worker {rows['instance'][-1]['workers_ms']:.2f} ms/image (inference thread "
                     f"{rows['instance'][-1]['inference_thread_ms']:.2f}; one inference process alone beside it "
                     f"{rows['instance'][-1]['inference_alone_ms']:.2f})" if instance else ""), flush=True)

    def ratios(side: str) -> list[float]:
        return [r["inference_ms"] / r["cpu_ms_per_image"] for r in rows[side]]

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} (rounds {min(values):.2f}-{max(values):.2f})"

    inference = statistics.median(rows["inference"])
    alone = statistics.median(rows["inference one process"])
    report = {"inference_cpu_ms_per_image": inference, "inference_one_process_cpu_ms_per_image": alone,
              "processes": cores}
    for side, _, _ in sides:
        cpu = statistics.median(r["cpu_ms_per_image"] for r in rows[side])
        report[side] = {"stack_cpu_ms_per_image": cpu, "efficiency": statistics.median(ratios(side)),
                        "throughput_per_s": statistics.median(r["throughput_per_s"] for r in rows[side])}
        print(f"{side:>8}: stack {cpu:.2f} ms CPU/image, efficiency {spread(ratios(side))} (goal >= 0.9), "
              f"{report[side]['throughput_per_s']:.0f} images/s (medians of {args.rounds})")
    # Where the stack's CPU beyond inference alone goes, as shares of inference alone (efficiency
    # is 1 / (1 + their sum) round by round).
    parts = {"web tier": lambda r: r["web_tier_ms"],
             "workers outside inference": lambda r: r["workers_ms"] - r["inference_thread_ms"],
             "inference threads beyond inference alone": lambda r: r["inference_thread_ms"] - r["inference_ms"]}
    report["slots"]["beyond_inference_alone"] = {
        part: statistics.median(f(r) / r["inference_ms"] for r in rows["slots"]) for part, f in parts.items()}
    print("   slots: beyond inference alone, per image: " + ", ".join(
        f"{part} {spread([f(r) / r['inference_ms'] for r in rows['slots']]).replace(' (rounds', ' of it (rounds')}"
        for part, f in parts.items()))
    busy = statistics.median(rows["busy cores"])
    report["busy_cores"] = busy
    matched = rows["inference at the stack's concurrency"]
    if matched:
        # Paired with the slots' stack of the same round.
        at_own = [m["ms"] / rows["slots"][m["round"]]["cpu_ms_per_image"] for m in matched]
        report["slots"]["efficiency_at_own_concurrency"] = statistics.median(at_own)
        print(f"   slots: the stack kept {busy:.1f} of {cores} cores on inference: against inference alone with as "
              f"many processes at once ({statistics.median(m['ms'] for m in matched):.2f} ms CPU/image, "
              f"{'-'.join(sorted({str(m['processes']) for m in matched}))} processes), efficiency {spread(at_own)}")
    else:
        print(f"   slots: the stack kept {busy:.1f} of {cores} cores on inference (one process per core is its baseline)")
    if instance:
        shares = [r["inference_alone_ms"] / r["workers_ms"] for r in rows["instance"]]
        worker = statistics.median(r["workers_ms"] for r in rows["instance"])
        report["instance"] = {"worker_cpu_ms_per_image": worker, "efficiency": statistics.median(shares),
                              "throughput_per_s": statistics.median(r["throughput_per_s"] for r in rows["instance"])}
        print(f"instance: one worker alone on a core {worker:.2f} ms CPU/image, efficiency {spread(shares)} "
              f"against one inference process alone (goal >= 0.9 for an EC2 instance)")
        shots = rows["photos"]
        photo_shares = [r["inference_alone_ms"] / (r["web_tier_ms"] + r["workers_ms"]) for r in shots]
        report["photos"] = {key: statistics.median(r[key] for r in shots)
                            for key in ("web_tier_ms", "workers_ms", "inference_alone_ms")}
        report["photos"]["efficiency"] = statistics.median(photo_shares)
        print(f"  photos: 12 MP JPEGs, one instance: web tier {report['photos']['web_tier_ms']:.1f} + worker "
              f"{report['photos']['workers_ms']:.1f} ms CPU per photo against one inference process alone "
              f"{report['photos']['inference_alone_ms']:.1f}: efficiency {spread(photo_shares)} (goal >= 0.9)")
    else:
        print("instance: NOT RUN (needs 2 cores and `taskset`)")

    def paired(a: str, b: str) -> str:
        """CPU per image of side `a` over side `b`, round by round (they ran one after the other)."""
        return spread([x["cpu_ms_per_image"] / y["cpu_ms_per_image"] for x, y in zip(rows[a], rows[b])])

    print(f"inference alone: {inference:.2f} ms CPU/image with {cores} processes at once, {alone:.2f} with one "
          f"({inference / alone:.2f}x); slots / no slots CPU per image: {paired('slots', 'no slots')}")
    start_up = statistics.median(rows["start-up"])
    report["worker_start_up_cpu_ms"] = start_up
    print(f"a worker's start-up (ONNX Runtime and the model loaded, before its first image): {start_up:.0f} ms CPU, "
          f"paid once per worker started; over a {3 * len(files)}-upload burst "
          f"{start_up / (3 * len(files)):.2f} ms per image for each worker the scaler starts during it "
          "(the warm-up bursts start them before the measured one)")
    if args.before:
        print(f"this build / {args.before}: CPU per image {paired('slots', 'before')}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": rows, "report": report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
