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
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: all ${#packages[@]} Debian packages present"
    exit 0
fi

echo "deps: installing ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
