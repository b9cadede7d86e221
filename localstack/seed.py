#!/usr/bin/env python3
"""Seed an ECS emulator (moto) with what the driver needs to run a task.

    .venv/bin/python localstack/seed.py --endpoint http://127.0.0.1:5000 \\
        --region us-east-1 --cluster nomad [--family nomad-ecs]

Creates, in this order:
  1. moto's state-manager transition for ECS tasks, so that tasks stay RUNNING
     until StopTask (plain moto moves a task one state further on every
     DescribeTasks and reports it STOPPED after four polls);
  2. the ECS cluster (only if it is not ACTIVE already: CreateCluster on an
     existing name makes moto replace the cluster and drop its tags);
  3. a Fargate task definition (a new revision on every run);
  4. a VPC of our own with two subnets and a security group, found again by
     tag on a later run.

Why a VPC of our own rather than the default VPC's subnets: real accounts
often have no default VPC, so the driver must not lean on one, and a VPC
tagged per cluster keeps two clusters seeded on one server apart. moto needs
EnableDnsHostnames=true on it, or RunTask fails with an HTML 500.

On success prints exactly one JSON line to stdout (see `main`); everything
else goes to stderr. On failure prints `seed.py: error: <step>: <why>` to
stderr and exits 1.

Credentials: the emulator checks none. When AWS_ACCESS_KEY_ID is not set,
static dummy credentials are used, so that boto3 never walks the credential
chain (which could reach for an instance-metadata endpoint).
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

try:
    import boto3
    import botocore.config
    import botocore.exceptions
except ImportError as err:  # run with the wrong interpreter
    sys.exit(
        f"seed.py: error: import boto3: {err}; run this with the venv's python "
        "(bash localstack/setup.sh creates it)"
    )

TAG_KEY = "nomad-ecs:seed"
VPC_CIDR = "10.77.0.0/16"
SUBNET_CIDRS = ("10.77.1.0/24", "10.77.2.0/24")
IMAGE = "public.ecr.aws/docker/library/busybox:latest"
# moto's default ECS task transition advances a task on every DescribeTasks;
# a huge count of "manual" steps keeps it RUNNING for the life of the server.
TASK_TRANSITION = {
    "model_name": "ecs::task",
    "transition": {"progression": "manual", "times": 1000000},
}


class SeedError(Exception):
    def __init__(self, step, why):
        super().__init__(f"{step}: {why}")


def log(msg):
    print(f"seed.py: {msg}", file=sys.stderr, flush=True)


def step(name, fn, *args, **kwargs):
    """Run one API call, turning every failure into a SeedError naming the step."""
    try:
        return fn(*args, **kwargs)
    except botocore.exceptions.ClientError as err:
        e = err.response.get("Error", {})
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        raise SeedError(
            name, f"HTTP {status} {e.get('Code', '?')}: {e.get('Message', err)}"
        ) from err
    except (botocore.exceptions.BotoCoreError, OSError) as err:
        raise SeedError(name, str(err)) from err


def set_task_transition(endpoint):
    url = endpoint.rstrip("/") + "/moto-api/state-manager/set-transition"
    req = urllib.request.Request(
        url,
        data=json.dumps(TASK_TRANSITION).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
    except urllib.error.HTTPError as err:
        raise SeedError(
            "set-transition",
            f"HTTP {err.code} from {url}; is this a moto server?",
        ) from err
    except (urllib.error.URLError, OSError) as err:
        raise SeedError("set-transition", f"{url}: {err}") from err


def ensure_cluster(ecs, name):
    found = step("DescribeClusters", ecs.describe_clusters, clusters=[name])
    for cluster in found.get("clusters", []):
        if cluster.get("status") == "ACTIVE":
            log(f"cluster {name} exists")
            return cluster["clusterArn"]
    log(f"creating cluster {name}")
    made = step("CreateCluster", ecs.create_cluster, clusterName=name)
    return made["cluster"]["clusterArn"]


def register_task_definition(ecs, family):
    log(f"registering task definition {family}")
    made = step(
        "RegisterTaskDefinition",
        ecs.register_task_definition,
        family=family,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {
                "name": "app",
                "image": IMAGE,
                "essential": True,
                "command": ["sleep", "3600"],
                # moto 5.2.5's RunTask sums container memory and 500s on a
                # container without it, even when the task level sets it.
                "memory": 512,
            }
        ],
    )
    td = made["taskDefinition"]
    return f"{td['family']}:{td['revision']}", td["taskDefinitionArn"]


def tag_filter(cluster):
    return [{"Name": f"tag:{TAG_KEY}", "Values": [cluster]}]


def tags(cluster, kind):
    return [
        {
            "ResourceType": kind,
            "Tags": [
                {"Key": TAG_KEY, "Value": cluster},
                {"Key": "Name", "Value": f"nomad-ecs-{cluster}"},
            ],
        }
    ]


def ensure_network(ec2, cluster):
    """Return (subnet ids, security group ids) of the cluster's tagged VPC."""
    vpcs = step("DescribeVpcs", ec2.describe_vpcs, Filters=tag_filter(cluster))["Vpcs"]
    if vpcs:
        vpc_id = vpcs[0]["VpcId"]
        log(f"VPC {vpc_id} exists")
    else:
        vpc_id = step(
            "CreateVpc",
            ec2.create_vpc,
            CidrBlock=VPC_CIDR,
            TagSpecifications=tags(cluster, "vpc"),
        )["Vpc"]["VpcId"]
        log(f"created VPC {vpc_id}")
    # Idempotent, and set on every run so that a half-made VPC gets it too.
    step(
        "ModifyVpcAttribute(EnableDnsSupport)",
        ec2.modify_vpc_attribute,
        VpcId=vpc_id,
        EnableDnsSupport={"Value": True},
    )
    step(
        "ModifyVpcAttribute(EnableDnsHostnames)",
        ec2.modify_vpc_attribute,
        VpcId=vpc_id,
        EnableDnsHostnames={"Value": True},
    )

    vpc_filter = [{"Name": "vpc-id", "Values": [vpc_id]}]
    subnets = step("DescribeSubnets", ec2.describe_subnets, Filters=vpc_filter)["Subnets"]
    by_cidr = {s["CidrBlock"]: s["SubnetId"] for s in subnets}
    zones = [
        z["ZoneName"]
        for z in step(
            "DescribeAvailabilityZones",
            ec2.describe_availability_zones,
            Filters=[{"Name": "state", "Values": ["available"]}],
        )["AvailabilityZones"]
    ]
    if not zones:
        raise SeedError("DescribeAvailabilityZones", "the region lists no zone")
    subnet_ids = []
    for i, cidr in enumerate(SUBNET_CIDRS):
        if cidr not in by_cidr:
            zone = zones[i % len(zones)]
            by_cidr[cidr] = step(
                "CreateSubnet",
                ec2.create_subnet,
                VpcId=vpc_id,
                CidrBlock=cidr,
                AvailabilityZone=zone,
                TagSpecifications=tags(cluster, "subnet"),
            )["Subnet"]["SubnetId"]
            log(f"created subnet {by_cidr[cidr]} ({cidr}, {zone})")
        subnet_ids.append(by_cidr[cidr])

    group_name = f"nomad-ecs-{cluster}-tasks"
    groups = step(
        "DescribeSecurityGroups",
        ec2.describe_security_groups,
        Filters=vpc_filter + [{"Name": "group-name", "Values": [group_name]}],
    )["SecurityGroups"]
    if groups:
        group_id = groups[0]["GroupId"]
    else:
        group_id = step(
            "CreateSecurityGroup",
            ec2.create_security_group,
            GroupName=group_name,
            Description=f"Tasks of the Nomad ECS driver in cluster {cluster}",
            VpcId=vpc_id,
            TagSpecifications=tags(cluster, "security-group"),
        )["GroupId"]
        log(f"created security group {group_id}")
    return subnet_ids, [group_id]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True, help="emulator URL, e.g. http://127.0.0.1:5000")
    parser.add_argument("--region", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--family", default="nomad-ecs", help="task definition family")
    args = parser.parse_args()

    session = boto3.session.Session(
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        aws_session_token=os.environ.get("AWS_SESSION_TOKEN"),
        region_name=args.region,
    )
    # Few retries: moto's 500s are bugs, not weather, and should fail fast.
    config = botocore.config.Config(
        connect_timeout=5,
        read_timeout=30,
        retries={"mode": "standard", "total_max_attempts": 2},
    )
    ecs = session.client("ecs", endpoint_url=args.endpoint, config=config)
    ec2 = session.client("ec2", endpoint_url=args.endpoint, config=config)

    set_task_transition(args.endpoint)
    cluster_arn = ensure_cluster(ecs, args.cluster)
    task_definition, task_definition_arn = register_task_definition(ecs, args.family)
    subnets, security_groups = ensure_network(ec2, args.cluster)

    print(
        json.dumps(
            {
                "endpoint": args.endpoint,
                "region": args.region,
                "cluster": args.cluster,
                "cluster_arn": cluster_arn,
                "task_definition": task_definition,
                "task_definition_arn": task_definition_arn,
                "subnets": subnets,
                "security_groups": security_groups,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    try:
        main()
    except SeedError as err:
        sys.exit(f"seed.py: error: {err}")
