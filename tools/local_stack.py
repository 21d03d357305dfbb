"""Starts and stops the local stack (web tier + hosted scaler + app-tier processes) for tests and
benchmarks."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEB_TIER = ROOT / "target" / "release" / "web-tier"
LOADGEN = ROOT / "target" / "release" / "loadgen"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int, tid: int | None = None) -> tuple[float, float]:
    """User and system CPU seconds so far of a process, or of one of its threads, in clock ticks
    (10 ms): for where the split matters; `cpu_s` is exact."""
    stat = Path(f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_s(pid: int) -> float:
    """CPU seconds so far of a process, every thread it ever had included, to the nanosecond: its
    CPU-time clock (`clock_getcpuclockid`), which Linux lets any process read. `/proc`'s ticks
    are 10 ms, ~1 % of a benchmark's burst per process read. OSError once the process is gone."""
    return time.clock_gettime(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)


def thread_cpu_s(pid: int, name: str) -> float:
    """CPU seconds so far of the live threads of `pid` named `name`, to the nanosecond (their
    `schedstat`: another process's thread clocks cannot be read)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == name:
                total += int((task / "schedstat").read_text().split()[0]) / 1e9
        except OSError:
            pass
    return total


@contextlib.contextmanager
def scratch_dir(prefix: str):
    """A folder for one benchmark's data. Under `make bench` (`IMGREC_BENCH_SCRATCH` set) it stays
    until the target deletes them all after its last measurement: ext4 without a journal (as on
    these CI machines) makes every file created for a minute after a delete (six while the inode
    table is not yet written back) skip each freed inode one by one (`recently_deleted`), so a
    bench that deleted its data on exit would slow the next one's uploads. Otherwise a temporary
    folder, deleted on exit."""
    root = os.environ.get("IMGREC_BENCH_SCRATCH")
    if root:
        Path(root).mkdir(parents=True, exist_ok=True)
        yield Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    else:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield Path(tmp)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stack_processes(data_dir: Path) -> list[int]:
    """Pids of live processes started with DATA_DIR=data_dir (web tier and its workers)."""
    marker = f"DATA_DIR={data_dir}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                state = (proc / "stat").read_text().split(") ", 1)[1][0]
                if state != "Z":
                    pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def worker_pids(data_dir: Path) -> list[int]:
    out = []
    for pid in stack_processes(data_dir):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"app-tier") and b"run" in cmd:
            out.append(pid)
    return out


def worker_names(data_dir: Path) -> list[str]:
    """The `--name` of every live local app-tier instance on `data_dir` (duplicates kept)."""
    names = []
    for pid in worker_pids(data_dir):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--name" in cmd[:-1]:
            names.append(cmd[cmd.index(b"--name") + 1].decode())
    return names


def worker_pid(data_dir: Path, name: str) -> int | None:
    """The pid of the local app-tier instance `name` (`app-instanceK`), if it runs."""
    for pid in worker_pids(data_dir):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if name.encode() in cmd:
            return pid
    return None


class Stack:
    def __init__(self, data_dir: Path, extra_env: dict | None = None, log_name: str = "web-tier",
                 web_tier: Path | None = None, output: Path | int | None = None, **settings: str):
        """`web_tier`: the build to run (its app-tier beside it); `WEB_TIER` when launched by default.
        `output`: a file or a descriptor the processes' stdout and stderr go to instead of the log
        file (then no logs)."""
        self.data_dir = data_dir
        self.web_tier = web_tier
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "DATA_DIR": str(data_dir),
            "IMGREC__INFERENCE__MODEL_DIR": str(ROOT / "models" / "efficientnet-lite0"),
            "RUST_LOG": "info",
            **{f"IMGREC__{k.upper()}": str(v) for k, v in settings.items()},
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.log = data_dir.parent / f"{data_dir.name}-{log_name}.log"
        self.output = output

    def start(self) -> "Stack":
        return self.launch().wait_ready()

    def launch(self) -> "Stack":
        """Starts the process without waiting for it to serve."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.output if isinstance(self.output, int) else (self.output or self.log).open("ab")
        program = self.web_tier or WEB_TIER
        self.proc = subprocess.Popen([str(program)], env=self.env, stdout=log, stderr=log, cwd=ROOT)
        return self

    def wait_ready(self) -> "Stack":
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(self.url + "healthz", timeout=1).status == 200:
                    return self
            except OSError:
                time.sleep(0.05)
            assert self.proc.poll() is None, f"web tier exited: {self.logs()[-2000:]}"
        raise AssertionError("web tier did not come up")

    def status(self) -> dict:
        with urllib.request.urlopen(self.url + "status", timeout=5) as r:
            return json.load(r)

    def busy_worker(self) -> int | None:
        """The pid of a running app-tier instance that holds requests now, if any."""
        for instance in self.status()["instances"]:
            if instance["busy"] and instance["state"] == "running":
                pid = worker_pid(self.data_dir, instance["name"])
                if pid:
                    return pid
        return None

    def stop(self, sig=signal.SIGINT, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        return code

    def logs(self) -> str:
        return "" if self.output is not None else self.log.read_text(errors="replace")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.stop()


def photos(thumbs: Path, count: int, width: int, height: int) -> list[bytes]:
    """Large JPEGs with real detail, as cameras make them (one baseline scan): the first `count`
    test thumbnails in `thumbs` scaled up, with noise (a smooth upscale compresses, and decodes,
    far more cheaply than a photo)."""
    from PIL import Image

    out = []
    for thumb in sorted(thumbs.glob("*.JPEG"))[:count]:
        img = Image.open(thumb).convert("RGB").resize((width, height), Image.BILINEAR)
        noise = Image.effect_noise((width, height), 20).convert("RGB")
        img = Image.blend(img, noise, 0.1)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class StatusWatcher(threading.Thread):
    """Polls /status every `every` seconds, keeping every answer."""

    def __init__(self, stack: Stack, every: float = 0.1):
        super().__init__(daemon=True)
        self.stack, self.every = stack, every
        self.seen: list[dict] = []
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            try:
                self.seen.append(self.stack.status())
            except OSError:
                pass
            time.sleep(self.every)

    def stop(self) -> list[dict]:
        self.stopped.set()
        self.join(5)
        return self.seen


def wait_until(what: str, predicate, timeout: float, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting until {what}")


def loadgen(url: str, inputs, *, concurrency: int = 100, expected: Path | None = None, timeout: float = 300,
            plot: Path | None = None, plot_tail: int = 60, repeat: int = 1, prefix: tuple[str, ...] = ()):
    cmd = [*prefix, str(LOADGEN), "--url", url, "--concurrency", str(concurrency), "--json", "--repeat", str(repeat)]
    if expected:
        cmd += ["--expected", str(expected)]
    if plot:
        cmd += ["--plot", str(plot), "--plot-tail", str(plot_tail)]
    result = subprocess.run(cmd + [str(i) for i in inputs], capture_output=True, text=True, timeout=timeout)
    return json.loads(result.stdout), result


def submit_job(url: str, files, *, token: str | None = None, callback_url: str | None = None,
               timeout: float = 600) -> dict:
    """POST /jobs with each file a part of the field "myfile": the 202's JSON."""
    import requests

    parts = [("myfile", (Path(f).name, Path(f).read_bytes(), "application/octet-stream")) for f in files]
    headers = {"Idempotency-Key": token} if token else {}
    params = {"callback_url": callback_url} if callback_url else {}
    response = requests.post(url + "jobs", files=parts, headers=headers, params=params, timeout=timeout)
    assert response.status_code == 202, (response.status_code, response.text[:500])
    assert response.headers["Location"] == f"/jobs/{response.json()['job_id']}"
    return response.json()


class Callbacks:
    """An HTTP server on 127.0.0.1 that keeps the JSON of every POST it is sent (jobs' callbacks)."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/done"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def job_status(url: str, job_id: str) -> dict:
    with urllib.request.urlopen(f"{url}jobs/{job_id}", timeout=30) as r:
        return json.load(r)


def wait_job(urls, job_id: str, timeout: float) -> dict:
    """Polls GET /jobs/{id} (through each of `urls` in turn, skipping one that does not answer)
    until the job completes: its last report."""
    deadline = time.monotonic() + timeout
    turn = 0
    while time.monotonic() < deadline:
        url = urls[turn % len(urls)]
        turn += 1
        try:
            report = job_status(url, job_id)
        except OSError:
            continue
        if report["status"] == "completed":
            return report
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not complete within {timeout}s")


class MotoServer:
    """moto server (the venv's moto with S3's conditional writes atomic, `tools/moto_server.py`,
    run by the venv's python: a venv's scripts break when it moves) on a free loopback port."""

    def __init__(self):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "MotoServer":
        # A session of its own: a Ctrl-C meant for its user must not stop it before what uses it.
        self.proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "tools" / "moto_server.py"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until("moto answers", lambda: _answers(self.endpoint + "/moto-api/"), 30)
        return self

    def __exit__(self, *exc):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)

    def env(self) -> dict:
        return {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
            "IMGREC__AWS__ENDPOINT_URL": self.endpoint,
        }


def _answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=1).status == 200
    except OSError:
        return False
