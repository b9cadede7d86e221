#!/bin/sh
# LocalStack init hook (compose profile "localstack-pro"): the ECS cluster and
# a Fargate task definition the driver's example jobs use. seed.py does the
# same for moto (it also configures moto's state manager, which LocalStack
# does not have).
set -eu
awslocal ecs describe-clusters --clusters nomad --query 'clusters[?status==`ACTIVE`].clusterName' --output text | grep -q nomad \
    || awslocal ecs create-cluster --cluster-name nomad >/dev/null
awslocal ecs register-task-definition \
    --family nomad-ecs \
    --requires-compatibilities FARGATE \
    --network-mode awsvpc \
    --cpu 256 --memory 512 \
    --container-definitions '[{"name":"main","image":"public.ecr.aws/docker/library/busybox:1.37.0","essential":true,"command":["sleep","3600"]}]' \
    >/dev/null
echo "nomad-ecs: cluster nomad and task definition nomad-ecs ready"
