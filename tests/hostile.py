"""Helpers of the fault and hostile-input suite: raw multipart bodies, uploads that return the
status instead of raising, decompression bombs, peak RSS of a process."""

from __future__ import annotations

import http.client
import io
import json
import socket
import uuid
import zlib
import struct
from pathlib import Path
from urllib.parse import urlparse


def multipart(name: str, body: bytes, field: str = "myfile") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + body + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload(url: str, name: str, body: bytes, *, chunked: bool = False, timeout: float = 120,
           json_answer: bool = False) -> tuple[int, str]:
    """POSTs one file; returns (status, body text). Names may be any UTF-8."""
    payload, content_type = multipart(name, body)
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    headers = {"Content-Type": content_type}
    if json_answer:
        headers["Accept"] = "application/json"
    try:
        if chunked:
            pieces = (payload[i:i + 65536] for i in range(0, len(payload), 65536))
            conn.request("POST", "/", body=pieces, headers=headers, encode_chunked=True)
        else:
            conn.request("POST", "/", body=payload, headers=headers)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def request(url: str, method: str, path: str) -> int:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def png_bomb(width: int, height: int) -> bytes:
    """An all-zero RGBA PNG: a few hundred KB that inflate to width x height x 4 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compressobj(9)
    row = b"\0" + b"\0" * (width * 4)
    data = b"".join(raw.compress(row) for _ in range(height)) + raw.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def jpeg_bomb(width: int, height: int, progressive: bool) -> bytes:
    """A flat gray JPEG of width x height (Pillow), baseline or progressive."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(out, "JPEG", quality=50, progressive=progressive)
    return out.getvalue()


def jpeg_scan_bomb(width: int, height: int, scans: int) -> bytes:
    """A flat gray progressive JPEG whose last scan is repeated until it has `scans`: each repeat
    walks every block of the image again, in a few bytes."""
    progressive = jpeg_bomb(width, height, progressive=True)
    starts = [i for i in range(len(progressive) - 1) if progressive[i:i + 2] == b"\xff\xda"]
    body, eoi = progressive[:-2], progressive[-2:]
    return body + body[starts[-1]:] * (scans - len(starts)) + eoi


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM) so far."""
    return status_mib(pid, "VmHWM")


def rss_mib(pid: int) -> float:
    """The process's resident set (VmRSS) now."""
    return status_mib(pid, "VmRSS")


def status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def open_sockets(pid: int) -> int:
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if fd.readlink().name.startswith("socket:"):
                n += 1
        except OSError:
            continue
    return n


def connect(url: str) -> socket.socket:
    u = urlparse(url)
    return socket.create_connection((u.hostname, u.port), timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes (or resets) the connection within `seconds`."""
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def label_of(answer: str) -> str:
    return json.loads(answer)["label"] if answer.startswith("{") else answer.strip()


def zlib_zeros(mib: int) -> bytes:
    """A zlib stream of `mib` MiB of zeros, about 1000:1, built without compressing it all: after a
    full flush the compressor starts afresh, so every further MiB compresses to the same bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(1 << 20)
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(mib):
        adler = zlib.adler32(block, adler)
    return b"\x78\xda" + first + again * (mib - 1) + c.flush() + struct.pack(">I", adler)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_metadata_bomb(png: bytes, kind: str, mib: int = 2048) -> bytes:
    """`png` with one compressed metadata chunk (iCCP, zTXt or iTXt) right after IHDR that inflates
    to `mib` MiB: a real photo that costs a careless decoder gigabytes."""
    bomb = zlib_zeros(mib)
    data = {
        "iCCP": b"icc\0\0" + bomb,
        "zTXt": b"Comment\0\0" + bomb,
        "iTXt": b"XML:com.adobe.xmp\0\x01\0\0\0" + bomb,
    }[kind]
    after_ihdr = 8 + 8 + 13 + 4
    return png[:after_ihdr] + png_chunk(kind.encode(), data) + png[after_ihdr:]


def slow_sender(url: str, announced: int, first: bytes = b"") -> socket.socket:
    """A POST that announces `announced` body bytes and sends only the multipart head and `first`."""
    sock = connect(url)
    head = (f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {announced}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
            f"--b\r\nContent-Disposition: form-data; name=\"myfile\"; filename=\"slow.jpg\"\r\n\r\n").encode()
    sock.sendall(head + first)
    return sock
