"""The receiver as an unprivileged user with `zfs allow` delegation, on
OpenZFS 2.1 in a lab VM (Linux): what docs/security.md "Least privilege"
says, measured.

    .venv/bin/pytest -q tests/lab/test_least_privilege.py      (make test-lab-privilege)

One VM (`tests/lab/launch`, the cached image; never builds it), pool `tank`
on its data disk. Root makes the sender's tree `tank/src` (four datasets,
locally set compression, recordsize and a user property, so `zfs send -p`
carries properties), the receiver's parent `tank/zfsync`, the buffer
`tank/zfsync/replica.zfsyncbuffer` and the user `zfsync`, and delegates
DELEGATION; `zfsync_recv` then runs as `zfsync` on 127.0.0.1:3030 (no
--no-full) with its log and flag dir owned by that user, and a root-run
`zfsync_send` syncs `tank/src` to it. The tests run in file order, each on
the state the previous ones left: a first sync, an incremental, a prune, a
FULL replacement (refused while root's old copy is mounted: an unprivileged
user cannot unmount on Linux), cleanbuffer placing a buffered copy, and a
sync without the `receive` permission, which fails with zfs's error while
the receiver keeps serving.

Timings and the receiver's log are kept in tests/output/lab-privilege/.
"""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from typing import Dict, List, Tuple

import pytest

LAB = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, LAB)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(LAB)), "plugins", "module_utils"))
import labkit  # noqa: E402
from zfsync.protocol import hex_suffix  # noqa: E402

OUTPUT = os.path.join(labkit.REPO, "tests", "output", "lab-privilege")
STATE_DIR = os.environ.get("ZFSYNC_PRIVILEGE_STATE_DIR", "/tmp/zfsync-privilege-lab")
GUEST = "/opt/zfsync"   # not /root: the unprivileged user must read the engine
USER = "zfsync"
PORT = 3030
SOURCE = "tank/src"
PARENT = "tank/zfsync"
ROOT = PARENT + "/replica"
BUFFER = ROOT + ".zfsyncbuffer"
LOG_DIR = "/var/log/zfsync"
RUN_DIR = "/run/zfsync"
PID_FILE = RUN_DIR + "/recv.pid"

# The delegation docs/security.md gives, in two parts: on the parent itself
# only what placing ROOT needs (its copy is renamed in from the buffer),
# on everything below it what every sync step needs. The last three are
# the properties tank/src sets locally: a property without its permission
# is dropped from the received stream with a warning, the receive succeeds.
PARENT_LOCAL = "create,mount"
DESCENDENTS = "create,mount,receive,rename,destroy,canmount"
STREAM_PROPERTIES = "compression,recordsize,userprop"
DELEGATION = ("zfs allow -l -u %s %s %s && zfs allow -d -u %s %s,%s %s"
              % (USER, PARENT_LOCAL, PARENT, USER, DESCENDENTS, STREAM_PROPERTIES, PARENT))

SETUP = """set -e
zpool create -f tank /dev/vdb
zfs create -o compression=lz4 -o com.example:tag=hello {src}
zfs create {src}/a
zfs create -o recordsize=64K {src}/a/b
zfs create {src}/c
for d in "" /a /a/b /c; do head -c 20000 /dev/urandom > /{src}$d/f; done
zfs snapshot -r {src}@s1
zfs create {parent}
zfs create -o canmount=off -o mountpoint=none {buffer}
useradd -r -s /usr/sbin/nologin {user}
install -d -o {user} -g {user} {log_dir} {run_dir}
{delegation}
""".format(src=SOURCE, parent=PARENT, buffer=BUFFER, user=USER, log_dir=LOG_DIR, run_dir=RUN_DIR,
           delegation=DELEGATION)

START_RECEIVER = """rm -f {pid}
setsid runuser -u {user} -- python3 {guest}/bin/zfsync_recv -p {port} -o {log_dir}/zfshad.log \
  -d {run_dir}/flags --pid-file {pid} {root} </dev/null >{log_dir}/stdout 2>&1 &
for i in $(seq 120); do [ -s {pid} ] && break; kill -0 $! 2>/dev/null || break; sleep 1; done
cat {pid}
""".format(pid=PID_FILE, user=USER, guest=GUEST, port=PORT, log_dir=LOG_DIR, run_dir=RUN_DIR, root=ROOT)

Tree = Dict[str, List[Tuple[str, str]]]   # dataset below its root -> [(snapshot, guid)], oldest first


@dataclass
class Sync:
    returncode: int
    output: str


