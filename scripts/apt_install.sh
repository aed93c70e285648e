#!/usr/bin/env bash
# Install Debian/Ubuntu packages quietly, without recommends, with sudo when not root: `scripts/apt_install.sh PKG…`.
# One place for the apt step of scripts/bootstrap.sh (a dev or CI machine) and of the Dockerfile (the image).
set -euo pipefail
[ $# -gt 0 ] || exit 0
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
echo "apt_install: installing $* with apt-get" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
