"""The whole local stack end to end: bursts over HTTP, correctness against the reference,
buckets, scaling in and out, crashes and restarts."""

import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import ROOT
from local_stack import Stack, StatusWatcher, loadgen, stack_processes, wait_until, worker_pids

MODEL = ROOT / "models" / "efficientnet-lite0"
FAST = {"scaler__scale_in_after_s": "2", "scaler__tick_ms": "200"}


@pytest.fixture(scope="module")
def thumbs(datasets):
    files = sorted((datasets / "imagenet-100").glob("*.JPEG"))
    assert len(files) == 100
    return files


@pytest.fixture(scope="module")
def expected(thumbs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("expected") / "expected.csv"
    result = subprocess.run(
        [sys.executable, "tools/reference.py", "--model", str(MODEL), *map(str, thumbs)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    out.write_text(result.stdout)
    return out


def labels(csv: Path) -> dict[str, str]:
    return dict(line.split(",", 1) for line in csv.read_text().splitlines())


def test_burst_of_100_over_100_connections(tmp_path, thumbs, expected):
    data = tmp_path / "data"
    stack = Stack(data, **FAST, scaler__max="6")
    with stack:
        watcher = StatusWatcher(stack)
        watcher.start()
        plot = tmp_path / "burst.svg"
        summary, run = loadgen(stack.url, thumbs, concurrency=100, expected=expected, plot=plot, plot_tail=15)
        assert summary["requests"] == 100, run.stderr
        assert (summary["ok"], summary["errors"], summary["wrong"]) == (100, 0, 0), summary["error_samples"]

        # Back to the minimum once the window has passed (loadgen --plot samples until then).
        wait_until("the pool is back at min", lambda: stack.status()["instances"] == [], timeout=15)
        seen = watcher.stop()
        peak = max(len(s["instances"]) for s in seen)
        assert peak > 1, "the burst never scaled beyond one instance"
        assert all(len(s["instances"]) <= 6 and s["capacity"]["desired"] <= 6 for s in seen)
        assert seen[-1]["capacity"]["desired"] == 0
        assert {"pending", "in_flight"} <= seen[-1]["queue"].keys()
        assert seen[-1]["capacity"]["max"] == 6 and seen[-1]["capacity"]["min"] == 0
        metrics = urllib.request.urlopen(stack.url + "metrics").read().decode()
        assert 'imgrec_requests_total{outcome="ok"} 100' in metrics
    assert stack.proc.returncode == 0, stack.logs()[-3000:]
    assert stack_processes(data) == [], "processes outlived the stack"

    want = labels(expected)
    outputs = {p.name: p.read_text() for p in (data / "s3" / "output-bucket").iterdir()}
    assert outputs == {f.stem: f"({f.stem}, {want[f.name]})" for f in thumbs}
    inputs = {p.name: p.read_bytes() for p in (data / "s3" / "input-bucket").iterdir()}
    assert inputs == {f.name: f.read_bytes() for f in thumbs}

    # The timeline: a dot per request, the three panels, the run in the title.
    svg = plot.read_text()
    assert svg.count("<circle") == 100, run.stderr
    assert "100 uploads over 100 connections" in svg and "running" in svg and "backlog" in svg
    assert "timeline:" in run.stderr


def test_same_file_name_twice_gets_each_its_own_label(tmp_path, thumbs, expected):
    want = labels(expected)
    a, b = next((x, y) for x in thumbs for y in thumbs if want[x.name] != want[y.name])
    uploads = tmp_path / "uploads"
    for i in range(8):
        for src, tag in ((a, "a"), (b, "b")):
            d = uploads / f"{tag}{i}"
            d.mkdir(parents=True)
            (d / "same.jpg").write_bytes(src.read_bytes())
    with Stack(tmp_path / "data", **FAST) as stack:
        results = {}

        def send(d):
            summary, _ = loadgen(stack.url, [d / "same.jpg"], concurrency=1)
            results[d.name] = summary

        threads = [threading.Thread(target=send, args=(d,)) for d in sorted(uploads.iterdir())]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(results) == 16 and all(r["ok"] == 1 for r in results.values())
    # loadgen without --expected counts ok; ask again with JSON to check each label.
    with Stack(tmp_path / "data2", **FAST) as stack:
        got = {}

        def ask(d):
            body = (d / "same.jpg").read_bytes()
            boundary = uuid.uuid4().hex
            payload = (
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"myfile\"; filename=\"same.jpg\"\r\n"
                f"Content-Type: image/jpeg\r\n\r\n"
            ).encode() + body + f"\r\n--{boundary}--\r\n".encode()
            req = urllib.request.Request(stack.url, data=payload, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
            got[d.name] = urllib.request.urlopen(req, timeout=60).read().decode().strip()

        threads = [threading.Thread(target=ask, args=(d,)) for d in sorted(uploads.iterdir())]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert got == {d.name: want[(a if d.name.startswith("a") else b).name] for d in uploads.iterdir()}


def test_a_worker_killed_mid_burst_loses_nothing(tmp_path, thumbs, expected):
    data = tmp_path / "data"
    settings = {**FAST, "queues__visibility_timeout_s": "2", "scaler__max": "3"}
    with Stack(data, **settings) as stack:
        result = {}
        t = threading.Thread(target=lambda: result.update(summary=loadgen(stack.url, thumbs, expected=expected)[0]))
        t.start()
        victim = wait_until("a worker is busy", lambda: worker_pids(data) and stack.status()["queue"]["in_flight"] > 0, 30)
        pid = worker_pids(data)[0]
        Path(f"/proc/{pid}").exists() and __import__("os").kill(pid, signal.SIGKILL)
        t.join(180)
        summary = result["summary"]
        assert (summary["ok"], summary["errors"], summary["wrong"]) == (100, 0, 0), summary["error_samples"]
        assert victim
    assert "exited unexpectedly" in stack.logs()
    assert stack_processes(data) == []


def test_web_tier_restart_finds_every_result_in_the_output_bucket(tmp_path, thumbs):
    data = tmp_path / "data"
    batch = thumbs[:30]
    stack = Stack(data, **FAST, scaler__max="2").start()
    t = threading.Thread(target=lambda: loadgen(stack.url, batch, timeout=60), daemon=True)
    t.start()
    wait_until("every upload is queued", lambda: len(list((data / "s3" / "input-bucket").glob("*"))) == 30, 60)
    stack.stop(signal.SIGKILL)
    t.join(60)
    wait_until("the orphaned workers are gone", lambda: stack_processes(data) == [], 30)

    with Stack(data, **FAST, scaler__max="2") as again:
        outputs = data / "s3" / "output-bucket"
        wait_until("all 30 results are stored", lambda: len(list(outputs.glob("*"))) == 30, 120)
        wait_until("the queue is drained", lambda: again.status()["queue"]["pending"] == 0, 30)
    assert sorted(p.name for p in outputs.iterdir()) == sorted(f.stem for f in batch)
    assert stack_processes(data) == []


def test_make_run_stops_everything_on_ctrl_c(tmp_path, thumbs):
    """Ctrl-C in a terminal sends SIGINT to the whole process group of `make run`."""
    from local_stack import free_port

    data, port = tmp_path / "data", free_port()
    env = {**__import__("os").environ, "PORT": str(port), "DATA_DIR": str(data), "IMGREC__SCALER__MIN": "2"}
    proc = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until("make run serves", lambda: _answers(url + "healthz"), 300)
        wait_until("the minimum pool is up", lambda: len(worker_pids(data)) == 2, 30)
        assert urllib.request.urlopen(url, timeout=5).status == 200  # the upload page
    finally:
        __import__("os").killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
    wait_until("nothing is left", lambda: stack_processes(data) == [], 20)


def _answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=1).status == 200
    except OSError:
        return False