class PrivilegeLab:
    def __init__(self, vm: labkit.LabVM, timings: labkit.Timings):
        self.vm = vm
        self.timings = timings
        self.receiver_pid = 0

    def sh(self, command: str, timeout: float = 300) -> str:
        return self.vm.run(command, timeout=timeout).stdout

    def start_receiver(self) -> None:
        out = self.vm.run(START_RECEIVER, timeout=300, check=False).stdout.strip()
        if not out.isdigit():
            raise AssertionError("zfsync_recv did not start as %s: %s\n%s" % (
                USER, out, self.vm.run("cat %s/stdout" % LOG_DIR, check=False).stdout))
        self.receiver_pid = int(out)

    def receiver_alive(self) -> bool:
        return self.vm.run("kill -0 %d" % self.receiver_pid, check=False).returncode == 0

    def sync(self, name: str) -> Sync:
        with self.timings.phase("sync: %s" % name):
            res = self.vm.run("cd %s && timeout 900 python3 bin/zfsync_send -p %d %s 127.0.0.1 2>&1"
                              % (GUEST, PORT, SOURCE), timeout=1000, check=False)
        return Sync(res.returncode, res.stdout)

    def tree(self, root: str) -> Tree:
        datasets = self.sh("zfs list -H -o name -t filesystem -r %s" % root).split()
        tree: Tree = {name[len(root):]: [] for name in datasets}
        out = self.sh("zfs list -H -p -o name,guid -t snapshot -s createtxg -r %s" % root)
        for line in out.splitlines():
            name, guid = line.split("\t")
            dataset, snapshot = name.split("@", 1)
            tree[dataset[len(root):]].append((snapshot, guid))
        return tree

    def assert_replica_equals_source(self) -> None:
        assert self.tree(ROOT) == self.tree(SOURCE)

    def buffer_entries(self) -> List[str]:
        return self.sh("zfs list -H -o name -t filesystem -d 1 %s" % BUFFER).split()[1:]


@pytest.fixture(scope="module")
def lab():
    timings = labkit.Timings()
    os.makedirs(OUTPUT, exist_ok=True)
    with labkit.lab_vm(STATE_DIR, "privilege", timings=timings) as vm:
        privilege_lab = PrivilegeLab(vm, timings)
        try:
            with timings.phase("prepare"):
                vm.push(labkit.REPO, list(labkit.ENGINE_PATHS), GUEST)
                vm.run("chmod -R a+rX %s" % GUEST)
                vm.run(SETUP, timeout=600)
                privilege_lab.start_receiver()
            yield privilege_lab
        finally:
            labkit.keep_logs(vm, timings, "tail -n +1 %s/* && zfs allow %s && zfs list -t all -o name,canmount,mounted "
                             "-r tank" % (LOG_DIR, PARENT), os.path.join(OUTPUT, "receiver-logs.txt"))
    summary = "least-privilege lab timings:\n" + timings.report()
    with open(os.path.join(OUTPUT, "timings.txt"), "w") as handle:
        handle.write(summary + "\n")
    print("\n" + summary, file=sys.__stderr__)


def test_the_receiver_runs_as_the_unprivileged_user(lab):
    assert lab.sh("ps -o user= -p %d" % lab.receiver_pid).strip() == USER
    uids = lab.sh("grep ^Uid: /proc/%d/status" % lab.receiver_pid).split()[1:]
    assert uids and all(uid != "0" for uid in uids), uids


def test_a_first_sync_places_new_datasets_through_the_buffer(lab):
    sync = lab.sync("first")
    assert sync.returncode == 0, sync.output
    assert "new=4" in sync.output, sync.output
    lab.assert_replica_equals_source()
    assert lab.buffer_entries() == []
    # Received with -u -o canmount=noauto: never mounted (only root could),
    # and the stream's properties arrived because they are delegated.
    states = lab.sh("zfs get -H -r -t filesystem -o value canmount,mounted %s" % ROOT).split()
    assert set(states) == {"noauto", "no"}, states
    assert lab.sh("zfs get -H -o value compression,com.example:tag %s" % ROOT).split() == ["lz4", "hello"]
    assert lab.sh("zfs get -H -o value recordsize %s/a/b" % ROOT).strip() == "64K"


def test_an_incremental_sync_brings_the_new_snapshot(lab):
    lab.sh("head -c 5000 /dev/urandom > /%s/a/g && zfs snapshot -r %s@s2" % (SOURCE, SOURCE))
    sync = lab.sync("incremental")
    assert sync.returncode == 0, sync.output
    assert "incremental=4" in sync.output, sync.output
    lab.assert_replica_equals_source()


