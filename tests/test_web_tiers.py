"""Several web tiers on one data folder: each gets its own name and its own response queue, they
share one request queue, one pair of buckets and one worker pool, and the scaler of exactly one of
them acts on the fleet; when that one dies another takes the scaler over."""

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT
from local_stack import Callbacks, Stack, job_status, loadgen, stack_processes, submit_job, wait_job, wait_until, worker_names

MODEL = ROOT / "models" / "efficientnet-lite0"
MAX = 4
SETTINGS = {"scaler__scale_in_after_s": "2", "scaler__tick_ms": "200", "scaler__max": str(MAX)}


@pytest.fixture(scope="module")
def thumbs(datasets) -> list[Path]:
    files = sorted((datasets / "imagenet-100").glob("*.JPEG"))
    assert len(files) == 100
    return files


@pytest.fixture(scope="module")
def want(thumbs) -> dict[str, str]:
    out = subprocess.run([sys.executable, "tools/reference.py", "--model", str(MODEL), *map(str, thumbs)],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return dict(line.split(",", 1) for line in out.splitlines())


def image_sets(tmp: Path, thumbs, want, prefixes) -> dict[str, tuple[list[Path], Path]]:
    """Per prefix, copies of the 100 images under distinct names and the labels they must get."""
    sets = {}
    for prefix in prefixes:
        d = tmp / f"images-{prefix}"
        d.mkdir()
        files = []
        for f in thumbs:
            files.append(d / f"{prefix}_{f.name}")
            shutil.copyfile(f, files[-1])
        expected = tmp / f"expected-{prefix}.csv"
        expected.write_text("".join(f"{prefix}_{f.name},{want[f.name]}\n" for f in thumbs))
        sets[prefix] = (files, expected)
    return sets


class PoolSampler(threading.Thread):
    """Samples the live app-tier processes every 50 ms: how many, and their names."""

    def __init__(self, data: Path):
        super().__init__(daemon=True)
        self.data, self.samples, self.stopped = data, [], threading.Event()

    def run(self):
        while not self.stopped.is_set():
            self.samples.append(worker_names(self.data))
            time.sleep(0.05)

    def stop(self) -> list[list[str]]:
        self.stopped.set()
        self.join(5)
        return self.samples


class FleetViews(threading.Thread):
    """Polls every web tier's /status: the moments when all of them list the same instances."""

    def __init__(self, stacks):
        super().__init__(daemon=True)
        self.stacks, self.agreed, self.stopped = stacks, [], threading.Event()

    def run(self):
        while not self.stopped.is_set():
            try:
                views = [frozenset(i["name"] for i in s.status()["instances"]) for s in self.stacks]
            except OSError:
                continue
            if views[0] and all(v == views[0] for v in views):
                self.agreed.append(views[0])
            time.sleep(0.1)

    def stop(self) -> list[frozenset]:
        self.stopped.set()
        self.join(5)
        return self.agreed


def check_pool(samples: list[list[str]]):
    allowed = {f"app-instance{k}" for k in range(1, MAX + 1)}
    assert samples, "no samples"
    for names in samples:
        assert len(names) <= MAX, f"{len(names)} app-tier processes alive with max {MAX}: {names}"
        assert len(set(names)) == len(names), f"duplicate names alive: {names}"
        assert set(names) <= allowed, f"names out of range: {names}"
    assert max(len(s) for s in samples) > 1, "the burst never scaled beyond one instance"


def run_bursts(urls_and_sets) -> list[dict]:
    results = [None] * len(urls_and_sets)

    def one(i, url, files, expected):
        results[i] = loadgen(url, files, concurrency=100, expected=expected, timeout=240)

    threads = [threading.Thread(target=one, args=(i, *args)) for i, args in enumerate(urls_and_sets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(260)
    return results


def check_outputs(data: Path, sets, want, thumbs):
    outputs = {p.name: p.read_text() for p in (data / "s3" / "output-bucket").iterdir()}
    expected = {f"{prefix}_{f.stem}": f"({prefix}_{f.stem}, {want[f.name]})" for prefix in sets for f in thumbs}
    assert outputs == expected


def test_three_web_tiers_share_one_pool_and_each_gets_its_own_answers(tmp_path, thumbs, want):
    data = tmp_path / "data"
    sets = image_sets(tmp_path, thumbs, want, ["a", "b", "c"])
    stacks = [Stack(data, log_name=f"web{k}", **SETTINGS) for k in range(3)]
    sampler = PoolSampler(data)
    try:
        for s in stacks:
            s.start()
        names = sorted(s.status()["web_tier"]["name"] for s in stacks)
        assert names == ["web-instance1", "web-instance2", "web-instance3"]
        acting = [s.status()["web_tier"]["scaler_acting"] for s in stacks]
        wait_until("one scaler acts", lambda: sum(s.status()["web_tier"]["scaler_acting"] for s in stacks) == 1, 10)
        sampler.start()
        views = FleetViews(stacks)
        views.start()
        results = run_bursts([(s.url, *sets[p]) for s, p in zip(stacks, sets)])
        for (summary, run), prefix in zip(results, sets):
            assert summary["requests"] == 100, run.stderr[-2000:]
            assert (summary["ok"], summary["errors"], summary["wrong"]) == (100, 0, 0), (prefix, summary["error_samples"])
        wait_until("the pool is back at min", lambda: worker_names(data) == [], timeout=20)
        check_pool(sampler.stop())
        # Every web tier (and so its /dashboard) shows the same fleet and queue.
        agreed = views.stop()
        assert agreed, "the three web tiers never showed one and the same non-empty fleet"
        for s in stacks:
            assert s.status()["queue"]["pending"] == 0
    finally:
        sampler.stopped.set()
        for s in stacks:
            if s.proc and s.proc.poll() is None:
                s.stop()
    for s in stacks:
        assert s.proc.returncode == 0, s.logs()[-3000:]
    assert stack_processes(data) == [], "processes outlived the stacks"
    check_outputs(data, sets, want, thumbs)
    del acting


def warnings(stacks, limit: int = 6000) -> str:
    """The stacks' (and their workers') warnings and errors, for a failure's message: what went wrong
    in a run that is rarely reproduced."""
    lines = [f"{s.log.name}: {line}" for s in stacks for line in s.logs().splitlines()
             if " WARN " in line or " ERROR " in line or "released the requests" in line]
    return "\n".join(lines)[-limit:]


def test_killing_the_web_tier_that_runs_the_scaler_hands_the_scaler_over(tmp_path, thumbs, want):
    data = tmp_path / "data"
    sets = image_sets(tmp_path, thumbs, want, ["b", "c"])
    stacks = [Stack(data, log_name=f"web{k}", **SETTINGS) for k in range(3)]
    sampler = PoolSampler(data)
    try:
        for s in stacks:
            s.start()
        acting = wait_until(
            "one scaler acts",
            lambda: [s for s in stacks if s.status()["web_tier"]["scaler_acting"]],
            10,
        )
        assert len(acting) == 1
        host = acting[0]
        others = [s for s in stacks if s is not host]
        sampler.start()
        results = {}
        burst = threading.Thread(
            target=lambda: results.update(r=run_bursts([(s.url, *sets[p]) for s, p in zip(others, sets)]))
        )
        burst.start()
        wait_until("the pool grows", lambda: len(worker_names(data)) >= 2, 30, every=0.02)
        host.proc.send_signal(signal.SIGKILL)
        host.proc.wait(5)
        killed_at = time.monotonic()
        new_host = wait_until(
            "another web tier takes the scaler over",
            lambda: [s for s in others if s.status()["web_tier"]["scaler_acting"]],
            10,
        )
        took_over_s = time.monotonic() - killed_at
        burst.join(260)
        for (summary, run), prefix in zip(results["r"], sets):
            assert summary["requests"] == 100, run.stderr[-2000:]
            assert (summary["ok"], summary["errors"], summary["wrong"]) == (100, 0, 0), (
                prefix, summary["error_samples"], warnings(stacks))
        wait_until("the pool is back at min", lambda: worker_names(data) == [], timeout=20)
        check_pool(sampler.stop())
        # The dead host's workers drained (its death is one stop request, however many SIGHUPs
        # the kernel sends): none gave its batch back unanswered.
        assert "not drained by the deadline" not in host.logs(), warnings([host])
        assert len(new_host) == 1
        assert took_over_s < 6, f"took {took_over_s:.1f}s to take the scaler over"
        log = new_host[0].logs()
        assert re.search(r"acting as the scaler", log), log[-2000:]
    finally:
        sampler.stopped.set()
        for s in stacks:
            if s.proc and s.proc.poll() is None:
                s.stop()
    for s in others:
        assert s.proc.returncode == 0, s.logs()[-3000:]
    assert stack_processes(data) == [], "processes outlived the stacks"
    check_outputs(data, sets, want, thumbs)


def test_a_web_tier_paused_past_its_name_lease_loses_no_answer(tmp_path, thumbs, want):
    """Web tier A is SIGSTOPped with requests waiting, longer than its name lease (5 s); B starts
    on the same data folder meanwhile and takes A's name. When A resumes, every request either
    tier accepted is answered: A's answers come back on A's own queue, A goes on under another
    name, and neither tier stops the other's workers for good."""
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    from hostile import upload

    data = tmp_path / "data"
    a = Stack(data, log_name="a", **SETTINGS).start()
    b = Stack(data, log_name="b", **SETTINGS)
    try:
        assert a.status()["web_tier"]["name"] == "web-instance1"
        with ThreadPoolExecutor(100) as pool:
            def send(stack, i):
                f = thumbs[i]
                return f.name, upload(stack.url, f"{i}_{f.name}", f.read_bytes(), timeout=120)

            before = [pool.submit(send, a, i) for i in range(40)]
            wait_until("requests wait at A", lambda: a.status()["waiting_requests"] >= 10, 30, every=0.02)
            leases = sqlite3.connect(data / "queue.sqlite3")
            holder_of_1 = lambda: leases.execute("SELECT holder FROM leases WHERE name = 'web-instance1'").fetchone()
            a_holder = holder_of_1()
            a.proc.send_signal(signal.SIGSTOP)
            # B and a third tier start while A is stopped; they may have to wait for A to resume
            # if it was stopped holding the shared database's write lock (a transaction takes ms).
            time.sleep(1)
            b.launch()
            # A's lease runs out while it is stopped: the third tier may take web-instance1.
            time.sleep(7)
            b2 = Stack(data, log_name="b2", **SETTINGS).launch()
            try:
                # Usually the third tier takes web-instance1 now; not if A holds the write lock.
                try:
                    wait_until("the third tier takes A's name", lambda: holder_of_1() != a_holder, 3)
                except AssertionError:
                    pass
                a.proc.send_signal(signal.SIGCONT)
                b.wait_ready()
                b2.wait_ready()
                after = [pool.submit(send, s, i) for i, s in zip(range(40, 100), [a, b, b2] * 20)]
                answers = [f.result(timeout=180) for f in before + after]
                names = {s: s.status()["web_tier"]["name"] for s in (a, b, b2)}
                queues = {s.status()["web_tier"]["response_queue"] for s in (a, b, b2)}
            finally:
                b2.stop()
    finally:
        a.proc.send_signal(signal.SIGCONT)
        for s in (a, b):
            if s.proc and s.proc.poll() is None:
                s.stop()
    wrong = [(name, got) for name, got in answers if got != (200, want[name] + "\n")]
    assert not wrong, f"{len(wrong)} of 100 lost or wrong: {wrong[:3]}"
    assert len(set(names.values())) == 3, f"two web tiers share a name after the pause: {names.values()}"
    assert len(queues) == 3
    if names[a] != "web-instance1":
        # It lost its name while stopped, and said so.
        assert f"going on as {names[a]}" in a.logs(), a.logs()[-3000:]
    assert stack_processes(data) == [], "processes outlived the stacks"


def test_a_job_outlives_the_web_tier_that_took_it_and_retries_are_classified_once(tmp_path, thumbs, want):
    """A 1,000-image job sent to one web tier is polled to completion through the other while the
    first is SIGKILLed midway: every image's label delivered, right, and the job's callback, which
    the killed web tier held, sent once by the other after its lease lapsed. Then a retry storm
    across both web tiers, each key sent 8 times: 8 answers per key, all the first's, each image
    stored once."""
    data = tmp_path / "data"
    jobs_dir = tmp_path / "job"
    jobs_dir.mkdir()
    files = []
    for k in range(10):
        for f in thumbs:
            files.append(jobs_dir / f"j{k}_{f.name}")
            shutil.copyfile(f, files[-1])
    lease_s = 2
    stacks = [Stack(data, log_name=f"web{k}", jobs__callback_lease_s=str(lease_s), **SETTINGS) for k in range(2)]
    callbacks = Callbacks()
    try:
        for s in stacks:
            s.start()
        doomed, survivor = stacks
        accepted = submit_job(doomed.url, files, token="job-1", callback_url=callbacks.url)
        job_id = accepted["job_id"]
        assert accepted["images"] == 1000
        wait_until("the job is under way", lambda: 0 < job_status(survivor.url, job_id)["counts"]["done"], 60, every=0.05)
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait(5)
        midway = job_status(survivor.url, job_id)["counts"]
        assert midway["pending"] > 0, f"the job was done before the kill: {midway}"
        report = wait_job([survivor.url], job_id, timeout=300)
        assert report["counts"] == {"total": 1000, "done": 1000, "failed": 0, "pending": 0}, report["counts"]
        for image, f in zip(report["images"], files):
            assert image["file"] == f.name
            assert image["label"] == want[f.name.split("_", 1)[1]], image
        print(f"\njob of 1000: {midway['pending']} pending when the accepting web tier was killed; all delivered")
        wait_until("the job's callback", lambda: callbacks.received, 4 * lease_s + 30, every=0.1)
        time.sleep(3 * lease_s)
        assert len(callbacks.received) == 1, f"{len(callbacks.received)} callbacks"
        (called,) = callbacks.received
        assert called["job_id"] == job_id and called["status"] == "completed", called
        assert "took over a job's callback whose lease lapsed" in survivor.logs()

        # The retry storm: a second web tier in place of the killed one, 10 keys x 8 sends.
        stacks.append(Stack(data, log_name="web2", **SETTINGS).start())
        urls = [survivor.url, stacks[-1].url]
        before = len(list((data / "versions" / "input-bucket").iterdir()))

        def send(i: int):
            import requests

            f = thumbs[i % 10]
            r = requests.post(urls[i % 2], files={"myfile": (f"storm_{f.name}", f.read_bytes())},
                              headers={"Idempotency-Key": f"key-{i % 10}", "Accept": "application/json"}, timeout=120)
            return i % 10, r.status_code, r.json()

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(80) as pool:
            answers = list(pool.map(send, range(80)))
        by_key: dict[int, list] = {}
        for key, code, body in answers:
            assert code == 200, body
            by_key.setdefault(key, []).append(body)
        for key, bodies in by_key.items():
            assert len(bodies) == 8 and all(b == bodies[0] for b in bodies), bodies
            assert bodies[0]["label"] == want[thumbs[key].name]
        stored = len(list((data / "versions" / "input-bucket").iterdir())) - before
        assert stored == 10, f"{stored} images stored for 10 keys"
    finally:
        callbacks.close()
        for s in stacks:
            if s.proc and s.proc.poll() is None:
                s.stop()
    assert stack_processes(data) == [], "processes outlived the stacks"
