#!/usr/bin/env bash
# Everything lmcsweep needs on a fresh Debian machine: native packages for FFCV, the embedded
# Fashion-MNIST, a virtual environment in .venv with torch (pinned) and the package itself.
# A second run skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="pkg-config libturbojpeg0-dev libopencv-dev dataset-fashion-mnist postgresql slurm-wlm munge chromium"
missing=""
for pkg in $APT_PACKAGES; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing Debian packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

stamp=.venv/.lmcsweep-installed
want="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # torch and torchvision first, pinned: these two are served from local disk on our machines.
    .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
    .venv/bin/python -m pip install -q -e '.[ffcv,test]'
    echo "$want" > "$stamp"
fi