def test_a_snapshot_destroyed_on_the_sender_is_pruned(lab):
    lab.sh("zfs destroy -r %s@s1 && zfs snapshot -r %s@s3" % (SOURCE, SOURCE))
    sync = lab.sync("prune")
    assert sync.returncode == 0, sync.output
    lab.assert_replica_equals_source()
    assert "s1" not in lab.sh("zfs list -H -o name -t snapshot -r %s" % ROOT)


def test_a_mounted_copy_cannot_be_replaced_unprivileged(lab):
    # Root's own copy of /c, mounted, sharing no snapshot with the sender:
    # FULL receives the new copy aside, but moving the old one needs an
    # unmount, which only root may do on Linux.
    lab.sh("zfs destroy -r {r}/c && zfs create {r}/c && zfs snapshot {r}/c@old && zfs get -H -o value mounted {r}/c"
           .format(r=ROOT))
    sync = lab.sync("full, old copy mounted")
    assert sync.returncode != 0, sync.output
    assert "cannot unmount" in sync.output and "permission denied" in sync.output, sync.output
    assert lab.sh("zfs list -H -o name -t snapshot %s/c" % ROOT).split() == [ROOT + "/c@old"]
    assert lab.receiver_alive()


def test_a_copy_sharing_no_snapshot_is_replaced_in_full(lab):
    lab.sh("zfs set canmount=noauto {r}/c && zfs unmount {r}/c".format(r=ROOT))
    sync = lab.sync("full")
    assert sync.returncode == 0, sync.output
    assert "full=1" in sync.output, sync.output
    lab.assert_replica_equals_source()
    assert lab.buffer_entries() == []


def test_cleanbuffer_places_a_copy_left_in_the_buffer(lab):
    # What an interrupted run leaves: a complete copy in the buffer whose
    # target is missing. The sender's cleanbuffer (every run ends with it)
    # has the receiver rename it into place.
    entry = "%s/%s" % (BUFFER, hex_suffix("/x"))
    lab.sh("zfs send %s/c@s3 | zfs receive -u -o canmount=noauto %s" % (SOURCE, entry))
    sync = lab.sync("cleanbuffer")
    assert sync.returncode == 0, sync.output
    assert lab.buffer_entries() == []
    assert lab.sh("zfs list -H -o name -t snapshot %s/x" % ROOT).split() == [ROOT + "/x@s3"]
    lab.sh("zfs destroy -r %s/x" % ROOT)
    lab.assert_replica_equals_source()


def test_without_receive_a_sync_fails_and_the_receiver_keeps_serving(lab):
    before = lab.tree(ROOT)
    lab.sh("zfs unallow -d -u %s receive %s && zfs snapshot -r %s@s4" % (USER, PARENT, SOURCE))
    sync = lab.sync("without receive")
    assert sync.returncode != 0, sync.output
    assert "cannot receive incremental stream: permission denied" in sync.output, sync.output
    assert lab.tree(ROOT) == before
    assert lab.receiver_alive()
    lab.sh("zfs allow -d -u %s receive %s" % (USER, PARENT))
    sync = lab.sync("receive delegated again")
    assert sync.returncode == 0, sync.output
    lab.assert_replica_equals_source()
    assert lab.sh("ps -o user= -p %d" % lab.receiver_pid).strip() == USER


def test_without_canmount_a_new_copy_is_dropped_not_left_mountable(lab):
    """zfs receive exits 0 when it cannot apply -o canmount=noauto; the
    receiver must notice: a new dataset would otherwise mount at boot."""
    lab.sh("zfs unallow -d -u %s canmount %s && zfs create %s/nc && zfs snapshot -r %s@s5"
           % (USER, PARENT, SOURCE, SOURCE))
    sync = lab.sync("without canmount")
    assert sync.returncode != 0, sync.output
    assert "canmount=noauto was refused" in sync.output, sync.output
    assert lab.vm.run("zfs list %s/nc" % ROOT, check=False).returncode != 0
    assert lab.buffer_entries() == []
    # The copies that had noauto already took their incremental.
    assert ROOT + "/c@s5" in lab.sh("zfs list -H -o name -t snapshot %s/c" % ROOT).split()
    assert lab.receiver_alive()
    lab.sh("zfs allow -d -u %s canmount %s" % (USER, PARENT))
    sync = lab.sync("canmount delegated again")
    assert sync.returncode == 0, sync.output
    lab.assert_replica_equals_source()
    assert lab.sh("zfs get -H -o value canmount %s/nc" % ROOT).strip() == "noauto"


def test_the_delegation_is_what_the_docs_give():
    with open(os.path.join(labkit.REPO, "docs", "security.md")) as handle:
        docs = handle.read()
    for command in DELEGATION.replace(PARENT, "POOL/zfsync").split(" && "):
        assert command in docs, "docs/security.md lacks: %s" % shlex.quote(command)
