#!/usr/bin/env python3
"""`make deploy`'s checks before it spends anything: credentials and region, the On-Demand vCPU quota
against what the deployment needs at its minimum and at the cap, that the instance types are offered
in the zones Terraform will use, that the app instance type can hibernate where the warm pool
waits Hibernated, and the cost per hour at the minimum and at the cap.

Exit 0: go (warnings printed); exit 2: refused, with the reason. Reads the deployment's sizes from
terraform/variables.tf and terraform/terraform.tfvars, as Terraform will."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TERRAFORM = ROOT / "terraform"
# "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", in vCPUs (Service Quotas).
STANDARD_QUOTA = "L-1216C47A"
# "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests", in vCPUs.
SPOT_QUOTA = "L-34B43A08"
STANDARD_FAMILIES = tuple("acdhimrtz")
# Packer's build instance runs while the AMI is made (packer/ variable instance_type).
BUILD_INSTANCE_VCPUS = 2
# A public IPv4 address costs $0.005 an hour, in use or not (Amazon VPC pricing, since 2024-02).
IPV4_PER_HOUR = 0.005
# An Application Load Balancer's hour (us-east-1), LCUs aside; it holds an address per subnet (2).
ALB_PER_HOUR = 0.0225
# On-Demand Linux prices per hour in us-east-1 (AWS price list, 2025), for when the Price List API
# cannot be read; other regions differ by a few percent.
KNOWN_PRICES = {"t3.small": 0.0208, "t3.medium": 0.0416, "c7i.large": 0.08925, "c7i.xlarge": 0.1785,
                "c6i.large": 0.085, "c5.large": 0.085, "m7i.large": 0.1008}
# EC2 hibernates Linux instances of up to 150 GiB of RAM (EC2 User Guide, hibernation prerequisites).
HIBERNATION_MAX_RAM_MIB = 150 * 1024
# Price List API location names (the API takes these, not region codes).
LOCATIONS = {"us-east-1": "US East (N. Virginia)", "us-east-2": "US East (Ohio)", "us-west-2": "US West (Oregon)",
             "eu-west-1": "EU (Ireland)", "eu-central-1": "EU (Frankfurt)", "ap-southeast-1": "Asia Pacific (Singapore)"}


@dataclass
class Plan:
    """The deployment's sizes, as Terraform will read them."""
    region: str
    web_instances: int
    instance_budget: int
    app_min_size: int
    app_instance_type: str
    web_instance_type: str
    warm_pool_size: int = 0
    warm_pool_state: str = "Stopped"
    # With Spot, app instances beyond app_min_size + warm_pool_size are Spot, at (1 - discount).
    spot: bool = False
    spot_discount: float = 0.6

    @property
    def hibernates(self) -> bool:
        """Whether the warm pool's instances wait hibernated (their launch template enables it)."""
        return self.warm_pool_size > 0 and self.warm_pool_state == "Hibernated"

    @property
    def app_max(self) -> int:
        return self.instance_budget - self.web_instances

    @property
    def on_demand_app_max(self) -> int:
        """App instances of the On-Demand group at the cap (terraform/main.tf on_demand_max_size)."""
        return min(max(1, self.app_min_size + self.warm_pool_size), self.app_max) if self.spot else self.app_max

    @property
    def spot_app_max(self) -> int:
        return self.app_max - self.on_demand_app_max


@dataclass
class Facts:
    """What the account says (None: could not be read, with the reason in `unread`)."""
    account: str | None = None
    region_enabled: bool | None = None
    vcpu_quota: float | None = None
    spot_vcpu_quota: float | None = None
    vcpus: dict[str, int] = field(default_factory=dict)
    hibernation: dict[str, bool] = field(default_factory=dict)
    memory_mib: dict[str, int] = field(default_factory=dict)
    zones: list[str] = field(default_factory=list)
    offered: set[tuple[str, str]] = field(default_factory=set)
    prices: dict[str, float] = field(default_factory=dict)
    unread: dict[str, str] = field(default_factory=dict)


