"""The deployment, rehearsed on this machine: moto behind the strict gateway (IAM and AWS's limits
enforced), the resources named as Terraform names them, each tier with its own role's policy as
Terraform renders it, the service configuration rendered from Terraform's template, web-instance1's
web tier and scaler started as their systemd units start them, and the app tier's Auto Scaling group
played by local processes (instances.py)."""

from __future__ import annotations

import json
from collections import Counter
import os
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3

from local_stack import MotoServer, free_port

from .aws_rules import ACCOUNT, PARTITION
from .gateway import Gateway, Principal
from .instances import InstancePlayer, wait_for
from .terraform import render

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release"
REGION = "us-east-1"
PREFIX = "imgrec"
WEB_NAME = "web-instance1"
ADMIN_KEY, WEB_KEY, APP_KEY = "AKIAREHEARSALOWNER00", "ASIAREHEARSALWEBTIER", "ASIAREHEARSALAPPTIER"

# Terraform's names for a deployment with name_prefix "imgrec" in the emulated account (main.tf,
# modules/queues); the group's MaxSize is instance_budget (20) - 1 web instance.
NAMES = {
    "input_bucket": f"{PREFIX}-{ACCOUNT}-input", "output_bucket": f"{PREFIX}-{ACCOUNT}-output",
    "lease_bucket": f"{PREFIX}-{ACCOUNT}-state", "request_queue": f"{PREFIX}-requests",
    "dead_letter_queue": f"{PREFIX}-requests-dlq", "response_queue": f"{PREFIX}-responses",
    "auto_scaling_group": f"{PREFIX}-app-tier", "spot_group": f"{PREFIX}-app-tier-spot", "metric_namespace": PREFIX,
}
# The app tier's groups as main.tf sizes them with Spot on, app_min_size 0 and no warm pool: the
# On-Demand group takes the first instance, the Spot group the other 18 of instance_budget (20) - 1
# web instance.
GROUP_MAX = 19
ON_DEMAND_MAX = 1

# What the rehearsal changes of the deployed settings, so that a burst takes seconds, not minutes:
# timing only. Everything else is the rendered configuration.
TIMING = {
    "IMGREC__SCALER__TARGET_LATENCY_S": "2", "IMGREC__SCALER__BOOT_TIME_S": "1",
    "IMGREC__SCALER__SCALE_IN_AFTER_S": "3", "IMGREC__SCALER__TICK_MS": "500",
    "IMGREC__APP_TIER__POLL_WAIT_MS": "1000",
}


def sqs_arn(name: str) -> str:
    return f"arn:{PARTITION}:sqs:{REGION}:{ACCOUNT}:{name}"


def rendered() -> dict:
    """The roles' policies and the service configuration, rendered by Terraform for these names."""
    bucket = lambda n: f"arn:{PARTITION}:s3:::{n}"
    policies = {
        "partition": PARTITION, "region": REGION, "account_id": ACCOUNT,
        "input_bucket_arn": bucket(NAMES["input_bucket"]), "output_bucket_arn": bucket(NAMES["output_bucket"]),
        "lease_bucket_arn": bucket(NAMES["lease_bucket"]), "request_queue_arn": sqs_arn(NAMES["request_queue"]),
        "response_queue_arns": [sqs_arn(f"{NAMES['response_queue']}-{WEB_NAME}")],
        "dead_letter_arn": sqs_arn(NAMES["dead_letter_queue"]),
        "app_group_name": NAMES["auto_scaling_group"], "spot_group_name": NAMES["spot_group"],
        "metric_namespace": NAMES["metric_namespace"],
    }
    config = {**NAMES, "region": REGION, "response_timeout_s": 120, "max_receives": 3, "visibility_timeout_s": 15,
              "batch_size": 8, "job_retention_s": 86400, "api_keys_parameter": "", "app_min_size": 0, "app_max_size": GROUP_MAX,
              "inference_threads": 1, "launch_hook": ""}
    return render(policy_values=policies, config_values=config)


