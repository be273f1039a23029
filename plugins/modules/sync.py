#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: sync
short_description: Replicate a ZFS dataset tree to a zfsync receiver now
version_added: 0.1.0
description:
  - Runs a multithreaded zfsync sync of O(dataset) and its descendants from the host the task runs on
    (the sender) to a zfsync receiver daemon, in-process through this collection's engine; nothing has
    to be installed on the sender besides ZFS and Python 3.9 or later.
  - For each dataset the receiver answers what it needs (nothing, the whole dataset, a replacement, or the
    snapshots after the newest one both sides have) and only that is sent. Snapshots the sender no longer
    has are destroyed on the receiver.
  - Optionally takes a recursive snapshot of O(dataset) first (O(snapshot)), so that the sync carries the
    current state.
  - Works with receivers of this collection and with the original C zfsync receiver (wire protocol v1).
    Before the sync the sender asks the receiver which one it is with one C(xhello) message; an original
    answers C(Unknown cmd xhello) and logs it.
  - The zfsync wire protocol has no authentication and no encryption; use it on trusted networks.
author:
  - zfsync engineers (@zfsync)
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - In check mode no snapshot is taken and no C(sync) message is sent to any receiver. A receiver of this
        collection is asked with the C(xplan) protocol extension what it would do for each dataset, which
        changes nothing on it; the prediction includes the snapshot O(snapshot) would take.
      - An original zfsync receiver cannot be asked without acting on the question (it would destroy
        snapshots and wait for streams), so against one the plan of every dataset with snapshots is
        V(unknown), a warning says so, and C(changed) is V(true) because a change cannot be ruled out.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: partial
    details:
      - A summary, not the data moved. For every dataset that gets (or would get) a stream, "before" is what
        the receiver's replica had in common with the sender (V(absent), no common snapshot, or the newest
        common snapshot) and "after" is the sender's newest snapshot; plus the snapshot O(snapshot) takes.
      - Snapshots the receiver prunes during a sync are not shown (the protocol does not report them).
  idempotent:
    description: When run twice in a row with the same arguments, the second run reports no change.
    support: full
    details:
      - C(changed) is V(true) only when a stream was sent or a snapshot was taken. A second run with no new
        snapshot sends nothing and reports no change. With O(snapshot=auto) every run takes a new snapshot,
        so every run changes; with an explicit O(snapshot) name, only the first run takes it.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
    details:
      - Linux (OpenZFS, zfs-fuse) and FreeBSD; the sender host needs C(zfs) on its PATH.
