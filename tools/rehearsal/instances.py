"""EC2 for the rehearsal: every instance the app tier's Auto Scaling groups (On-Demand, Spot) start in
moto is played by a local app-tier process, started as that instance's systemd unit starts it (packer/files/
imgrec-app-tier.service: `app-tier run --name %H` with IMGREC_CONFIG and /etc/imgrec/instance.env)
and with that instance's id; an instance that leaves the group is stopped as systemd stops a unit
(SIGTERM, SIGKILL after TimeoutStopSec). Naming (Name tags), scale-in protection and termination
all go through the services' real AWS adapters; this only plays the machines."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parents[2]
APP_TIER = ROOT / "target" / "release" / "app-tier"
UNIT = ROOT / "packer" / "files" / "imgrec-app-tier.service"


def unit_setting(name: str) -> str:
    """A setting of the app tier's systemd unit, as the AMI installs it."""
    for line in UNIT.read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1]
    raise KeyError(name)


class InstancePlayer:
    def __init__(self, moto_endpoint: str, groups: list[str], env: dict, data_dir: Path, log_dir: Path):
        kw = dict(endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="ec2",
                  aws_secret_access_key="ec2")
        self.autoscaling = boto3.client("autoscaling", **kw)
        self.ec2 = boto3.client("ec2", **kw)
        self.groups, self.env, self.data_dir, self.log_dir = groups, env, data_dir, log_dir
        self.stop_timeout_s = int(unit_setting("TimeoutStopSec"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping: list[threading.Thread] = []
        self.peak = 0
        # The most instances each group had at once.
        self.peaks = dict.fromkeys(groups, 0)
        # Every instance id played so far (a restarted worker counts once).
        self.seen: set[str] = set()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "InstancePlayer":
        self._thread.start()
        return self

    def by_group(self) -> dict[str, list[str]]:
        """The Pending and InService instances of each group."""
        groups = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=self.groups)["AutoScalingGroups"]
        return {g["AutoScalingGroupName"]: [i["InstanceId"] for i in g["Instances"]
                                            if i["LifecycleState"] in ("Pending", "InService")] for g in groups}

    def instances(self) -> list[str]:
        return [i for live in self.by_group().values() for i in live]

    def _hostname(self, instance_id: str) -> str:
        """%H of the unit: the instance's host name (ip-10-0-0-5 from its private DNS name)."""
        reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        dns = reservations[0]["Instances"][0].get("PrivateDnsName", "") if reservations else ""
        return dns.split(".")[0] or instance_id

    def _launch(self, instance_id: str):
        name = self._hostname(instance_id)
        # ExecStart=/opt/imgrec/bin/app-tier run --name %H
        args = unit_setting("ExecStart").replace("/opt/imgrec/bin/app-tier", str(APP_TIER)).replace("%H", name).split()
        env = {**self.env, "IMGREC__AWS__INSTANCE_ID": instance_id, "DATA_DIR": str(self.data_dir / instance_id)}
        log = open(self.log_dir / f"{instance_id}.log", "wb")
        self.procs[instance_id] = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                   start_new_session=True)
        self.seen.add(instance_id)

    def _retire(self, instance_id: str):
        proc = self.procs.pop(instance_id)

        def stop():
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        t = threading.Thread(target=stop, daemon=True)
        t.start()
        self.stopping.append(t)

    def _run(self):
        said = ""
        while not self._halt.is_set():
            try:
                groups = self.by_group()
                live = [i for ids in groups.values() for i in ids]
                for group, ids in groups.items():
                    self.peaks[group] = max(self.peaks.get(group, 0), len(ids))
                said = ""
            except Exception as e:  # moto busy or stopping: try again next round
                if str(e) != said:
                    print(f"rehearsal: cannot describe the group (trying again): {e}")
                said = str(e)
                live = list(self.procs)
            self.peak = max(self.peak, len(live))
            for i in live:
                if i not in self.procs:
                    self._launch(i)
            for i in list(self.procs):
                if i not in live:
                    self._retire(i)
                elif self.procs[i].poll() is not None:
                    # Restart=always, RestartSec=2
                    print(f"rehearsal: {i}'s worker exited ({self.procs[i].returncode}); systemd restarts it")
                    self.procs.pop(i)
            self._halt.wait(0.25)

    def stop(self):
        self._halt.set()
        self._thread.join(5)
        for i in list(self.procs):
            self._retire(i)
        for t in self.stopping:
            t.join()

    def live(self) -> int:
        return len(self.procs)


def wait_for(what: str, predicate, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not within {timeout_s} s")