@dataclass
class Verdict:
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_plan(region: str) -> Plan:
    import hcl2

    values = {}
    with open(TERRAFORM / "variables.tf") as f:
        for entry in hcl2.load(f).get("variable", []):
            for name, body in entry.items():
                values[name.strip('"')] = body.get("default")
    tfvars = TERRAFORM / "terraform.tfvars"
    if tfvars.exists():
        with open(tfvars) as f:
            values |= {k: v for k, v in hcl2.load(f).items()}
    unquote = lambda v: v.strip('"') if isinstance(v, str) else v
    return Plan(region, int(values["web_instances"]), int(values["instance_budget"]), int(values["app_min_size"]),
                unquote(values["app_instance_type"]), unquote(values["web_instance_type"]),
                warm_pool_size=int(values.get("warm_pool_size") or 0),
                warm_pool_state=unquote(values.get("warm_pool_state") or "Stopped"), spot=bool(values.get("spot_instance_types")),
                spot_discount=float(values.get("spot_discount") or 0))


def needed_vcpus(plan: Plan, vcpus: dict[str, int], app_count: int) -> int:
    return plan.web_instances * vcpus[plan.web_instance_type] + app_count * vcpus[plan.app_instance_type]


def cost_per_hour(plan: Plan, prices: dict[str, float], app_count: int, spot_count: int = 0) -> float:
    """Instances and their public addresses: `app_count` app instances, `spot_count` of them Spot."""
    instances = plan.web_instances + app_count
    app = prices[plan.app_instance_type]
    cost = plan.web_instances * prices[plan.web_instance_type] + app_count * app
    cost -= spot_count * app * plan.spot_discount
    cost += instances * IPV4_PER_HOUR
    if plan.web_instances > 1:
        cost += ALB_PER_HOUR + 2 * IPV4_PER_HOUR
    return cost


def assess(plan: Plan, facts: Facts) -> Verdict:
    """The decision, from the plan and the facts alone (no I/O)."""
    v = Verdict()
    if facts.account is None:
        v.refusals.append(f"no AWS credentials that work: {facts.unread.get('account', 'unknown error')} "
                          f"(aws configure, AWS_PROFILE or SSO)")
        return v
    if facts.region_enabled is False:
        v.refusals.append(f"region {plan.region} is not enabled for account {facts.account}")
        return v
    types = {plan.app_instance_type, plan.web_instance_type}
    for t in sorted(types):
        missing = [z for z in facts.zones[:2] if (t, z) not in facts.offered]
        if facts.zones and missing:
            v.refusals.append(f"{t} is not offered in {', '.join(missing)}, which the network module uses (the first "
                              f"two zones of {plan.region}): choose another instance type or region")
    assess_hibernation(plan, facts, v)
    if "offerings" in facts.unread:
        v.warnings.append(f"could not check where the instance types are offered: {facts.unread['offerings']}")
    if all(t in facts.vcpus for t in types):
        at_min = needed_vcpus(plan, facts.vcpus, plan.app_min_size)
        # On-Demand: the web instances and the On-Demand group; Spot has its own quota.
        at_cap = needed_vcpus(plan, facts.vcpus, plan.on_demand_app_max)
        shape = (f"{plan.web_instances} x {plan.web_instance_type} ({facts.vcpus[plan.web_instance_type]} vCPUs) + "
                 f"{plan.on_demand_app_max} x {plan.app_instance_type} ({facts.vcpus[plan.app_instance_type]} vCPUs)")
        standard = all(t.split(".")[0][0] in STANDARD_FAMILIES for t in types)
        if facts.vcpu_quota is None:
            v.warnings.append(f"could not read the On-Demand vCPU quota ({facts.unread.get('quota', 'unknown')}): at "
                              f"the cap the deployment needs {at_cap} vCPUs ({shape})")
        elif not standard:
            v.warnings.append(f"{sorted(types)}: not all in the standard families whose quota is checked here")
        elif facts.vcpu_quota < at_min + BUILD_INSTANCE_VCPUS:
            v.refusals.append(f"the On-Demand standard vCPU quota of {plan.region} is {facts.vcpu_quota:g}: the "
                              f"deployment needs {at_min} at its minimum (+{BUILD_INSTANCE_VCPUS} while Packer builds)")
        elif facts.vcpu_quota < at_cap:
            v.warnings.append(
                f"the On-Demand standard vCPU quota of {plan.region} is {facts.vcpu_quota:g}, and at the cap the "
                f"deployment needs {at_cap} ({shape}): the group cannot grow past "
                f"{int((facts.vcpu_quota - at_min) // facts.vcpus[plan.app_instance_type]) + plan.app_min_size} app "
                f"instances, and launches beyond fail (the scaler shows why on /status). "
                f"{ask_for_more(plan.region, STANDARD_QUOTA, at_cap)}")
        else:
            v.notes.append(f"vCPU quota {facts.vcpu_quota:g} covers the cap's {at_cap} ({shape})")
        if plan.spot_app_max:
            assess_spot_quota(plan, facts, v)
    else:
        v.warnings.append(f"unknown instance types: {sorted(t for t in types if t not in facts.vcpus)}")
    if all(t in facts.prices for t in types):
        source = "Price List API" if "prices" not in facts.unread else "us-east-1 prices of 2025, Price List API unread"
        with_spot = ""
        if plan.spot_app_max:
            spot_cost = cost_per_hour(plan, facts.prices, plan.app_max, plan.spot_app_max)
            with_spot = (f", ${spot_cost:.2f} with Spot ({plan.spot_app_max} of them Spot at "
                         f"{1 - plan.spot_discount:.0%} of the price)")
        v.notes.append(f"cost per hour (instances and public IPv4; {source}): about "
                       f"${cost_per_hour(plan, facts.prices, plan.app_min_size):.3f} at the minimum "
                       f"({plan.app_min_size} app instances), ${cost_per_hour(plan, facts.prices, plan.app_max):.2f} "
                       f"at the cap ({plan.app_max}) On-Demand{with_spot}; the warm pool's volumes, S3, SQS, "
                       f"CloudWatch and data transfer come on top")
    else:
        v.warnings.append(f"no price known for {sorted(t for t in types if t not in facts.prices)}")
    return v


