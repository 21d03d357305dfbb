"""The benches' CPU readings (`cpu_s`, `thread_cpu_s` in tools/local_stack.py): another process's
CPU to the nanosecond, its ended threads included, where `/proc`'s ticks are 10 ms."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from local_stack import cpu_s, cpu_times, thread_cpu_s  # noqa: E402

# A process with a thread named `gone` that burns 0.2 s of CPU and ends, and one named `burner`
# that burns 0.2 s and stays; it says `ready` after both, and exits when its stdin closes.
CHILD = """
import ctypes, sys, threading, time
libc = ctypes.CDLL(None)
def burn(name, stay):
    libc.prctl(15, name.encode())  # PR_SET_NAME: this thread's comm
    end = time.thread_time() + 0.2
    while time.thread_time() < end:
        pass
    if stay:
        sys.stdin.read()
gone = threading.Thread(target=burn, args=("gone", False))
gone.start()
gone.join()
burner = threading.Thread(target=burn, args=("burner", True))
burner.start()
while open(f"/proc/self/task/{burner.native_id}/comm").read().strip() != "burner":
    time.sleep(0.001)
print("ready", burner.native_id, flush=True)
burner.join()
"""


def test_a_processes_cpu_is_read_exactly_with_its_ended_threads_and_its_named_threads_alone():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        word, tid = child.stdout.readline().split()
        assert word == "ready"
        # Ready once the burner is named; its 0.2 s may still be under way: wait for it (10 s at most).
        for _ in range(1000):
            if thread_cpu_s(child.pid, "burner") >= 0.2:
                break
            time.sleep(0.01)
        burner = thread_cpu_s(child.pid, "burner")
        total = cpu_s(child.pid)
        ticks = sum(cpu_times(child.pid))
        assert Path(f"/proc/{child.pid}/task/{tid}").exists()
        assert 0.2 <= burner < 0.3, burner
        # Both burns, the ended thread's too, and no more than the interpreter's start besides.
        assert 0.4 <= total < 1.0, total
        assert total - burner >= 0.2, (total, burner)
        # The same time as /proc's ticks count, without their 10 ms steps.
        assert abs(total - ticks) <= 0.03, (total, ticks)
        assert total != round(total, 2) and burner != round(burner, 2), (total, burner)
        assert thread_cpu_s(child.pid, "no such thread") == 0.0
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    with pytest.raises(OSError):
        cpu_s(child.pid)
