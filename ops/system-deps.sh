#!/usr/bin/env bash
# Check, and where possible install, the system programs that the tests and the demo need:
# Java 17 and Maven (to fetch and run the Kafka broker) and Prometheus (the dashboard test).
# Installs with apt-get only when running as root on Debian or Ubuntu; otherwise it names
# what is missing and exits non-zero.
set -euo pipefail

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The Debian package starts a Prometheus service; the tests run their own server instead.
    if command -v systemctl >/dev/null 2>&1; then
        systemctl stop prometheus >/dev/null 2>&1 || true
    fi
    # Only the service's own process (user prometheus): other Prometheus servers on a shared
    # machine, such as another checkout's test server, keep running.
    pkill -x -u prometheus prometheus >/dev/null 2>&1 || true
    exit 0
fi

echo "system-deps: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]})" >&2
exit 1
