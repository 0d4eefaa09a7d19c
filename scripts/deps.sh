#!/usr/bin/env bash
# deps.sh: installs the Debian packages kvwire builds against. Idempotent: packages already present are skipped, and
# apt-get runs only when something is missing. Needs root (or sudo) only in that case.
set -euo pipefail

packages=(
    build-essential cmake pkg-config clang clang-format
    libcjson-dev libpcre2-dev libutf8proc-dev libzstd-dev libxxhash-dev libopenblas-dev libcmocka-dev
    libuv1-dev libssl-dev libprotobuf-c-dev protobuf-c-compiler libyaml-dev libcurl4-openssl-dev
    libhttp-parser-dev libsystemd-dev curl jq zlib1g-dev
    chromium-headless-shell # kvload's HTML report is checked in a real browser (tests/loadgen/cli_kvload_browser.sh)
    systemd openssl iproute2 # tests/deploy: systemd-analyze checks the units, deploy/tls/make-certs.sh, free ports
)
# Optional: real SLURM clusters for tests/deploy/cli_deploy_slurm.sh (label slurm) and nftables for the partition of
# tests/reliability/cli_reliability_network.sh, which skip without them;
# a failure to install these is reported and does not stop the build.
optional=(slurmctld slurmd slurm-client munge nftables)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

optional_missing=()
for p in "${optional[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || optional_missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ] && [ ${#optional_missing[@]} -eq 0 ]; then
    echo "deps: all ${#packages[@]} Debian packages present (and the ${#optional[@]} optional ones)"
    exit 0
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ ${#optional_missing[@]} -gt 0 ]; then
    echo "deps: installing the optional ${optional_missing[*]}"
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${optional_missing[@]}" ||
        echo "deps: the optional packages did not install: the slurm test will skip"
fi
