"""Bench data folders (`scratch_dir` in tools/local_stack.py): kept for `make bench` to delete
after its last bench, deleted on exit otherwise."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from local_stack import scratch_dir  # noqa: E402


def test_under_make_bench_the_data_stays_until_the_target_deletes_it(tmp_path, monkeypatch):
    root = tmp_path / "scratch"
    monkeypatch.setenv("IMGREC_BENCH_SCRATCH", str(root))
    with scratch_dir("imgrec-a-") as first, scratch_dir("imgrec-a-") as second:
        (first / "file").write_text("kept")
    assert first != second
    assert first.parent == root and first.name.startswith("imgrec-a-")
    assert (first / "file").read_text() == "kept"


def test_by_hand_the_data_is_deleted_on_exit(monkeypatch):
    monkeypatch.delenv("IMGREC_BENCH_SCRATCH", raising=False)
    with scratch_dir("imgrec-b-") as folder:
        (folder / "file").write_text("gone")
    assert not folder.exists()