options:
  dataset:
    description:
      - The root of the tree to replicate on this host, for example C(tank/data). It and every descendant
        filesystem and volume are synced; datasets without snapshots are skipped.
    type: str
    required: true
  receiver:
    description:
      - The receiver daemon's host name, IPv4 or IPv6 address.
    type: str
    required: true
  port:
    description: The receiver daemon's TCP port (its C(-p)).
    type: int
    default: 30
  threads:
    description: Datasets sent at once; each worker holds one connection to the receiver.
    type: int
    default: 4
  bind_address:
    description:
      - Local address to connect from. By default the system chooses (the original bound 127.0.0.1, which
        cannot reach another host).
    type: str
  frame_size:
    description:
      - Protocol frame size. Use V(256) for receivers older than 2021-02-18; receivers of this collection
        accept both.
    type: int
    choices: [256, 512]
    default: 512
  snapshot:
    description:
      - Take a recursive snapshot of O(dataset) before the sync.
      - V(auto) names it as zfsyncron does, C(yymmdd-HHMMSS_<class>) in the host's local time, the class
        (C(S), C(M), C(H), C(D)) relating it to the newest snapshot before it. No retention is applied; use
        M(zfsync.zfsync.snapshot) for that.
      - Any other value is the snapshot name itself (letters, digits, C(_), C(-), C(.), space). When a
        snapshot of that name exists on O(dataset) it is left alone and not taken again.
      - By default no snapshot is taken and the existing ones are synced.
    type: str
  timeout:
    description: Seconds to wait for the receiver's answer to one message.
    type: float
    default: 300
  connect_timeout:
    description: Seconds to wait for a connection to the receiver.
    type: float
    default: 30
  stream_idle_timeout:
    description:
      - A stream that moves no bytes for this many seconds is given up. A stream that keeps moving may take
        as long as it needs.
    type: float
    default: 600
  log_file:
    description:
      - Append the sender's log to this file on the sender host, in the original zfsync format.
      - By default nothing is logged on the host; on failure the log lines are returned in RV(log).
      - Not written in check mode; the log lines of a failed plan are returned in RV(log).
    type: path
  verbose:
    description: With O(log_file), also one log per worker thread beside it (C(<stem>.th<N>.<ext>)).
    type: bool
    default: false
  tls_cert:
    description:
      - This sender's certificate (PEM, on the sender host) for mutual TLS with a zfsync receiver of ours
        started with C(--tls-cert) and C(--tls-ca). Original zfsync receivers have no TLS.
    type: path
  tls_key:
    description: The private key of O(tls_cert), if not in the same file.
    type: path
  tls_ca:
    description: The CA the receiver's certificate must come from. Required with O(tls_cert).
    type: path
  tls_server_name:
    description: The name the receiver's certificate must carry; defaults to O(receiver).
    type: str
  fail_on_error:
    description:
      - Fail the task when a dataset failed or the run did not complete (receiver unreachable, C(cleanbuffer)
        refused, ...). The results of every dataset are returned either way.
      - With V(false) the task succeeds, warns, and RV(ok) is V(false); use this to sync many receivers and
        judge the results afterwards.
    type: bool
    default: true
notes:
  - The datasets are walked parent first, and children may arrive before their parents; the receiver keeps
    them aside until their parent is there, and the last worker asks it to place them (C(cleanbuffer)).
  - C(changed) reflects streams sent. Pruning by the receiver of snapshots the sender no longer has happens
    during a sync that sends nothing as well, and is not reported as a change.
  - In check mode, a receiver that cannot be reached fails the task as a real run would.
seealso:
  - module: zfsync.zfsync.receiver
  - module: zfsync.zfsync.receiver_info
  - module: zfsync.zfsync.snapshot
"""

EXAMPLES = r"""
- name: Sync tank/data to the backup host now
  zfsync.zfsync.sync:
    dataset: tank/data
    receiver: backup1.example.com

- name: Snapshot first (zfsyncron naming), then sync with 8 threads to a receiver on port 3030
  zfsync.zfsync.sync:
    dataset: tank/data
    receiver: 192.0.2.10
    port: 3030
    threads: 8
    snapshot: auto
  register: zfsync_result

- name: Show what went out
  ansible.builtin.debug:
    msg: >-
      {{ zfsync_result.totals.bytes }} bytes; new datasets:
      {{ zfsync_result.datasets | selectattr('action', 'eq', 'new') | map(attribute='dataset') | list }}

- name: A named snapshot before an upgrade, taken once however often the play runs
  zfsync.zfsync.sync:
    dataset: tank/data
    receiver: "2001:db8::10"
    snapshot: before-upgrade-14.1

- name: Sync to several receivers and check the results afterwards
  zfsync.zfsync.sync:
    dataset: tank/data
    receiver: "{{ item }}"
    fail_on_error: false
  loop: [backup1, backup2]
  register: zfsync_runs

- name: Datasets that failed, with the receivers' reasons
  ansible.builtin.debug:
    msg: "{{ zfsync_runs.results | community.general.json_query('[].datasets[?action==`failed`][].[dataset, error]') }}"
