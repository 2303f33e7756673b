#!/bin/bash
# jupyter-ds-compute hub bootstrap (user-data of the hub instance), part of the
# CloudFormation template built by jupyter_ds_compute/aws/template.py.
#
# CloudFormation's Fn::Sub fills in ${Version}, ${HubConfig}, ... (stack
# parameters and resource attributes); shell variables are written $NAME
# (never with braces) so that Fn::Sub leaves them alone.
#
# It installs jupyter-ds-compute[aws]==${Version} into /opt/jupyter-ds-compute,
# fetches the operator's jupyterhub_config.py from ${HubConfig} (ssm:/path or
# s3://bucket/key, with the hub role) and runs JupyterHub under systemd with
# the stack's settings in /etc/jupyter-ds-compute/hub.env.
set -euo pipefail

VENV=/opt/jupyter-ds-compute
ETC=/etc/jupyter-ds-compute
mkdir -p $ETC /srv/jupyterhub

export AWS_REGION=${AWS::Region} AWS_DEFAULT_REGION=${AWS::Region}

python3 -m venv $VENV
$VENV/bin/pip install --upgrade pip
$VENV/bin/pip install "jupyter-ds-compute[aws]==${Version}" jupyterhub

$VENV/bin/python - "${HubConfig}" $ETC/jupyterhub_config.py <<'PY'
import sys, boto3
source, dest = sys.argv[1], sys.argv[2]
if source.startswith("s3://"):
    bucket, _, key = source[len("s3://"):].partition("/")
    body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
else:
    body = boto3.client("ssm").get_parameter(Name=source[len("ssm:"):], WithDecryption=True)["Parameter"]["Value"]
open(dest, "w").write(body)
PY

PRIVATE_IP=$(hostname -I | awk '{print $1}')
cat > $ETC/hub.env <<EOF
AWS_REGION=${AWS::Region}
AWS_DEFAULT_REGION=${AWS::Region}
DS_COMPUTE_VERSION=${Version}
DS_COMPUTE_HUB_HTTPS_PORT=${HubHttpsPort}
DS_COMPUTE_HUB_API_PORT=${HubApiPort}
DS_COMPUTE_HUB_CONNECT_IP=$PRIVATE_IP
@@HUB_ENV@@
EOF

cat > /etc/systemd/system/jupyterhub.service <<EOF
[Unit]
Description=JupyterHub (jupyter-ds-compute ${Version})
After=network-online.target

[Service]
EnvironmentFile=$ETC/hub.env
Environment=PATH=$VENV/bin:/usr/local/bin:/usr/bin:/bin
WorkingDirectory=/srv/jupyterhub
ExecStart=$VENV/bin/jupyterhub -f $ETC/jupyterhub_config.py --JupyterHub.port=${HubHttpsPort} --JupyterHub.hub_port=${HubApiPort}
Restart=on-failure

[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable --now jupyterhub