@dataclass
class Outcome:
    ok: int
    wrong: int
    errors: int
    peak_instances: int
    # The most instances each group had at once.
    group_peaks: dict
    final_instances: int
    calls: int
    denied: int
    stats: dict


class Rehearsal:
    def __init__(self, workdir: Path | None = None, timing: dict | None = None, app_env: dict | None = None):
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="imgrec-rehearsal-")
        self.dir = Path(workdir or self._tmp.name)
        self.timing = TIMING if timing is None else timing
        # What differs on the app tier's instances (a broken model, say).
        self.app_env = app_env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.moto = MotoServer()
        self.procs: dict[str, subprocess.Popen] = {}
        self.player: InstancePlayer | None = None
        self.gateway: Gateway | None = None

    def env(self, key: str) -> dict:
        """A tier's environment: its unit's (IMGREC_CONFIG, RUST_LOG), its role's credentials, and
        what differs on this machine (endpoint, model and library paths, loopback port)."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
            "IMGREC_CONFIG": str(self.dir / "imgrec.toml"), "RUST_LOG": "info",
            "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": "rehearsal", "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "IMGREC__AWS__ENDPOINT_URL": self.gateway.endpoint,
            "IMGREC__INFERENCE__MODEL_DIR": str(ROOT / "models" / "efficientnet-lite0"),
            "IMGREC__INFERENCE__ONNXRUNTIME_LIB": str(ROOT / ".ort" / "libonnxruntime.so.1.31.1"),
            "IMGREC__WEB__HOST": "127.0.0.1", "PORT": str(self.port),
            **self.timing,
        }

    def __enter__(self) -> "Rehearsal":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        docs = rendered()
        self.policies = {"web_tier": docs["web_tier"], "app_tier": docs["app_tier"]}
        (self.dir / "imgrec.toml").write_text(docs["service_config"])
        (self.dir / "policies.json").write_text(json.dumps(self.policies, indent=2))
        (self.dir / "logs").mkdir(exist_ok=True)
        self.moto.__enter__()
        self.gateway = Gateway(self.moto.endpoint).start()
        account = f"arn:{PARTITION}:iam::{ACCOUNT}"
        self.gateway.add_principal(ADMIN_KEY, Principal("owner", f"{account}:root", None))
        for key, role, session in ((WEB_KEY, "web_tier", WEB_NAME), (APP_KEY, "app_tier", "app-tier")):
            arn = f"arn:{PARTITION}:sts::{ACCOUNT}:assumed-role/{PREFIX}-{role.replace('_', '-')}/{session}"
            self.gateway.add_principal(key, Principal(role, arn, [self.policies[role]]))
        self.bootstrap()
        web_env = {**self.env(WEB_KEY), **self.instance_env()}
        self.spawn("web-tier", [BIN / "web-tier"], web_env)
        self.spawn("scaler", [BIN / "scaler", "run"], web_env)
        self.player = InstancePlayer(self.moto.endpoint, [NAMES["auto_scaling_group"], NAMES["spot_group"]],
                                     {**self.env(APP_KEY), **self.app_env}, self.dir / "instances", self.dir / "logs").start()
        wait_for("the web tier answers", lambda: self._healthy(), 60)

    def instance_env(self) -> dict:
        """/etc/imgrec/instance.env of web-instance1, as main.tf renders its user data."""
        return {"IMGREC__WEB__NAME": WEB_NAME}

    def bootstrap(self):
        """The resources Terraform creates, created here by the account's owner."""
        env = {**self.env(ADMIN_KEY), **{f"IMGREC__{k}": v for k, v in {
            "BACKEND": "aws", "BUCKETS__INPUT": NAMES["input_bucket"], "BUCKETS__OUTPUT": NAMES["output_bucket"],
            "QUEUES__REQUESTS": NAMES["request_queue"], "QUEUES__DEAD_LETTER": NAMES["dead_letter_queue"],
            "QUEUES__RESPONSES": NAMES["response_queue"], "AWS__LEASE_BUCKET": NAMES["lease_bucket"],
            "AWS__AUTO_SCALING_GROUP": NAMES["auto_scaling_group"], "FLEET__BACKEND": "aws"}.items()}}
        env.pop("IMGREC_CONFIG")
        out = subprocess.run([BIN / "scaler", "bootstrap", "--group-max-size", str(ON_DEMAND_MAX)], env=env,
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"bootstrap failed:\n{out.stderr}")
        # The Spot group beside it, from the same launch template (moto plays Spot instances as any
        # other: what is rehearsed is the services' calls on two groups under their roles).
        autoscaling = boto3.client("autoscaling", endpoint_url=self.moto.endpoint, region_name=REGION,
                                   aws_access_key_id="owner", aws_secret_access_key="owner")
        od = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[NAMES["auto_scaling_group"]])
        od = od["AutoScalingGroups"][0]
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=NAMES["spot_group"], MinSize=0, MaxSize=GROUP_MAX - ON_DEMAND_MAX, DesiredCapacity=0,
            LaunchTemplate={k: od["LaunchTemplate"][k] for k in ("LaunchTemplateName", "Version")},
            AvailabilityZones=od["AvailabilityZones"])

    def spawn(self, name: str, args: list, env: dict):
        log = open(self.dir / "logs" / f"{name}.log", "wb")
        # A session of its own: Ctrl-C reaches the rehearsal only, which stops the parts in order.
        self.procs[name] = subprocess.Popen([str(a) for a in args], env={**env, "DATA_DIR": str(self.dir / name)},
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _healthy(self) -> bool:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.log(name)[-3000:]}")
        try:
            return urllib.request.urlopen(self.url + "healthz", timeout=2).status == 200
        except OSError:
            return False

    def log(self, name: str) -> str:
        path = self.dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def status(self) -> dict:
        return json.loads(urllib.request.urlopen(self.url + "status", timeout=5).read())

    def stats(self) -> dict:
        return self.gateway.stats.snapshot()

    def wait_back_at_min(self, timeout_s: float = 90) -> int:
        """Waits until the group and the played instances are back at the minimum (0)."""
        wait_for("the group back at its minimum", lambda: self.player.live() == 0 and not self.player.instances(),
                 timeout_s)
        return len(self.player.instances())

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.player:
            self.player.stop()
        if self.gateway:
            self.gateway.stop()
        self.moto.__exit__(None, None, None)
        if self._tmp:
            self._tmp.cleanup()


