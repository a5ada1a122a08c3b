
# 3b. TLS (--tls-ssm-prefix): the mesh certificates are SecureString
#     parameters under ${TLS_SSM_PREFIX}; the AWS CLI decrypts them with the
#     instance role (credentials from IMDSv2) into ${TLS_DIR}, readable only
#     by the containers' uid 65532, before the agent starts. A systemd timer
#     runs the same fetch every 15 minutes: a rotated parameter replaces its
#     file, and the agent and the controller, which poll their files, load
#     it without a restart.
if ! command -v aws >/dev/null; then
  echo "ecsmesh: --tls-ssm-prefix needs the AWS CLI on the AMI" >&2
  exit 1
fi
install -d -m 0750 -o 65532 -g 65532 '${TLS_DIR}'
cat >/usr/local/sbin/ecsmesh-fetch-tls <<'FETCHTLS'
#!/bin/bash
set -euo pipefail
umask 077
# fetch NAME MODE: SSM parameter ${TLS_SSM_PREFIX}/NAME to ${TLS_DIR}/NAME.
fetch() {
  local tmp
  tmp=$(mktemp '${TLS_DIR}/.fetch.XXXXXX')
  if ! aws ssm get-parameter --region '${REGION}' --with-decryption \
      --name '${TLS_SSM_PREFIX}/'"$1" --query Parameter.Value --output text >"$tmp"; then
    rm -f "$tmp"
    echo "ecsmesh: cannot read the SSM parameter ${TLS_SSM_PREFIX}/$1" >&2
    return 1
  fi
  # Unchanged: keep the file (its processes need not reload it). Changed:
  # a rename, so that a reader never sees half a file.
  if cmp -s "$tmp" '${TLS_DIR}/'"$1"; then
    rm -f "$tmp"
  else
    chown 65532:65532 "$tmp"
    chmod "$2" "$tmp"
    mv -f "$tmp" '${TLS_DIR}/'"$1"
  fi
}
${TLS_FETCH_CALLS}
FETCHTLS
chmod 0700 /usr/local/sbin/ecsmesh-fetch-tls
/usr/local/sbin/ecsmesh-fetch-tls
cat >/etc/systemd/system/ecsmesh-fetch-tls.service <<'UNIT'
[Unit]
Description=ecsmesh: refresh the mesh TLS files from SSM Parameter Store
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ecsmesh-fetch-tls
UNIT
cat >/etc/systemd/system/ecsmesh-fetch-tls.timer <<'UNIT'
[Unit]
Description=ecsmesh: refresh the mesh TLS files every 15 minutes
[Timer]
OnBootSec=15min
OnUnitActiveSec=15min
RandomizedDelaySec=1min
[Install]
WantedBy=timers.target
UNIT
systemctl daemon-reload
systemctl enable --now ecsmesh-fetch-tls.timer
