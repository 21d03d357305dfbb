"""`make deploy` checks before it spends (tools/preflight.py): the decision is pure and tested on
facts; the reading of the account runs against a moto server."""

import os
import subprocess
import sys

from conftest import ROOT
from local_stack import MotoServer
from preflight import Facts, Plan, assess, cost_per_hour

PLAN = Plan("us-east-1", web_instances=1, instance_budget=20, app_min_size=0,
            app_instance_type="c7i.large", web_instance_type="t3.small")
ZONES = ["us-east-1a", "us-east-1b"]


def facts(**kw) -> Facts:
    base = dict(account="123456789012", region_enabled=True, vcpu_quota=64.0,
                vcpus={"c7i.large": 2, "t3.small": 2}, zones=ZONES,
                offered={(t, z) for t in ("c7i.large", "t3.small") for z in ZONES},
                prices={"c7i.large": 0.08925, "t3.small": 0.0208})
    return Facts(**(base | kw))


def test_a_quota_below_the_cap_is_a_warning_that_names_the_need_and_the_fix():
    """Finding: at the cap the deployment needs 40 On-Demand vCPUs; new accounts often have less,
    and launches beyond the quota failed only in the group's activity history."""
    v = assess(PLAN, facts(vcpu_quota=32.0))
    assert not v.refusals
    (warning,) = v.warnings
    assert "quota of us-east-1 is 32" in warning and "needs 40" in warning
    assert "cannot grow past 15 app instances" in warning
    assert "request-service-quota-increase" in warning and "--desired-value 40" in warning


def test_a_quota_below_the_minimum_refuses():
    v = assess(PLAN, facts(vcpu_quota=2.0))
    assert v.refusals and "needs 2 at its minimum" in v.refusals[0]


def test_no_credentials_or_a_disabled_region_refuse_at_once():
    v = assess(PLAN, Facts(unread={"account": "Unable to locate credentials"}))
    assert v.refusals == ["no AWS credentials that work: Unable to locate credentials (aws configure, AWS_PROFILE or SSO)"]
    assert "not enabled" in assess(PLAN, facts(region_enabled=False)).refusals[0]


def test_an_instance_type_not_offered_in_the_zones_refuses():
    offered = {("t3.small", z) for z in ZONES} | {("c7i.large", "us-east-1a")}
    (refusal,) = assess(PLAN, facts(offered=offered)).refusals
    assert "c7i.large is not offered in us-east-1b" in refusal


def test_cost_per_hour_at_the_minimum_and_at_the_cap():
    prices = {"c7i.large": 0.08925, "t3.small": 0.0208}
    # web-instance1 and its public address.
    assert abs(cost_per_hour(PLAN, prices, 0) - (0.0208 + 0.005)) < 1e-9
    # ...and 19 app instances, each with its address.
    assert abs(cost_per_hour(PLAN, prices, 19) - (0.0258 + 19 * (0.08925 + 0.005))) < 1e-9
    note = next(n for n in assess(PLAN, facts()).notes if n.startswith("cost per hour"))
    assert "$0.026 at the minimum" in note and "$1.82 at the cap (19)" in note