def report(outcome: Outcome) -> str:
    lines = [
        f"uploads: {outcome.ok} right, {outcome.wrong} wrong, {outcome.errors} errors",
        f"app tier groups: peak {outcome.peak_instances} instances ("
        + ", ".join(f"{g}: {n}" for g, n in outcome.group_peaks.items()) + f"), back to {outcome.final_instances}",
        f"AWS calls: {outcome.calls} made, {outcome.denied} denied",
    ]
    for k, n in outcome.stats["calls"].items():
        denied = outcome.stats["denied"].get(k, 0)
        lines.append(f"  {k}: {n}" + (f" ({denied} denied)" if denied else ""))
    for k, n in outcome.stats["faults"].items():
        lines.append(f"  refused as AWS would: {k}: {n}")
    denials = Counter((d["principal"], d["operation"], d["missing"]) for d in outcome.stats["denials"])
    for (principal, operation, missing), n in denials.most_common(10):
        lines.append(f"  denied: {principal} {operation}: needs {missing} ({n}x of the last 50 denials)")
    return "\n".join(lines)


def burst_outcome(rehearsal: Rehearsal, summary: dict) -> Outcome:
    final = rehearsal.wait_back_at_min()
    stats = rehearsal.stats()
    return Outcome(summary["ok"], summary["wrong"], summary["errors"], rehearsal.player.peak,
                   dict(rehearsal.player.peaks), final,
                   stats["total_calls"], stats["total_denied"], stats)
