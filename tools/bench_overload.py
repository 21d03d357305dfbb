#!/usr/bin/env python3
"""Admission control under overload, for `make bench`: a local stack whose pool at its cap clears
far fewer uploads within the response timeout than arrive at once (scaler.max 1, timeout 15 s).
Every upload is sent at once; the refused ones must get 503 with Retry-After quickly, and every
accepted one its right label. Prints the counts, the refusals' latency (median and max) and the
accepted ones' labels checked against the reference classifier. Median of --rounds."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))

from hostile import multipart  # noqa: E402
from local_stack import Stack, scratch_dir  # noqa: E402

import http.client  # noqa: E402
from urllib.parse import urlparse  # noqa: E402

# One worker clearing some 20-60 uploads a second here, 15 s to answer: a few hundred at most.
# (The response timeout must outlast max_receives x visibility + 10 s.)
SETTINGS = {"scaler__max": "1", "scaler__tick_ms": "200", "scaler__service_time_s": "0.05",
            "web__response_timeout_s": "15", "queues__visibility_timeout_s": "2", "queues__max_receives": "1"}


def post(url: str, name: str, body: bytes) -> tuple[int, str, str | None, float]:
    payload, content_type = multipart(name, body)
    u = urlparse(url)
    started = time.monotonic()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    try:
        conn.request("POST", "/", body=payload, headers={"Content-Type": content_type})
        r = conn.getresponse()
        text = r.read().decode(errors="replace").strip()
        return r.status, text, r.getheader("Retry-After"), time.monotonic() - started
    finally:
        conn.close()


def one_round(files: list[Path], want: dict[str, str], uploads: int, tmp: Path) -> dict:
    with Stack(tmp / f"data-{time.monotonic_ns()}", **SETTINGS) as stack:
        bodies = [(f"{i}_{files[i % len(files)].name}", files[i % len(files)]) for i in range(uploads)]
        with ThreadPoolExecutor(uploads) as pool:
            results = list(pool.map(lambda nb: (nb[1].name, *post(stack.url, nb[0], nb[1].read_bytes())), bodies))
    refused = [r for r in results if r[1] == 503]
    accepted = [r for r in results if r[1] == 200]
    wrong = [r for r in accepted if r[2] != want[r[0]]]
    other = [r for r in results if r[1] not in (200, 503)]
    return {
        "accepted": len(accepted), "refused": len(refused), "other": len(other), "wrong_labels": len(wrong),
        "refused_with_retry_after": sum(1 for r in refused if r[3] and int(r[3]) >= 1),
        "refusal_p50_ms": statistics.median(r[4] for r in refused) * 1e3 if refused else None,
        "refusal_max_ms": max(r[4] for r in refused) * 1e3 if refused else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("images", type=Path)
    ap.add_argument("--uploads", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    files = sorted(args.images.glob("*.JPEG"))[:20]
    out = subprocess.run([sys.executable, "tools/reference.py", "--model", "models/efficientnet-lite0", *map(str, files)],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    want = dict(line.split(",", 1) for line in out.splitlines())
    with scratch_dir("imgrec-overload-") as tmp:
        rounds = [one_round(files, want, args.uploads, tmp) for _ in range(args.rounds)]
    for r in rounds:
        print("round:", r)
    med = lambda k: statistics.median(r[k] for r in rounds if r[k] is not None)  # noqa: E731
    print(f"overload ({args.uploads} at once, scaler.max 1, timeout 15 s; median of {args.rounds}): "
          f"{med('accepted'):.0f} accepted, {med('refused'):.0f} refused (503 + Retry-After), "
          f"{med('other'):.0f} other, {med('wrong_labels'):.0f} wrong labels; refusals answered in "
          f"{med('refusal_p50_ms'):.1f} ms median, {med('refusal_max_ms'):.1f} ms at most")
    ok = all(r["other"] == 0 and r["wrong_labels"] == 0 and r["refused"] > 0
             and r["refused_with_retry_after"] == r["refused"] for r in rounds)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