def test_the_check_runs_against_an_account(tmp_path):
    """Against moto: credentials, region, types and zones are read; the quota API (which moto
    lacks for EC2) is reported as unread, not taken for a pass; the costs are printed."""
    with MotoServer() as moto:
        env = {**os.environ, "AWS_ENDPOINT_URL": moto.endpoint, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing"}
        out = subprocess.run([sys.executable, str(ROOT / "tools" / "preflight.py"), "--region", "us-east-1"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    # The defaults: 1 app instance kept, 1 in the warm pool, Spot beyond: On-Demand needs the web
    # instance and 2 app instances at the cap, Spot the other 17.
    assert "could not read the On-Demand vCPU quota" in out.stdout and "needs 6 vCPUs" in out.stdout
    assert "could not read the Spot vCPU quota" in out.stdout and "Spot group needs 34 vCPUs" in out.stdout
    assert "at the minimum (1 app instances)" in out.stdout and "at the cap (19) On-Demand" in out.stdout
    assert "with Spot (17 of them Spot at 40% of the price)" in out.stdout
    # c7i.large hibernates (moto carries EC2's instance type facts): the Hibernated warm pool passes.
    assert "cannot hibernate" not in out.stdout


def test_the_account_says_which_types_hibernate(monkeypatch):
    """The facts come from DescribeInstanceTypes (against moto, which carries EC2's): a type that
    cannot hibernate is refused for a Hibernated warm pool."""
    from preflight import gather

    plan = Plan("us-east-1", web_instances=1, instance_budget=20, app_min_size=1, app_instance_type="c5n.large",
                web_instance_type="t3.small", warm_pool_size=1, warm_pool_state="Hibernated")
    with MotoServer() as moto:
        for name, value in {"AWS_ENDPOINT_URL": moto.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing"}.items():
            monkeypatch.setenv(name, value)
        seen = gather(plan)
    assert seen.hibernation == {"c5n.large": False, "t3.small": True}, seen.unread
    assert seen.memory_mib["c5n.large"] == 5376
    assert any("c5n.large cannot hibernate" in r for r in assess(plan, seen).refusals)


def test_with_spot_the_on_demand_quota_covers_the_base_and_the_spot_quota_the_rest():
    plan = Plan("us-east-1", web_instances=1, instance_budget=20, app_min_size=1, app_instance_type="c7i.large",
                web_instance_type="t3.small", warm_pool_size=1, spot=True, spot_discount=0.6)
    assert (plan.on_demand_app_max, plan.spot_app_max) == (2, 17)
    v = assess(plan, facts(vcpu_quota=32.0, spot_vcpu_quota=16.0))
    assert not v.refusals
    (warning,) = v.warnings
    assert "Spot vCPU quota of us-east-1 is 16" in warning and "needs 34" in warning and "L-34B43A08" in warning
    assert any("covers the cap's 6" in n for n in v.notes)
    note = next(n for n in v.notes if n.startswith("cost per hour"))
    on_demand = 0.0208 + 0.005 + 19 * (0.08925 + 0.005)
    with_spot = on_demand - 17 * 0.08925 * 0.6
    assert f"${on_demand:.2f} at the cap (19) On-Demand, ${with_spot:.2f} with Spot" in note


def test_a_hibernated_warm_pool_on_a_type_that_cannot_hibernate_refuses_before_the_build():
    """Finding: the warm pool's launch template enables hibernation, and EC2 refuses to launch such a
    template of a type that cannot hibernate (c5n, r6i, ...): every launch of the group would fail,
    after the ten-minute AMI build."""
    plan = Plan("us-east-1", web_instances=1, instance_budget=20, app_min_size=1, app_instance_type="c5n.large",
                web_instance_type="t3.small", warm_pool_size=1, warm_pool_state="Hibernated")
    kinds = {"c5n.large": False, "t3.small": True}
    seen = facts(vcpus={"c5n.large": 2, "t3.small": 2}, hibernation=kinds,
                 memory_mib={"c5n.large": 5376, "t3.small": 2048},
                 offered={(t, z) for t in kinds for z in ZONES}, prices={"c5n.large": 0.108, "t3.small": 0.0208})
    (refusal,) = assess(plan, seen).refusals
    assert "c5n.large cannot hibernate" in refusal and 'warm_pool_state = "Stopped"' in refusal
    # Stopped, or no warm pool at all, needs nothing of the type.
    for other in (Plan(**{**plan.__dict__, "warm_pool_state": "Stopped"}), Plan(**{**plan.__dict__, "warm_pool_size": 0})):
        assert not assess(other, seen).refusals
    # A type that hibernates, within EC2's 150 GiB of RAM, passes; a larger one does not.
    fine = Plan(**{**plan.__dict__, "app_instance_type": "c7i.large"})
    assert not assess(fine, facts(hibernation={"c7i.large": True}, memory_mib={"c7i.large": 4096})).refusals
    (refusal,) = assess(fine, facts(hibernation={"c7i.large": True}, memory_mib={"c7i.large": 192 * 1024})).refusals
    assert "192 GiB of RAM" in refusal
