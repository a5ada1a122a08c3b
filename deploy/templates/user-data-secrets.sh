
# 3b. Secrets: the mesh's TLS material and tokens are SecureString
#     parameters in SSM Parameter Store; the AWS CLI decrypts them with the
#     instance role (credentials from IMDSv2) into files readable only by
#     the containers' uid 65532, before the agent starts. A systemd timer
#     runs the same fetch every 15 minutes: a rotated parameter replaces its
#     file, and the agent and the controller, which poll their certificate
#     files (the agent re-reads its token at every reconnect), pick it up.
if ! command -v aws >/dev/null; then
  echo "ecsmesh: the mesh's TLS material and tokens come from SSM Parameter Store, which needs the AWS CLI on the AMI" >&2
  exit 1
fi
${SECRETS_DIRS}
cat >/usr/local/sbin/ecsmesh-fetch-secrets <<'FETCHSECRETS'
#!/bin/bash
set -euo pipefail
umask 077
# fetch PARAMETER FILE MODE: the SSM parameter, decrypted, to FILE.
fetch() {
  local tmp
  tmp=$(mktemp "$(dirname "$2")/.fetch.XXXXXX")
  if ! aws ssm get-parameter --region '${REGION}' --with-decryption \
      --name "$1" --query Parameter.Value --output text >"$tmp"; then
    rm -f "$tmp"
    echo "ecsmesh: cannot read the SSM parameter $1" >&2
    return 1
  fi
  # Unchanged: keep the file (its processes need not reload it). Changed:
  # a rename, so that a reader never sees half a file.
  if cmp -s "$tmp" "$2"; then
    rm -f "$tmp"
  else
    chown 65532:65532 "$tmp"
    chmod "$3" "$tmp"
    mv -f "$tmp" "$2"
  fi
}
${SECRETS_FETCH_CALLS}
FETCHSECRETS
chmod 0700 /usr/local/sbin/ecsmesh-fetch-secrets
/usr/local/sbin/ecsmesh-fetch-secrets
cat >/etc/systemd/system/ecsmesh-fetch-secrets.service <<'UNIT'
[Unit]
Description=ecsmesh: refresh the mesh's TLS files and tokens from SSM Parameter Store
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ecsmesh-fetch-secrets
UNIT
cat >/etc/systemd/system/ecsmesh-fetch-secrets.timer <<'UNIT'
[Unit]
Description=ecsmesh: refresh the mesh's TLS files and tokens every 15 minutes
[Timer]
OnBootSec=15min
OnUnitActiveSec=15min
RandomizedDelaySec=1min
[Install]
WantedBy=timers.target
UNIT
systemctl daemon-reload
systemctl enable --now ecsmesh-fetch-secrets.timer
