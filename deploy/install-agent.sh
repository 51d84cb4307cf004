#!/usr/bin/env bash
# Install the fedhive agent as a systemd service on Raspberry Pi OS 64-bit or Debian (run as root):
#   sudo deploy/install-agent.sh [fedhive source: a path, a wheel or a pip requirement; default: this checkout]
# It creates the user fedhive, a venv in /opt/fedhive/venv with torch's CPU wheel for this platform (aarch64 or
# x86_64) installed before fedhive, /var/lib/fedhive/{data,state}, /etc/fedhive/agent.env (from the example, if
# absent) and enables fedhive-agent.service. Edit /etc/fedhive/agent.env, then: systemctl restart fedhive-agent
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="${1:-$HERE/..}"
TORCH="${TORCH:-torch==2.13.0}"
[ "$(id -u)" = 0 ] || { echo "run as root (sudo)" >&2; exit 1; }
case "$(uname -m)" in aarch64|x86_64) ;; *) echo "unsupported CPU $(uname -m): torch has wheels for aarch64 and x86_64" >&2; exit 1;; esac

apt-get install -y -q python3 python3-venv >/dev/null
id fedhive >/dev/null 2>&1 || useradd --system --home-dir /var/lib/fedhive --shell /usr/sbin/nologin fedhive
install -d -o fedhive -g fedhive /var/lib/fedhive /var/lib/fedhive/data /var/lib/fedhive/state
install -d -m 0750 -g fedhive /etc/fedhive
python3 -m venv /opt/fedhive/venv
/opt/fedhive/venv/bin/pip install -q --upgrade pip
/opt/fedhive/venv/bin/pip install -q "$TORCH" --index-url https://download.pytorch.org/whl/cpu
/opt/fedhive/venv/bin/pip install -q "$SRC"
[ -f /etc/fedhive/agent.env ] || install -m 0640 -g fedhive "$HERE/systemd/agent.env.example" /etc/fedhive/agent.env
install -m 0644 "$HERE/systemd/fedhive-agent.service" /etc/systemd/system/fedhive-agent.service
systemctl daemon-reload
systemctl enable --now fedhive-agent
/opt/fedhive/venv/bin/fedhive agent --print-profile
echo "installed; edit /etc/fedhive/agent.env (server address, partition, TLS and keys), then: systemctl restart fedhive-agent"
