"""The HTTP front under hostile clients: size boundaries, chunked bodies, slow and idle sockets,
connection floods, unknown paths, decompression bombs and SIGTERM with hundreds waiting. Each test
ends with every accepted request answered correctly (or refused with a clear 4xx/503), and no
process left."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import generated_models
from conftest import ROOT
from hostile import (closed_within, connect, jpeg_bomb, jpeg_scan_bomb, label_of, open_sockets, peak_rss_mib,
                     png_bomb, png_metadata_bomb, request, rss_mib, slow_sender, upload)
from local_stack import Stack, photos, stack_processes, wait_until, worker_pids

MODEL = ROOT / "models" / "efficientnet-lite0"
FAST = {"scaler__scale_in_after_s": "2", "scaler__tick_ms": "200"}


def reference_labels(files: list[Path]) -> dict[str, str]:
    out = subprocess.run([sys.executable, "tools/reference.py", "--model", str(MODEL), *map(str, files)],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return dict(line.split(",", 1) for line in out.splitlines())


@pytest.fixture(scope="module")
def thumb(datasets) -> Path:
    return datasets / "imagenet-100" / "test_0.JPEG"


@pytest.fixture(scope="module")
def thumb_label(thumb) -> str:
    return reference_labels([thumb])[thumb.name]


def test_the_size_limit_is_exact_per_file_and_chunked_uploads_work(tmp_path, thumb, thumb_label):
    image = thumb.read_bytes()
    limit = len(image) + 1000
    # Bytes after a JPEG's end-of-image marker are ignored by every decoder: the file stays valid.
    at_limit = image + b"\0" * (limit - len(image))
    over = at_limit + b"\0"
    with Stack(tmp_path / "data", **FAST, web__max_upload_bytes=str(limit)) as stack:
        assert upload(stack.url, "exact.jpg", at_limit) == (200, thumb_label + "\n")
        status, reason = upload(stack.url, "over.jpg", over)
        assert status == 413 and str(limit) in reason and reason.count("\n") == 1, reason
        assert upload(stack.url, "chunked.jpg", at_limit, chunked=True) == (200, thumb_label + "\n")
        status, _ = upload(stack.url, "chunked_over.jpg", over, chunked=True)
        assert status == 413
    inputs = sorted(p.name for p in (tmp_path / "data" / "s3" / "input-bucket").iterdir())
    assert inputs == ["chunked.jpg", "exact.jpg"], "a refused upload was stored"


def test_idle_clients_are_cut_off_and_connections_are_bounded(tmp_path, thumb, thumb_label):
    """(A half-sent header and a trickling body: services/web-tier/tests/http.rs, in-process.)"""
    settings = {**FAST, "web__header_timeout_s": "1", "web__body_timeout_s": "2", "web__max_connections": "20"}
    with Stack(tmp_path / "data", **settings) as stack:
        # A keep-alive connection left idle after its answer.
        idle = connect(stack.url)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(1024).startswith(b"HTTP/1.1 200")
        assert closed_within(idle, 4), "an idle keep-alive connection was kept"

        # A flood of silent connections: the web tier never holds more than its bound, and answers
        # real clients once the silent ones time out.
        pid = stack.proc.pid
        flood = [connect(stack.url) for _ in range(200)]
        time.sleep(0.5)
        held = open_sockets(pid)
        assert held <= 20 + 10, f"{held} sockets open with max_connections 20"
        assert upload(stack.url, "after_flood.jpg", thumb.read_bytes(), timeout=30) == (200, thumb_label + "\n")
        for s in flood + [idle]:
            s.close()
        assert stack.proc.poll() is None
    assert stack.proc.returncode == 0


@pytest.mark.parametrize("kind", ["png", "jpeg", "progressive_jpeg"])
def test_decompression_bombs_are_checked_within_the_memory_budget(tmp_path, kind):
    width, height = 8192, 4882  # 40 MP, the default image_limits.max_pixels
    bomb = png_bomb(width, height) if kind == "png" else jpeg_bomb(width, height, kind == "progressive_jpeg")
    path = tmp_path / f"bomb.{'png' if kind == 'png' else 'jpg'}"
    path.write_bytes(bomb)
    want = reference_labels([path])[path.name]
    concurrent = 12
    with Stack(tmp_path / "data", **FAST, scaler__max="2") as stack:
        with ThreadPoolExecutor(concurrent) as pool:
            answers = list(pool.map(lambda i: upload(stack.url, f"bomb{i}{path.suffix}", bomb, timeout=300),
                                    range(concurrent)))
        assert answers == [(200, want + "\n")] * concurrent
        peak = peak_rss_mib(stack.proc.pid)
    # A full frame is 120-160 MB per upload: 12 at once would be 1.5-2 GB.
    assert peak < 600, f"web tier peaked at {peak:.0f} MiB checking {concurrent} {kind} bombs"
    assert stack_processes(tmp_path / "data") == []


def test_a_large_jpeg_of_many_scans_is_refused_before_any_decode(tmp_path, thumb, thumb_label):
    """40 MP in 100 scans (~190 KB): the 500 scans a small image may have would cost a worker ~2 s
    here (each scan walks every block again), ~10 s at 500; a 40 MP image may have 32."""
    bomb = jpeg_scan_bomb(8192, 4882, 100)
    assert len(bomb) < 300_000
    with Stack(tmp_path / "data", **FAST, scaler__max="1") as stack:
        status, body = upload(stack.url, "scans.jpg", bomb)
        assert status == 422, body
        assert "100 scans, more than the 32 allowed for a 8192x4882 image" in body, body
        assert upload(stack.url, "thumb.jpg", thumb.read_bytes()) == (200, thumb_label + "\n")


def test_an_image_too_large_for_a_model_at_its_own_size_is_refused_before_it_is_stored(tmp_path, app_tier):
    """A model that runs at the image's own size (ResNet-18, the AWS default) needs memory with
    the image's pixels: a worker peaked at 4.2 GB on 28 MP, where the app tier's unit on EC2 has
    MemoryMax=3G (killed, and so each worker that took the request again). The web tier reads the
    model's manifest and refuses such an image with 413 before storing it; a worker applies the
    same bound (seen here through `app-tier classify`, as a web tier without the model folder
    would queue it). The bound lowered from 16 MP to 0.1 MP so that the images stay small."""
    from PIL import Image

    model = generated_models.resnet18(tmp_path)
    images = {}
    for name, size in {"over.jpg": (400, 300), "under.jpg": (300, 300)}.items():
        Image.new("RGB", size, (200, 120, 40)).save(tmp_path / name, quality=90)
        images[name] = (tmp_path / name).read_bytes()
    bound = {"IMGREC__INFERENCE__MODEL_DIR": str(model), "IMGREC__IMAGE_LIMITS__MAX_NATIVE_PIXELS": "100000"}
    classified = subprocess.run([str(app_tier), "classify", str(tmp_path / "over.jpg"), str(tmp_path / "under.jpg")],
                                env={**os.environ, **bound}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert classified.returncode == 1, classified
    assert "over.jpg: image is 400x300, more than the 100000 pixels this model takes" in classified.stderr
    (label_under,) = [line.split(",", 1)[1] for line in classified.stdout.splitlines() if line.startswith("under.jpg,")]
    with Stack(tmp_path / "data", bound, **FAST, scaler__max="1") as stack:
        status, body = upload(stack.url, "over.jpg", images["over.jpg"])
        assert status == 413, body
        assert body == "image is 400x300, more than the 100000 pixels this model takes at the image's own size\n"
        assert upload(stack.url, "under.jpg", images["under.jpg"]) == (200, label_under + "\n")
    inputs = sorted(p.name for p in (tmp_path / "data" / "s3" / "input-bucket").iterdir())
    assert inputs == ["under.jpg"], "a refused upload was stored"


def test_a_model_at_the_images_own_size_gives_back_what_a_large_image_took(tmp_path, datasets):
    """ONNX Runtime's arena grows with the largest image a native-size model ran and kept it: a
    worker held 2.2 GB, idle, after one 16 MP image on ResNet-18 (0.17 GB before it). Each run
    now gives back what it grew by, and the model's first run, at its load, is on a small input
    (the arena never frees its first region). Here a 2 MP photo is the worker's first upload:
    ~0.44 GB at its peak, and before this kept 0.41 of it."""
    model = generated_models.resnet18(tmp_path)
    (photo,) = photos(datasets / "imagenet-100", 1, 1632, 1224)
    with Stack(tmp_path / "data", {"IMGREC__INFERENCE__MODEL_DIR": str(model)}, **FAST,
               scaler__min="1", scaler__max="1") as stack:
        assert upload(stack.url, "photo.jpg", photo, timeout=120)[0] == 200
        (worker,) = worker_pids(stack.data_dir)
        peak, now = peak_rss_mib(worker), rss_mib(worker)
    assert peak - now > 150, f"the worker keeps {now:.0f} MiB of its {peak:.0f} MiB peak"


def healthz_latency(url: str) -> float:
    started = time.monotonic()
    assert request(url, "GET", "/healthz") == 200
    return time.monotonic() - started


def test_metadata_bombs_cost_the_web_tier_and_the_worker_little(tmp_path, thumb):
    """A real photo as PNG with one iCCP, zTXt or iTXt chunk of ~2 MiB that inflates to 2 GiB:
    answered like the plain photo, with neither process growing by 100 MiB."""
    from PIL import Image

    plain = tmp_path / "photo.png"
    Image.open(thumb).convert("RGB").save(plain)
    want = reference_labels([plain])[plain.name]
    bombs = [png_metadata_bomb(plain.read_bytes(), kind) for kind in ("iCCP", "zTXt", "iTXt")]
    data = tmp_path / "data"
    with Stack(data, **{**FAST, "scaler__scale_in_after_s": "60"}, scaler__max="1") as stack:
        assert upload(stack.url, "plain.png", plain.read_bytes()) == (200, want + "\n")
        (worker,) = worker_pids(data)
        web_idle, worker_idle = peak_rss_mib(stack.proc.pid), peak_rss_mib(worker)
        with ThreadPoolExecutor(10) as pool:
            answers = pool.map(lambda i: upload(stack.url, f"bomb{i}.png", bombs[i % 3], timeout=120), range(9))
            slowest_health = max(healthz_latency(stack.url) for _ in range(20))
            answers = list(answers)
        assert answers == [(200, want + "\n")] * 9
        web_growth = peak_rss_mib(stack.proc.pid) - web_idle
        worker_growth = peak_rss_mib(worker) - worker_idle
    assert web_growth < 100, f"the web tier grew {web_growth:.0f} MiB on 9 metadata bombs"
    assert worker_growth < 100, f"the worker grew {worker_growth:.0f} MiB on 9 metadata bombs"
    assert slowest_health < 1, f"/healthz took {slowest_health:.2f}s during the bombs"


def test_slow_senders_do_not_hold_back_normal_uploads(tmp_path, thumb, thumb_label):
    """40 connections announce a 9 MiB body and trickle; a normal upload is answered at once."""
    image = thumb.read_bytes()
    with Stack(tmp_path / "data", **FAST) as stack:
        assert upload(stack.url, "warm.jpg", image) == (200, thumb_label + "\n")
        slow = [slow_sender(stack.url, 9 << 20, b"\xff" * 1024) for _ in range(40)]
        try:
            took = []
            for i in range(10):
                for s in slow:
                    s.sendall(b"\xff" * 64)
                started = time.monotonic()
                assert upload(stack.url, f"normal{i}.jpg", image, timeout=30) == (200, thumb_label + "\n")
                took.append(time.monotonic() - started)
        finally:
            for s in slow:
                s.close()
    assert max(took) < 5, f"normal uploads took {took} while 40 slow senders were connected"


def test_sigterm_with_hundreds_waiting_answers_each_and_exits_in_time(tmp_path, datasets):
    files = sorted((datasets / "imagenet-100").glob("*.JPEG"))
    want = reference_labels(files)
    drain = 4
    data = tmp_path / "data"
    # One worker: most of the 300 are still waiting when SIGTERM comes.
    stack = Stack(data, **FAST, scaler__max="1", web__drain_timeout_s=str(drain)).start()
    answers: dict[int, tuple[int, str]] = {}

    def send(i: int):
        f = files[i % len(files)]
        answers[i] = upload(stack.url, f"r{i}_{f.name}", f.read_bytes(), timeout=120)

    with ThreadPoolExecutor(300) as pool:
        futures = [pool.submit(send, i) for i in range(300)]
        # SIGTERM once every upload is in (waiting or answered): one still connecting would be
        # refused, rightly, since a draining web tier accepts nothing new.
        def all_in():
            waiting = stack.status()["waiting_requests"]
            return (waiting,) if waiting + len(answers) >= 300 else None

        (waiting,) = wait_until("all 300 are in", all_in, 60, every=0.02)
        started = time.monotonic()
        stack.proc.send_signal(signal.SIGTERM)
        code = stack.proc.wait(drain + 15)
        took = time.monotonic() - started
        for f in futures:
            f.result(timeout=30)
    assert code == 0, stack.logs()[-3000:]
    assert waiting >= 100, f"only {waiting} were waiting at SIGTERM"
    assert took < drain + 8, f"took {took:.1f}s to exit with a {drain}s drain"
    ok = {i: a for i, a in answers.items() if a[0] == 200}
    refused = {i: a for i, a in answers.items() if a[0] != 200}
    assert len(answers) == 300
    assert all(label_of(a[1]) == want[files[i % len(files)].name] for i, a in ok.items())
    assert all(a[0] == 503 and "shutting down" in a[1] for a in refused.values()), list(refused.values())[:3]
    assert ok, "no request was answered while draining"
    # Every result that reached the output bucket before the exit was delivered, or its client
    # was told it would be stored.
    outputs = {p.name for p in (data / "s3" / "output-bucket").iterdir()}
    assert {f"r{i}_{files[i % len(files)].stem}" for i in ok} <= outputs
    wait_until("nothing is left", lambda: stack_processes(data) == [], 10)


def test_a_second_signal_stops_the_drain_at_once(tmp_path, thumb):
    """With no worker allowed (max 0) nothing is answered; a 60 s drain would hold the exit, and
    a second Ctrl-C cuts it short: every waiting client gets 503 with the reason."""
    data = tmp_path / "data"
    stack = Stack(data, **FAST, scaler__max="0", web__drain_timeout_s="60").start()
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(upload, stack.url, f"w{n}.jpg", thumb.read_bytes(), timeout=60) for n in range(20)]
        wait_until("20 are waiting", lambda: stack.status()["waiting_requests"] == 20, 30, every=0.05)
        started = time.monotonic()
        stack.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert stack.proc.poll() is None, "exited before the drain"
        stack.proc.send_signal(signal.SIGINT)
        code = stack.proc.wait(15)
        took = time.monotonic() - started
        answers = [f.result(timeout=10) for f in futures]
    assert code == 0 and took < 6, (code, took)
    assert all(status == 503 and "shutting down" in body for status, body in answers), answers[:2]
    assert stack_processes(data) == []


def test_public_endpoints_give_the_gist_and_the_log_the_details(tmp_path, thumb, monkeypatch):
    """A web tier whose worker program is missing: the scaler fails with a message naming a path.
    `/status` and the dashboard's data say what failed without the path; the log has it all."""
    import shutil

    import local_stack

    alone = tmp_path / "secret-install-dir"
    alone.mkdir()
    shutil.copy2(local_stack.WEB_TIER, alone / "web-tier")
    monkeypatch.setattr(local_stack, "WEB_TIER", alone / "web-tier")
    with Stack(tmp_path / "data", **FAST) as stack:
        try:
            upload(stack.url, "a.jpg", thumb.read_bytes(), timeout=2)  # no worker can answer
        except OSError:
            pass
        error = wait_until("the scaler reports its failure", lambda: stack.status()["scaler_error"], 10)
        assert "cannot start <path>" in error, error
        assert str(alone) not in error and "secret-install-dir" not in error, error
        assert str(alone) in stack.logs(), "the log lost the details"
