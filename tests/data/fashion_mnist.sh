#!/usr/bin/env bash
# Real images for the test suite: Debian's dataset-fashion-mnist (Fashion-MNIST's four
# original files under /usr/share/datasets/fashion-mnist). Installed with apt-get when
# missing and this is root on Debian/Ubuntu; otherwise says how, and fails.
set -euo pipefail
ROOT=/usr/share/datasets/fashion-mnist
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

present() {
    local name
    for name in "${FILES[@]}"; do [ -s "$ROOT/$name" ] || return 1; done
}

present && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "tests need Fashion-MNIST in $ROOT: run 'apt-get install dataset-fashion-mnist' as root" >&2
    exit 1
fi
echo "installing dataset-fashion-mnist with apt-get"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp /tmp/randlabels-fashion-apt.XXXXXX)
if ! apt-get install -y -q --no-install-recommends dataset-fashion-mnist >"$log" 2>&1; then
    apt-get update -q >>"$log" 2>&1 || true
    if ! apt-get install -y -q --no-install-recommends dataset-fashion-mnist >>"$log" 2>&1; then
        tail -n 20 "$log" >&2
        echo "apt-get install dataset-fashion-mnist failed (full output: $log)" >&2
        exit 1
    fi
fi
rm -f "$log"
present || { echo "dataset-fashion-mnist installed, but $ROOT lacks its files" >&2; exit 1; }
