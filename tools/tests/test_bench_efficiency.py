"""The efficiency bench's warm-up (tools/bench_efficiency.py): the measured burst starts with the pool
at its size for the load, so that no worker's model load is counted as serving."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_efficiency  # noqa: E402


class FakeStack:
    """A pool that grows by the workers each burst in `growth` starts (one entry per burst)."""

    def __init__(self, growth: list[int]):
        self.url, self.proc, self.data_dir = "http://127.0.0.1:1", SimpleNamespace(pid=1), Path("/nonexistent")
        self.pool = {100, 101}
        self.growth = list(growth)
        self.bursts = 0
        self.cpu = [0.0, 0.0, 0.0]

    def status(self) -> dict:
        return {"queue": {"pending": 0}}

    def burst(self) -> None:
        self.bursts += 1
        for _ in range(self.growth.pop(0) if self.growth else 0):
            self.pool.add(max(self.pool) + 1)
        # 300 images at 0.5 ms (web tier), 10 ms (workers), 9 ms (inference threads) each.
        self.cpu = [c + 300 * ms / 1000 for c, ms in zip(self.cpu, (0.5, 10.0, 9.0))]


@pytest.fixture
def fake(monkeypatch):
    def install(growth: list[int]) -> FakeStack:
        stack = FakeStack(growth)

        def loadgen(url, files, **_):
            stack.burst()
            return {"errors": 0, "requests": 300, "throughput_per_s": 180.0}, SimpleNamespace(stdout="")

        monkeypatch.setattr(bench_efficiency, "loadgen", loadgen)
        monkeypatch.setattr(bench_efficiency, "worker_pids", lambda _: sorted(stack.pool))
        monkeypatch.setattr(bench_efficiency, "process_tree_cpu", lambda *_: tuple(stack.cpu))
        monkeypatch.setattr(bench_efficiency, "wait_until", lambda *_, **__: None)
        return stack

    return install


def test_the_warm_up_goes_on_until_bursts_in_a_row_start_no_worker(fake):
    # Two workers, one more, none, one more (the scaler saw a higher completion rate), none, none.
    stack = fake([2, 1, 0, 1, 0, 0])
    run = bench_efficiency.burst_ms(stack, [Path("a.jpg")])
    assert bench_efficiency.STEADY == 2
    assert stack.bursts == 7, "six warm-ups (the last two start none), then the measured burst"
    assert run["workers_started"] == 0
    assert run["web_tier_ms"] == pytest.approx(0.5)
    assert run["workers_ms"] == pytest.approx(10.0)
    assert run["inference_thread_ms"] == pytest.approx(9.0)


def test_a_pool_still_growing_after_the_warm_ups_is_measured_and_said(fake):
    stack = fake([1] * 10)
    run = bench_efficiency.burst_ms(stack, [Path("a.jpg")])
    assert stack.bursts == bench_efficiency.WARM_UPS + 1
    assert run["workers_started"] == 1
    assert "1 of them started in the burst" in bench_efficiency.started(run)
    assert bench_efficiency.started({"workers_started": 0}) == ""


def test_the_cores_a_burst_kept_on_inference_set_the_second_baseline():
    # 9 ms of inference per image at 180 images/s: 1.62 cores busy with inference.
    run = {"inference_thread_ms": 9.0, "throughput_per_s": 180.0}
    assert bench_efficiency.busy_cores(run) == pytest.approx(1.62)
    assert bench_efficiency.own_concurrency(1.62, 2) is None, "2 cores, both busy: one process per core already"
    assert bench_efficiency.own_concurrency(6.6, 16) == 7
    assert bench_efficiency.own_concurrency(0.2, 16) == 1
    assert bench_efficiency.own_concurrency(15.6, 16) is None