def assess_hibernation(plan: Plan, facts: Facts, v: Verdict) -> None:
    """A Hibernated warm pool needs a type that hibernates: AWS refuses to launch a hibernation-enabled
    template of any other, and every launch of the group would fail."""
    kind = plan.app_instance_type
    if not plan.hibernates or kind not in facts.hibernation:
        return
    fix = ('set warm_pool_state = "Stopped" (or warm_pool_size = 0) in terraform/terraform.tfvars, or choose an '
           'app_instance_type that hibernates')
    if not facts.hibernation[kind]:
        v.refusals.append(f"{kind} cannot hibernate, and the warm pool waits Hibernated: {fix}")
    elif facts.memory_mib.get(kind, 0) > HIBERNATION_MAX_RAM_MIB:
        v.refusals.append(f"{kind} has {facts.memory_mib[kind] // 1024} GiB of RAM, more than EC2 hibernates "
                          f"({HIBERNATION_MAX_RAM_MIB // 1024} GiB): {fix}")


def ask_for_more(region: str, quota: str, need: int) -> str:
    return (f"Ask for more: aws service-quotas request-service-quota-increase --region {region} --service-code ec2 "
            f"--quota-code {quota} --desired-value {need}")


def assess_spot_quota(plan: Plan, facts: Facts, v: Verdict) -> None:
    """The Spot group's vCPUs at the cap against the Spot quota (a warning at worst: the
    On-Demand group still serves)."""
    need = plan.spot_app_max * facts.vcpus[plan.app_instance_type]
    if facts.spot_vcpu_quota is None:
        v.warnings.append(f"could not read the Spot vCPU quota ({facts.unread.get('spot quota', 'unknown')}): "
                          f"at the cap the Spot group needs {need} vCPUs")
    elif facts.spot_vcpu_quota < need:
        v.warnings.append(f"the Spot vCPU quota of {plan.region} is {facts.spot_vcpu_quota:g}, and at the cap the Spot "
                          f"group needs {need}: Spot launches beyond fail (the scaler shows why on /status). "
                          f"{ask_for_more(plan.region, SPOT_QUOTA, need)}")
    else:
        v.notes.append(f"Spot vCPU quota {facts.spot_vcpu_quota:g} covers the cap's {need}")


