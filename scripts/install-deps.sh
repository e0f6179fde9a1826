#!/bin/sh
# Installs the Debian 12 packages dsocr needs to build, test and run. Idempotent; run as root.
set -e
PKGS="build-essential pkg-config clang libclang-rt-14-dev libcjson-dev libpng-dev libjpeg62-turbo-dev libwebp-dev \
libgif-dev libtiff-dev libpcre2-dev libopenblas-dev libmicrohttpd-dev python3 python3-torch python3-pil \
python3-numpy python3-pytest python3-regex curl ca-certificates libcurl4-openssl-dev libssl-dev mupdf-tools libtasn1-doc chromium"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
