"""The profile's attribution of perf samples to stages (tools/profile_burst.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from profile_burst import OTHER, breakdown  # noqa: E402

SCRIPT = """\
100/101 cpu-clock:ppp:
\tffff sqlite3_step (/x/web-tier)
\tffff imgrec_local::sqlite_queue::SqliteQueue::send_batch (/x/web-tier)
\tffff web_tier::app::App::classify (/x/web-tier)

100/102 cpu-clock:ppp:
\tffff decode_mcu (/x/web-tier)
\tffff imgrec_classifier::decode::jpeg::verify (/x/web-tier)
\tffff web_tier::upload::validate (/x/web-tier)
\tffff hyper::proto::h1::dispatch (/x/web-tier)

200/201 cpu-clock:ppp:
\t1345070 [unknown] (/w/.ort/libonnxruntime.so.1.31.1)
\tffff imgrec_classifier::Classifier::logits (/x/app-tier)

200/203 cpu-clock:ppp:
\tffff clear_page_erms ([kernel.kallsyms])

999/999 cpu-clock:ppp:
\tffff something (/x/loadgen)
"""


def test_samples_go_to_the_outermost_named_stage_of_their_process():
    table = breakdown(SCRIPT, web={100}, workers={200})
    assert table["web tier"] == {"queue send (SQLite)": 1, "validate (decode the upload)": 1}
    assert table["workers"] == {"inference (ONNX Runtime)": 1, OTHER: 1}
    assert sum(table["web tier"].values()) + sum(table["workers"].values()) == 4, "loadgen's sample is not counted"


def test_fsync_times_are_read_from_strace_output():
    from profile_burst import fsync_times
    text = """\
1234  fsync(12)                         = 0 <0.000210>
1235  fdatasync(7 <unfinished ...>
1235  <... fdatasync resumed>)          = 0 <0.001500>
1236  fsync(9)                          = -1 EIO (Input/output error) <0.000100>
"""
    # A resumed call carries its time on the resumed line, which names the call too.
    assert fsync_times(text) == [0.00021, 0.0015, 0.0001]