"""

RETURN = r"""
datasets:
  description:
    - One entry per dataset of the tree, parent before children.
    - In check mode, what would happen (C(bytes) is null).
  returned: always
  type: list
  elements: dict
  contains:
    dataset:
      description: The dataset on the sender.
      type: str
      sample: tank/data/home
    suffix:
      description: Its name relative to O(dataset) (empty for O(dataset) itself), as on the wire.
      type: str
      sample: /home
    action:
      description:
        - V(new) (the receiver had no copy), V(full) (its copy shared no snapshot and was replaced),
          V(incremental), V(uptodate), V(skipped) (no snapshots), V(failed).
        - V(unknown) in check mode against an original zfsync receiver.
      type: str
      sample: incremental
    snapshots:
      description: Number of the dataset's snapshots sent in its list.
      type: int
      sample: 4
    from:
      description: The snapshot the incremental stream starts from (the newest one both sides had); null otherwise.
      type: str
      sample: 240101-120000_D
    to:
      description: The newest snapshot, which the receiver has after the sync.
      type: str
      sample: 240102-120000_D
    bytes:
      description: Bytes of the streams as acknowledged by the receiver's TCP stack; 0 when up to date, null when unknown.
      type: int
      sample: 1048576
    seconds:
      description: Time spent on this dataset.
      type: float
      sample: 0.42
    error:
      description: Why the dataset failed (what the receiver or zfs said); null unless V(failed).
      type: str
      sample: "receiver: 1:FULL refused: tank/backup/home shares no snapshot with the sender"
    warnings:
      description: Things worth knowing that did not fail the dataset (no snapshots, unsendable snapshot names).
      type: list
      elements: str
      sample: []
totals:
  description: The run in numbers; one key per action with the number of datasets.
  returned: always
  type: dict
  contains:
    datasets:
      description: Number of datasets in the tree.
      type: int
      sample: 12
    bytes:
      description: Bytes sent, summed over the datasets.
      type: int
      sample: 52428800
    seconds:
      description: Duration of the sync (without the snapshot).
      type: float
      sample: 4.1
    new:
      description: Datasets sent in full to a receiver that had no copy.
      type: int
      sample: 0
    full:
      description: Datasets sent in full to replace a copy without common snapshots.
      type: int
      sample: 0
    incremental:
      description: Datasets sent incrementally.
      type: int
      sample: 11
    uptodate:
      description: Datasets the receiver already had.
      type: int
      sample: 1
    skipped:
      description: Datasets without snapshots.
      type: int
      sample: 0
    failed:
      description: Datasets that failed.
      type: int
      sample: 0
    unknown:
      description: Datasets whose plan cannot be known (check mode against an original receiver).
      type: int
      sample: 0
  sample: {datasets: 12, bytes: 52428800, seconds: 4.1, new: 0, full: 0, incremental: 11, uptodate: 1,
           skipped: 0, failed: 0, unknown: 0}