def gather(plan: Plan) -> Facts:
    """Reads the account: each call that fails is recorded in `unread`, never raised."""
    import boto3
    import botocore.exceptions

    facts = Facts()
    failures = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, NotImplementedError)
    try:
        facts.account = boto3.client("sts", region_name=plan.region).get_caller_identity()["Account"]
    except failures as e:
        facts.unread["account"] = str(e)
        return facts
    ec2 = boto3.client("ec2", region_name=plan.region)
    try:
        regions = ec2.describe_regions(RegionNames=[plan.region], AllRegions=True)["Regions"]
        facts.region_enabled = bool(regions) and regions[0].get("OptInStatus") != "not-opted-in"
    except failures as e:
        facts.unread["region"] = str(e)
    types = sorted({plan.app_instance_type, plan.web_instance_type})
    try:
        found = ec2.describe_instance_types(InstanceTypes=types)["InstanceTypes"]
        facts.vcpus = {t["InstanceType"]: t["VCpuInfo"]["DefaultVCpus"] for t in found}
        # Unsaid is unknown, not "no": Terraform checks again at plan time.
        facts.hibernation = {t["InstanceType"]: t["HibernationSupported"] for t in found if "HibernationSupported" in t}
        facts.memory_mib = {t["InstanceType"]: t["MemoryInfo"]["SizeInMiB"] for t in found}
    except failures as e:
        facts.unread["types"] = str(e)
    try:
        zones = ec2.describe_availability_zones(Filters=[{"Name": "state", "Values": ["available"]}])
        facts.zones = sorted(z["ZoneName"] for z in zones["AvailabilityZones"] if z.get("ZoneType", "availability-zone") == "availability-zone")
        offers = ec2.describe_instance_type_offerings(LocationType="availability-zone",
                                                      Filters=[{"Name": "instance-type", "Values": types}])
        facts.offered = {(o["InstanceType"], o["Location"]) for o in offers["InstanceTypeOfferings"]}
    except failures as e:
        facts.unread["offerings"] = str(e)
    try:
        quota = boto3.client("service-quotas", region_name=plan.region).get_service_quota(
            ServiceCode="ec2", QuotaCode=STANDARD_QUOTA)
        facts.vcpu_quota = float(quota["Quota"]["Value"])
    except failures as e:
        facts.unread["quota"] = str(e)
    if plan.spot:
        try:
            quota = boto3.client("service-quotas", region_name=plan.region).get_service_quota(
                ServiceCode="ec2", QuotaCode=SPOT_QUOTA)
            facts.spot_vcpu_quota = float(quota["Quota"]["Value"])
        except failures as e:
            facts.unread["spot quota"] = str(e)
    facts.prices = {t: KNOWN_PRICES[t] for t in types if t in KNOWN_PRICES}
    try:
        facts.prices |= price_list(types, plan.region)
    except (*failures, KeyError, ValueError) as e:
        facts.unread["prices"] = str(e)
    return facts


def price_list(types: list[str], region: str) -> dict[str, float]:
    import json

    import boto3

    pricing = boto3.client("pricing", region_name="us-east-1")
    prices = {}
    for t in types:
        filters = [("instanceType", t), ("location", LOCATIONS[region]), ("operatingSystem", "Linux"),
                   ("tenancy", "Shared"), ("preInstalledSw", "NA"), ("capacitystatus", "Used")]
        products = pricing.get_products(ServiceCode="AmazonEC2", MaxResults=1, Filters=[
            {"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters])["PriceList"]
        terms = json.loads(products[0])["terms"]["OnDemand"]
        dimension = next(iter(next(iter(terms.values()))["priceDimensions"].values()))
        prices[t] = float(dimension["pricePerUnit"]["USD"])
    return prices


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args()
    plan = read_plan(args.region)
    verdict = assess(plan, gather(plan))
    for note in verdict.notes:
        print(f"preflight: {note}")
    for warning in verdict.warnings:
        print(f"preflight: WARNING: {warning}")
    for refusal in verdict.refusals:
        print(f"preflight: REFUSED: {refusal}", file=sys.stderr)
    return 2 if verdict.refusals else 0


if __name__ == "__main__":
    sys.exit(main())
