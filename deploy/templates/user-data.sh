#!/bin/bash
# ecsmesh instance bootstrap, rendered by `ecsmeshctl deploy` (it fills the
# dollar-brace variables; the plain $shell variables below are bash's own).
set -euo pipefail

# 1. Join the ECS cluster. Ports the agent holds are reserved so ECS never
#    places a static-port task on them.
cat >>/etc/ecs/ecs.config <<'ECSCONFIG'
ECS_CLUSTER=${CLUSTER}
ECS_RESERVED_PORTS=[22,2375,2376,51678,51679,4140,4141,9990]
ECS_ENABLE_CONTAINER_METADATA=true
ECS_ENABLE_TASK_IAM_ROLE=true
ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST=true
ECSCONFIG

# 2. Directories the (non-root, uid 65532) containers write to.
install -d -m 0750 -o 65532 -g 65532 /var/lib/ecsmesh/agent /var/lib/ecsmesh/controller

# 3. IMDSv2 only (the launch template requires tokens): a session token, then
#    the instance id for the log. The agent reads its host IP itself (IMDSv2).
TOKEN=$(curl -fsS -X PUT http://169.254.169.254/latest/api/token \
  -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
INSTANCE_ID=$(curl -fsS -H "X-aws-ec2-metadata-token: $TOKEN" \
  http://169.254.169.254/latest/meta-data/instance-id)
echo "ecsmesh: instance $INSTANCE_ID joins cluster ${CLUSTER}"
${SECRETS_FETCH}
# 4. Start the agent before any application task (skipped when the agent runs
#    as an ECS DAEMON service instead).
if [ "${START_AGENT}" = "true" ]; then
  systemctl enable --now docker
  # ECS pulls task images with its own credentials; this plain `docker run`
  # has none, so a private ECR repository needs a login first (the instance
  # role allows it). Without the AWS CLI on the AMI, use --agent daemon.
  REGISTRY=$(echo '${AGENT_IMAGE}' | cut -d/ -f1)
  case "$REGISTRY" in
    *.dkr.ecr.*.amazonaws.com*)
      if command -v aws >/dev/null; then
        aws ecr get-login-password --region '${REGION}' \
          | docker login --username AWS --password-stdin "$REGISTRY"
      else
        echo "ecsmesh: no AWS CLI to log in to $REGISTRY; the pull may fail (use --agent daemon)" >&2
      fi
      ;;
  esac
  docker run -d --name ecsmesh-agent --restart=always --network host \
    -v /var/lib/ecsmesh/agent:/var/lib/ecsmesh/agent \
${AGENT_SECRET_ARGS}    -e ECSMESH_CONTROLLER='${CONTROLLER_ADDRESS}' \
    -e ECSMESH_CLUSTER='${CLUSTER}' \
    -e ECSMESH_INSTANCE_ID="$INSTANCE_ID" \
    '${AGENT_IMAGE}'
fi