peer:
  description: The receiver, as the protocol probe found it.
  returned: always
  type: dict
  contains:
    type:
      description: V(zfsync) (this collection's receiver), V(original) (the C zfsync), null when it could not be reached.
      type: str
      sample: zfsync
    version:
      description: The receiver's engine version (only a receiver of this collection says it).
      type: str
      sample: 0.1.0
    receiver:
      description: O(receiver).
      type: str
      sample: backup1.example.com
    port:
      description: O(port).
      type: int
      sample: 30
snapshot_created:
  description:
    - Name (after C(@)) of the recursive snapshot taken on O(dataset), or that would be taken in check mode;
      null when none was.
  returned: always
  type: str
  sample: 240102-120000_D
planned:
  description: True when the results are a plan (check mode) and nothing was sent.
  returned: always
  type: bool
  sample: false
ok:
  description: True when every dataset and the run itself succeeded.
  returned: always
  type: bool
  sample: true
errors:
  description: Errors of the run as a whole (receiver unreachable, cleanbuffer refused, a zfs listing that failed).
  returned: always
  type: list
  elements: str
  sample: []
summary:
  description: One line about the run, as C(zfsync_send) prints it.
  returned: always
  type: str
  sample: "tank/data -> backup1 port 30: 12 datasets, 52428800 bytes, 4.10 s; new=0 full=0 incremental=11 uptodate=1 skipped=0 failed=0"
version:
  description: Version of the zfsync engine that ran the sync.
  returned: always
  type: str
  sample: 0.1.0
log:
  description: The sender's log lines (the last 200), when O(log_file) is not set or in check mode.
  returned: on failure
  type: list
  elements: str
  sample: ["27/11/2025 03:24:01:123456 | th:1 | tank/data/home: failed: receiver: 1:busy: ..."]
"""

import io
import time
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.zfsync.zfsync.plugins.module_utils import zfsync as engine
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import connection  # noqa: F401 pylint: disable=unused-import
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import logs
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import protocol
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import sender
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import snapshots
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import zfs

ACTIONS = ("new", "full", "incremental", "uptodate", "skipped", "failed", "unknown")
SENDING = ("new", "full", "incremental")
LOG_LINES_RETURNED = 200


class PlannedSnapshotZfs(zfs.Zfs):
    """zfs as it will look once ``zfs snapshot -r ROOT@NAME`` is taken: a
    check-mode plan then asks the receiver about the tree the real run will
    send, new snapshot included."""

    def __init__(self, planned):
        super(PlannedSnapshotZfs, self).__init__()
        self.planned = planned

    def snapshots_tree(self, root):
        tree = super(PlannedSnapshotZfs, self).snapshots_tree(root)
        for dataset in self.filesystems(root):
            tree.setdefault(dataset, []).append(self.planned)
        return tree


class SyncTask:
    """Adapter between the module's options and the engine's sender."""

    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.root = self.params["dataset"].rstrip("/")
        self.zfs = zfs.Zfs()
        self.log_buffer = None

    # -- checks -----------------------------------------------------------

    def validate(self):
        params = self.params
        name = self.root
        if not name or name.startswith("/") or "@" in name or "#" in name:
            self.fail("dataset %r is not a dataset name (pool/path, no leading '/', no '@')" % params["dataset"])
        try:
            protocol.validate_suffix("/" + name)
        except protocol.ProtocolError as error:
            self.fail("dataset %r cannot be synced: %s" % (params["dataset"], error))
        if not params["receiver"] or any(c.isspace() for c in params["receiver"]):
            self.fail("receiver must be a host name or address, got %r" % params["receiver"])
        if not 0 < params["port"] < 65536:
            self.fail("port must be 1..65535, got %d" % params["port"])
        if params["threads"] < 1:
            self.fail("threads must be at least 1, got %d" % params["threads"])
        for option in ("timeout", "connect_timeout", "stream_idle_timeout"):
            if params[option] <= 0:
                self.fail("%s must be a positive number of seconds, got %s" % (option, params[option]))

    def fail(self, msg, **extra):
        self.module.fail_json(msg=msg, **extra)

    # -- the snapshot -----------------------------------------------------

    def snapshot_to_take(self):
        """The name of the recursive snapshot to take now, None for none."""
        wanted = self.params["snapshot"]
        if wanted is None:
            return None
        try:
            if wanted == "auto":
                created = self.zfs.snapshot_creation(self.root)
                existing = [snapshots.Snapshot(n, t) for n, t in created.items()]
                return snapshots.plan_snapshot(existing, time.time()).create
            snapshots.check_fixed_name(wanted)
            return None if self.zfs.exists("%s@%s" % (self.root, wanted)) else wanted
        except ValueError as error:
            self.fail("snapshot of %s: %s" % (self.root, error))
        except zfs.ZfsError as error:
            self.fail("cannot list the snapshots of %s: %s" % (self.root, error))
        return None

    def take_snapshot(self, name):
        try:
            self.zfs.snapshot(["%s@%s" % (self.root, name)], recursive=True)
        except zfs.ZfsError as error:
            self.fail("cannot take the snapshot %s@%s: %s" % (self.root, name, error))

    # -- the sync ---------------------------------------------------------

    def options(self):
        params = self.params
        return sender.SyncOptions(
            root=self.root, receiver=params["receiver"], port=params["port"], threads=params["threads"],
            bind_address=params["bind_address"], frame_size=params["frame_size"], log_file=params["log_file"],
            verbose=params["verbose"], timeout=params["timeout"], connect_timeout=params["connect_timeout"],
            stream_idle_timeout=params["stream_idle_timeout"], plan_only=self.module.check_mode,
            tls_cert=params["tls_cert"], tls_key=params["tls_key"], tls_ca=params["tls_ca"],
            tls_server_name=params["tls_server_name"])

    def open_log(self):
        if self.params["log_file"] and not self.module.check_mode:
            return logs.Log(self.params["log_file"], self.params["verbose"])
        # Without a log file the engine would write to standard error; keep
        # the lines for a failure report instead. Check mode writes nothing.
        self.log_buffer = io.StringIO()
        return logs.Log(None, False, stream=self.log_buffer)

    def sync(self, planned_snapshot):
        tool = PlannedSnapshotZfs(planned_snapshot) if planned_snapshot else self.zfs
        log = self.open_log()
        try:
            result = sender.sync_tree(self.options(), zfs=tool, log=log)
        finally:
            log.close()
        if result.plan_only and result.peer == sender.PEER_ORIGINAL:
            self.plan_unknown(result, tool)
        return result

    def plan_unknown(self, result, tool):
        """Check mode against an original receiver: the engine refused to plan
        (a ``sync`` frame would act). Say what is known: the tree, which
        datasets have nothing to send, and that the rest is unknown."""
        # The refusal is the run's only error here: the tree was listed and
        # the probe answered before it.
        result.errors = []
        try:
            datasets = tool.filesystems(self.root)
            tree = tool.snapshots_tree(self.root)
        except zfs.ZfsError as error:
            result.errors.append(str(error))
            return
        for dataset in datasets:
            item = sender.DatasetResult(dataset, protocol.suffix_of(dataset, self.root))
            names = tree.get(dataset, [])
            item.snapshots = len(names)
            if names:
                item.action = "unknown"
                item.to_snapshot = names[-1]
            else:
                item.action = "skipped"
                item.warnings.append("no snapshots")
            result.datasets.append(item)
        self.module.warn("check mode: %s port %d is an original zfsync receiver, which cannot be asked what it "
                         "would do without acting; the plan of %d datasets is unknown and changed is reported "
                         "as true" % (self.params["receiver"], self.params["port"],
                                      sum(d.action == "unknown" for d in result.datasets)))

    # -- reporting --------------------------------------------------------

    def log_lines(self):
        if self.log_buffer is None:
            return None
        return self.log_buffer.getvalue().splitlines()[-LOG_LINES_RETURNED:]

    def failure_message(self, result):
        where = "%s to %s port %d" % (self.root, self.params["receiver"], self.params["port"])
        failed = [d for d in result.datasets if d.action == "failed"]
        parts = []
        if failed:
            parts.append("%d of %d datasets failed: %s" % (
                len(failed), len(result.datasets), "; ".join("%s: %s" % (d.dataset, d.error) for d in failed)))
        if result.errors:
            parts.append("; ".join(result.errors))
        return "zfsync %s %s: %s" % ("plan of" if result.plan_only else "sync of", where, "; ".join(parts))

    def run(self):
        self.validate()
        snapshot = self.snapshot_to_take()
        if snapshot and not self.module.check_mode:
            self.take_snapshot(snapshot)
        result = self.sync(snapshot if self.module.check_mode else None)
        datasets = [dataset_entry(d) for d in result.datasets]
        if result.plan_only:
            changed = any(d["action"] in SENDING + ("unknown",) for d in datasets)
        else:
            changed = result.sent
        output = dict(
            changed=bool(changed or snapshot),
            datasets=datasets,
            totals=totals(result),
            peer=dict(type=result.peer, version=result.peer_version, receiver=self.params["receiver"],
                      port=self.params["port"]),
            snapshot_created=snapshot,
            planned=result.plan_only,
            ok=not result.errors and not any(d["action"] == "failed" for d in datasets),
            errors=list(result.errors),
            summary=result.summary_line(),
            version=engine.__version__,
        )
        if self.module._diff:
            output["diff"] = diff(self.root, self.params["receiver"], self.params["port"], datasets, snapshot)
        if not output["ok"]:
            message = self.failure_message(result)
            if self.params["fail_on_error"]:
                if self.log_buffer is not None:
                    output["log"] = self.log_lines()
                self.fail(message, **output)
            self.module.warn(message)
        return output


def dataset_entry(item):
    entry = dict(dataset=item.dataset, suffix=item.suffix, action=item.action, snapshots=item.snapshots,
                 to=item.to_snapshot, bytes=item.bytes, seconds=round(item.seconds, 3), error=item.error,
                 warnings=list(item.warnings))
    entry["from"] = item.from_snapshot
    return entry


def totals(result):
    counts = dict((action, 0) for action in ACTIONS)
    for item in result.datasets:
        counts[item.action] = counts.get(item.action, 0) + 1
    counts.update(datasets=len(result.datasets), bytes=result.bytes, seconds=round(result.seconds, 3))
    return counts


def diff(root, receiver, port, datasets, snapshot):
    """A summary of the replica before and after, per dataset that gets a
    stream; the data itself is not diffed."""
    before, after = [], []
    for entry in datasets:
        label = entry["suffix"] or "(root)"
        if entry["action"] == "new":
            before.append("%s: absent\n" % label)
        elif entry["action"] == "full":
            before.append("%s: no snapshot in common with the sender (replaced)\n" % label)
        elif entry["action"] == "incremental":
            before.append("%s: @%s\n" % (label, entry["from"]))
        elif entry["action"] == "unknown":
            before.append("%s: unknown (an original receiver cannot be asked)\n" % label)
        else:
            continue
        after.append("%s: @%s\n" % (label, entry["to"]))
    header = "replica of %s on %s port %d" % (root, receiver, port)
    result = []
    if snapshot:
        result.append(dict(before_header="snapshots of %s" % root, after_header="snapshots of %s" % root,
                           before="", after="%s@%s (recursive)\n" % (root, snapshot)))
    if before:
        result.append(dict(before_header="%s (newest snapshot in common)" % header,
                           after_header="%s (newest snapshot)" % header,
                           before="".join(before), after="".join(after)))
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dataset=dict(type="str", required=True),
            receiver=dict(type="str", required=True),
            port=dict(type="int", default=30),
            threads=dict(type="int", default=4),
            bind_address=dict(type="str"),
            frame_size=dict(type="int", default=512, choices=[256, 512]),
            snapshot=dict(type="str"),
            timeout=dict(type="float", default=300.0),
            connect_timeout=dict(type="float", default=30.0),
            stream_idle_timeout=dict(type="float", default=600.0),
            log_file=dict(type="path"),
            verbose=dict(type="bool", default=False),
            fail_on_error=dict(type="bool", default=True),
            tls_cert=dict(type="path"),
            tls_key=dict(type="path"),
            tls_ca=dict(type="path"),
            tls_server_name=dict(type="str"),
        ),
        supports_check_mode=True,
        required_together=[("tls_cert", "tls_ca")],
    )
    task = SyncTask(module)
    try:
        result = task.run()
    except (zfs.ZfsError, sender.SenderError, OSError, ValueError) as error:
        module.fail_json(msg="zfsync sync of %s to %s: %s" % (module.params["dataset"], module.params["receiver"], error),
                         exception=traceback.format_exc())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
