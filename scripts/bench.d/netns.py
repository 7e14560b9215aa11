"""Shared by the Python benchmarks: commands that fail the bench loudly, and
two namespaces (mm-bench-srv, mm-bench-cli) joined by a veth pair that the
bench creates and removes."""

import os
import subprocess
import sys

SRV, CLI = "mm-bench-srv", "mm-bench-cli"
BENCH = os.path.basename(sys.argv[0])


def fail(message):
    print(f"bench {BENCH}: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def sh(*args, check=True, **kw):
    out = subprocess.run(args, text=True, capture_output=True, **kw)
    if check and out.returncode != 0:
        fail(f"{' '.join(args)}: {out.stderr.strip()}")
    return out


def netns_exec(ns, *args):
    return ["ip", "netns", "exec", ns, *args]


def remove_namespaces():
    for ns in (SRV, CLI):
        if ns in sh("ip", "netns", "list").stdout.split():
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            sh("ip", "netns", "del", ns, check=False)


def veth_pair(client_addresses):
    """srv0 (10.200.0.1/16) in SRV, cli0 with `client_addresses` in CLI."""
    remove_namespaces()
    for ns in (SRV, CLI):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", "srv0", "netns", SRV, "type", "veth", "peer", "name", "cli0", "netns", CLI)
    sh("ip", "-n", SRV, "addr", "add", "10.200.0.1/16", "dev", "srv0")
    for address in client_addresses:
        sh("ip", "-n", CLI, "addr", "add", address, "dev", "cli0")
    sh("ip", "-n", SRV, "link", "set", "srv0", "up")
    sh("ip", "-n", CLI, "link", "set", "cli0", "up")
