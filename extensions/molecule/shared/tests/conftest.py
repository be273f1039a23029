"""Helpers of the Molecule verifier: both VMs at once, the replicated trees
as the two hosts' zfs(8) list them, and file checksums read through
snapshots (sender) and clones of them (receiver, whose datasets are not
mounted)."""

import json
import os
import shlex
import subprocess
import sys

import pytest
import testinfra

# The lab launcher (tests/lab/launch) knows how to reach its VMs.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "tests", "lab"))
import labkit  # noqa: E402

LAUNCH = labkit.load_launch()

SENDER_ROOT = "tank/data"
RECEIVER_ROOT = "tank/replicas/sender"
VERIFY_PARENT = "tank/zfsync-verify"


def lab_state():
    lab = os.environ.get("ZFSYNC_LAB_STATE") or os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "lab")
    path = os.path.join(lab, "state.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _host(request, name):
    inventory = request.config.option.ansible_inventory
    return testinfra.get_host("ansible://%s?ansible_inventory=%s" % (name, inventory))


@pytest.fixture(scope="session")
def receiver(request):
    return _host(request, "receiver")


@pytest.fixture(scope="session")
def sender(request):
    return _host(request, "sender")


def lab_ssh(name, command, timeout):
    """Run a command on a lab VM over a fresh ssh connection of its own (no
    multiplexing: nothing stale survives a reboot), bounded by timeout.
    Returns (rc, stdout); rc 255 when ssh could not connect."""
    argv = LAUNCH.ssh_argv(lab_state()["vms"][name], command, connect_timeout=10)
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return 255, ""
    return result.returncode, result.stdout


def run(host, command):
    """Run a command, fail the test with its output when it fails."""
    result = host.run(command)
    assert result.rc == 0, "%s: rc=%d\n%s%s" % (command, result.rc, result.stdout, result.stderr)
    return result.stdout


def tree(host, root):
    """{relative dataset: [(snapshot, guid), ...] oldest first} below root."""
    out = run(host, "zfs list -H -p -r -t filesystem,snapshot -s createtxg -o name,guid %s" % shlex.quote(root))
    datasets = {}
    for line in out.splitlines():
        name, guid = line.split("\t")
        dataset, snapshot = (name.split("@", 1) + [""])[:2]
        relative = dataset[len(root):]
        entry = datasets.setdefault(relative, [])
        if snapshot:
            entry.append((snapshot, guid))
    return datasets


def sender_checksums(host, snapshot):
    """{relative path: sha256} of every file of every dataset, as of snapshot."""
    sums = {}
    for relative in tree(host, SENDER_ROOT):
        base = "/%s%s/.zfs/snapshot/%s" % (SENDER_ROOT, relative, snapshot)
        sums.update(_checksums(host, base, relative))
    return sums


def receiver_checksums(host, snapshot):
    """The same, on the receiver: each snapshot cloned, read and destroyed."""
    sums = {}
    run(host, "zfs destroy -r %s 2>/dev/null; zfs create -o mountpoint=/var/tmp/zfsync-verify %s"
        % (VERIFY_PARENT, VERIFY_PARENT))
    try:
        for index, relative in enumerate(sorted(tree(host, RECEIVER_ROOT))):
            clone = "%s/c%d" % (VERIFY_PARENT, index)
            run(host, "zfs clone %s%s@%s %s" % (RECEIVER_ROOT, relative, snapshot, clone))
            sums.update(_checksums(host, "/var/tmp/zfsync-verify/c%d" % index, relative))
    finally:
        run(host, "zfs destroy -r %s" % VERIFY_PARENT)
    return sums


def _checksums(host, base, relative):
    # -xdev: a child dataset's mount point is another dataset's business.
    out = run(host, "cd %s && find . -xdev -type f -exec sha256sum {} +" % shlex.quote(base))
    sums = {}
    for line in out.splitlines():
        digest, path = line.split(None, 1)
        sums["%s/%s" % (relative, path[2:])] = digest
    return sums


def sync_now(sender, *extra):
    """Run the sender's installed zfsync_send with the deployed TLS files,
    to the receiver VM; return its JSON result."""
    port = lab_state()["vms"]["receiver"]["forwards"]["3030"]
    tls = "/etc/zfsync/tls"
    if sender.system_info.type == "freebsd":
        tls = "/usr/local/etc/zfsync/tls"
    command = ("/usr/local/bin/zfsync_send --json -t 2 -p %d --tls-cert %s/host.pem --tls-key %s/host.key "
               "--tls-ca %s/ca.pem %s %s 10.0.2.2" % (port, tls, tls, tls, " ".join(extra), SENDER_ROOT))
    result = sender.run(command)
    assert result.stdout.strip(), "no JSON from %s: rc=%d %s" % (command, result.rc, result.stderr)
    return json.loads(result.stdout)
