"""A front for a moto server that answers as AWS would where moto does not: every call is authorized
against the caller's IAM policies by a real policy evaluator (iam_evaluator.mjs), and the limits and
behaviours of AWS that the services rely on are enforced (each cited to AWS's documentation in
`aws_rules.py`). Calls are counted by caller and operation, denials listed: GET /_rehearsal/stats.

Callers are identified by their access key id; the keys are the gateway's own (`add_principal`). The
signature is not verified: this checks what each role may do, not who holds its keys."""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import aws_rules
from .aws_rules import ACCOUNT, AwsFault, Call

HERE = Path(__file__).resolve().parent


@dataclass
class Principal:
    name: str
    arn: str
    # None: the account's owner (bootstrap, the EC2 stand-in), allowed everything.
    policies: list[dict] | None


class Evaluator:
    """iam_evaluator.mjs as a long-lived child: one request a line, answers in order."""

    def __init__(self):
        self.proc = subprocess.Popen(["node", str(HERE / "iam_evaluator.mjs")], cwd=HERE, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lock = threading.Lock()
        self.cache: dict[str, str] = {}

    def decide(self, principal: Principal, action: str, resource: str, context: dict) -> str:
        request = json.dumps({"policies": principal.policies, "principal": principal.arn, "action": action,
                              "resource": resource, "account": ACCOUNT, "context": context}, sort_keys=True)
        with self.lock:
            if request not in self.cache:
                self.proc.stdin.write(request + "\n")
                answer = json.loads(self.proc.stdout.readline() or '{"error": "the evaluator exited"}')
                self.cache[request] = answer.get("decision") or f"Error: {answer.get('error')}"
            return self.cache[request]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: Counter = field(default_factory=Counter)
    denied: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    denials: list = field(default_factory=list)

    def deny(self, key: tuple[str, str], missing: str):
        """Counts a denied call of `key` (caller, operation) and keeps what it lacked."""
        with self.lock:
            self.denied[key] += 1
            self.denials.append({"principal": key[0], "operation": key[1], "missing": missing, "at": time.time()})

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "calls": {f"{p} {op}": n for (p, op), n in sorted(self.calls.items())},
                "denied": {f"{p} {op}": n for (p, op), n in sorted(self.denied.items())},
                "faults": {f"{p} {op} {code}": n for (p, op, code), n in sorted(self.faults.items())},
                "denials": list(self.denials[-50:]),
                "total_calls": sum(self.calls.values()),
                "total_denied": sum(self.denied.values()),
            }


class Gateway:
    def __init__(self, upstream: str, port: int = 0):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.principals: dict[str, Principal] = {}
        self.evaluator = Evaluator()
        self.stats = Stats()
        self.moto = aws_rules.MotoView(upstream)
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add_principal(self, access_key: str, principal: Principal):
        self.principals[access_key] = principal

    def start(self) -> "Gateway":
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.evaluator.close()

    def allowed(self, principal: Principal, call: Call) -> tuple[bool, str]:
        """Whether every permission the call needs is granted, and the first one that is not."""
        if principal.policies is None:
            return True, ""
        if call.checks is None:
            return False, f"{call.service}:{call.operation} (a request the rehearsal cannot map to IAM actions)"
        for action, resource, context in call.checks:
            decision = self.evaluator.decide(principal, action, resource, context)
            if decision != "Allowed":
                return False, f"{action} on {resource} ({decision})"
        return True, ""

    def may(self, principal: Principal, action: str, resource: str) -> bool:
        return principal.policies is None or self.evaluator.decide(principal, action, resource, {}) == "Allowed"

    def _handler(self):
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.handle_any()

            do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

            def body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunk = self.rfile.read(size)
                        self.rfile.readline()
                        if size == 0:
                            break
                        chunks.append(chunk)
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def reply(self, status: int, headers: list[tuple[str, str]], body: bytes):
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if self.command != "HEAD":
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the caller is gone (a stopped tier)

            def handle_any(self):
                try:
                    self.handle_call()
                except Exception as e:  # a request the rules do not expect: an error, not a hang
                    fault = AwsFault(500, "InternalError", f"the rehearsal's gateway failed on this request: {e!r}")
                    self.reply(*fault.response("unknown", "", self.command))

            def handle_call(self):
                body = self.body()
                if self.path.startswith("/_rehearsal/stats"):
                    return self.reply(200, [("Content-Type", "application/json")],
                                      json.dumps(gateway.stats.snapshot()).encode())
                try:
                    call = aws_rules.parse(self.command, self.path, self.headers, body, gateway.moto)
                except AwsFault as fault:
                    return self.reply(*fault.response("unknown", "", self.command))
                principal = gateway.principals.get(call.access_key)
                if principal is None:
                    fault = AwsFault(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
                    return self.reply(*fault.response(call.service, call.protocol, self.command))
                key = (principal.name, call.operation)
                with gateway.stats.lock:
                    gateway.stats.calls[key] += 1
                ok, missing = gateway.allowed(principal, call)
                if not ok:
                    gateway.stats.deny(key, missing)
                    fault = aws_rules.access_denied(call, principal.arn, missing)
                    return self.reply(*fault.response(call.service, call.protocol, self.command))
                try:
                    aws_rules.check_limits(call, gateway.moto)
                    try:
                        status, headers, out = gateway.forward(self.command, self.path, self.headers, body)
                    except (OSError, http.client.HTTPException) as e:
                        raise AwsFault(503, "ServiceUnavailable", f"the emulated AWS did not answer: {e}") from e
                    aws_rules.check_answer(call, status, lambda a, r: gateway.may(principal, a, r))
                except AwsFault as fault:
                    with gateway.stats.lock:
                        gateway.stats.faults[(principal.name, call.operation, fault.code)] += 1
                    if fault.code == "AccessDenied":
                        # S3's answer for a missing key without s3:ListBucket: a denial too.
                        gateway.stats.deny(key, f"s3:ListBucket on {call.bucket} (to read a missing key as 404)")
                    return self.reply(*fault.response(call.service, call.protocol, self.command))
                self.reply(status, headers, out)

        return Handler

    def forward(self, method: str, path: str, headers, body: bytes) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            out_headers = {k: v for k, v in headers.items() if k.lower() not in ("transfer-encoding", "connection")}
            out_headers["Content-Length"] = str(len(body))
            conn.request(method, path, body=body, headers=out_headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()
