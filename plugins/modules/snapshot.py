#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: snapshot
short_description: Take a zfsyncron snapshot of a ZFS dataset tree and apply retention
version_added: 0.1.0
description:
  - Takes a snapshot of O(dataset), and by default of all its descendants with the same name
    (C(zfs snapshot -r)), named the way C(zfsyncron) names them, C(yymmdd-HHMMSS_<class>) in the host's
    local time, or with a name of your choice (O(name)).
  - The class of a generated name relates it to the newest snapshot of O(dataset) before it, as
    C(zfsyncron) does. V(S) when that one is of the same minute, V(M) of the same hour, V(H) of the same
    day, V(D) otherwise or when there is none. The time of the newest snapshot comes from its name when it
    is a C(zfsyncron) name, else from its creation time.
  - With O(retention), keeps the newest N snapshots of each class and destroys older ones of that class
    (with C(zfs destroy -r) when O(recursive=true)). Only snapshots with C(zfsyncron) names belong to a class;
    any other snapshot of O(dataset) is never destroyed.
  - C(zfsyncron) prunes only the class of the snapshot it has just taken; this module trims every class on
    each run. Both end at the same snapshots as long as the counts stay the same. After a count is
    lowered, this module applies it at once.
  - Idempotence. With O(name), the snapshot is taken once, and a run that finds it reports no change.
    With generated names every run takes a new snapshot and so reports a change. Set O(min_interval) to make
    runs within that many seconds of the newest C(zfsyncron) snapshot take none.
author:
  - zfsync engineers (@zfsync)
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - Predicts the snapshot that would be taken (its generated name uses the time of the check run) and
        the snapshots retention would destroy. Nothing is created or destroyed.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details:
      - Shows the snapshots of O(dataset) before and after, one name per line.
  idempotent:
    description: When run twice in a row with the same arguments, the second run reports no change.
    support: partial
    details:
      - Idempotent with O(name), or with a generated name when the second run falls within O(min_interval).
        Otherwise each run takes a new snapshot, which is its purpose.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
    details:
      - Any host with ZFS (OpenZFS on FreeBSD or Linux, zfs-fuse) and Python 3.9 or later.
options:
  dataset:
    description:
      - The dataset to snapshot, for example C(tank/data). It must exist.
      - Retention, class and O(min_interval) look at the snapshots of this dataset only.
    type: str
    required: true
  recursive:
    description:
      - Snapshot the descendants of O(dataset) too, with the same name (C(zfs snapshot -r)), and destroy
        expired snapshots on them too (C(zfs destroy -r)).
      - This is what C(zfsyncron) does, and what the C(zfsync.zfsync.sync) module needs. A sync sends each
        dataset's own snapshots.
    type: bool
    default: true
  name:
    description:
      - A fixed snapshot name (the part after C(@)) instead of a generated one. Letters, digits, C(_), C(-),
        C(.) and space; no C(:), C(@) or C(/), so that it can be replicated.
      - When O(dataset) has a snapshot of that name already, none is taken.
      - Such a snapshot has no class and is never destroyed by O(retention).
    type: str
  retention:
    description:
      - Keep this many of the newest snapshots of each class and destroy the older ones. Without this option
        nothing is destroyed.
      - A class left out keeps the default count of C(zfsyncron) (the same defaults as its C(-s), C(-m), C(-h), C(-d)).
      - V(0) keeps none of that class. A new snapshot of that class is then destroyed again by the same run.
    type: dict
    suboptions:
      secondly:
        description: Snapshots of class V(S) to keep.
        type: int
        default: 1
      minutely:
        description: Snapshots of class V(M) to keep.
        type: int
        default: 4
      hourly:
        description: Snapshots of class V(H) to keep.
        type: int
        default: 3
      daily:
        description: Snapshots of class V(D) to keep.
        type: int
        default: 2
  min_interval:
    description:
      - Seconds. Take no new snapshot when the newest snapshot of O(dataset) with a C(zfsyncron) name is
        younger than this. Its age is taken from its name. Retention is still applied.
      - Only for generated names; cannot be combined with O(name).
      - Without it, a snapshot is taken on every run.
    type: int
notes:
  - Generated names use the managed host's local time, as C(zfsyncron) does. Two runs within the same
    second get the same time in their names; the second one is then of class V(S) and still distinct, unless
    a snapshot with exactly that name exists, in which case none is taken.
  - The newest N of a class are the last N created (the order C(zfs list) shows), not the last N by name. The
    two differ only after the clock went back, for example at the end of daylight saving time.
  - A C(zfsyncron) job that manages the same dataset prunes with its own counts. Give both the same counts.
seealso:
  - module: zfsync.zfsync.sync
  - module: zfsync.zfsync.sender
"""

EXAMPLES = r"""
- name: Take a zfsyncron snapshot of tank/data and its descendants, keep the default counts
  zfsync.zfsync.snapshot:
    dataset: tank/data
    retention: {}

- name: At most one snapshot an hour, keep a week of dailies
  zfsync.zfsync.snapshot:
    dataset: tank/data
    min_interval: 3600
    retention:
      hourly: 24
      daily: 7

- name: A named snapshot before an upgrade; a second run leaves it alone
  zfsync.zfsync.snapshot:
    dataset: tank/data
    name: before-upgrade-14.1
  register: zfsync_before_upgrade

- name: Apply retention only, to this dataset and not its descendants
  zfsync.zfsync.snapshot:
    dataset: tank/data
    recursive: false
    min_interval: 86400
    retention:
      secondly: 0
      minutely: 0
"""

RETURN = r"""
created:
  description:
    - The snapshot taken (or, in check mode, that would be taken), as C(dataset@name); empty when none.
    - With O(recursive=true) the same name was taken on every descendant as well.
  returned: always
  type: list
  elements: str
  sample: ["tank/data@240115-120007_H"]
destroyed:
  description:
    - Snapshots destroyed by O(retention) (or that would be in check mode), oldest first, as C(dataset@name).
    - With O(recursive=true) they were destroyed on every descendant as well.
  returned: always
  type: list
  elements: str
  sample: ["tank/data@240115-090007_H"]
snapshot_class:
  description: Class of the generated snapshot taken (V(S), V(M), V(H), V(D)); null when none was taken or O(name) was given.
  returned: always
  type: str
  sample: H
snapshots:
  description: Snapshot names (after C(@)) of O(dataset) once the run is done (predicted in check mode), oldest first.
  returned: always
  type: list
  elements: str
  sample: ["240114-000007_D", "240115-000007_D", "240115-110007_H", "240115-120007_H"]
"""

import time
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import protocol  # noqa: F401 pylint: disable=unused-import
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import snapshots
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import zfs

ZFS_DIRS = ["/sbin", "/usr/sbin", "/usr/local/sbin"]


class SnapshotTask:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.dataset = self.params["dataset"]
        self.zfs = zfs.Zfs(module.get_bin_path("zfs", required=True, opt_dirs=ZFS_DIRS))

    def fail(self, msg, error=None, **extra):
        if isinstance(error, zfs.ZfsError):
            extra.update(cmd=" ".join(error.argv), stderr=error.stderr, rc=error.returncode)
        self.module.fail_json(msg=msg, **extra)

    def retention(self):
        wanted = self.params["retention"]
        if wanted is None:
            return None
        try:
            return snapshots.Retention(**wanted)
        except ValueError as error:
            self.fail("retention for %s: %s" % (self.dataset, error))

    def existing(self):
        if not self.dataset or self.dataset.startswith("/") or "@" in self.dataset or "#" in self.dataset:
            self.fail("dataset %r is not a dataset name (pool/path, no leading '/', no '@')" % self.dataset)
        try:
            if not self.zfs.exists(self.dataset):
                self.fail("dataset %s does not exist" % self.dataset)
            created = self.zfs.snapshot_creation(self.dataset)
        except zfs.ZfsError as error:
            self.fail("cannot list the snapshots of %s: %s" % (self.dataset, error), error)
        return [snapshots.Snapshot(name, when) for name, when in created.items()]

    def plan(self, existing):
        min_interval = self.params["min_interval"]
        if min_interval is not None and min_interval < 0:
            self.fail("min_interval must be 0 or more seconds, got %d" % min_interval)
        try:
            return snapshots.plan_snapshot(existing, time.time(), retention=self.retention(),
                                           min_interval=min_interval or 0, name=self.params["name"])
        except ValueError as error:
            self.fail("snapshot of %s: %s" % (self.dataset, error))

    def apply(self, plan):
        recursive = self.params["recursive"]
        created, destroyed = [], []
        if plan.create:
            full = "%s@%s" % (self.dataset, plan.create)
            try:
                self.zfs.snapshot([full], recursive=recursive)
            except zfs.ZfsError as error:
                self.fail("cannot take the snapshot %s: %s" % (full, error), error, created=[], destroyed=[])
            created.append(full)
        for name in plan.destroy:
            full = "%s@%s" % (self.dataset, name)
            try:
                self.zfs.destroy(full, recursive=recursive)
            except zfs.ZfsError as error:
                self.fail("retention: cannot destroy %s: %s" % (full, error), error,
                          created=created, destroyed=destroyed, changed=bool(created or destroyed))
            destroyed.append(full)
        return created, destroyed

    def run(self):
        before = self.existing()
        plan = self.plan(before)
        if self.module.check_mode:
            created = ["%s@%s" % (self.dataset, plan.create)] if plan.create else []
            destroyed = ["%s@%s" % (self.dataset, name) for name in plan.destroy]
        else:
            created, destroyed = self.apply(plan)
        result = dict(changed=plan.changes, created=created, destroyed=destroyed,
                      snapshot_class=plan.snapshot_class, snapshots=list(plan.after))
        if self.module._diff:
            result["diff"] = dict(
                before_header="snapshots of %s" % self.dataset, after_header="snapshots of %s" % self.dataset,
                before="".join(s.name + "\n" for s in before), after="".join(n + "\n" for n in plan.after))
        return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dataset=dict(type="str", required=True),
            recursive=dict(type="bool", default=True),
            name=dict(type="str"),
            retention=dict(type="dict", options=dict(
                secondly=dict(type="int", default=1),
                minutely=dict(type="int", default=4),
                hourly=dict(type="int", default=3),
                daily=dict(type="int", default=2),
            )),
            min_interval=dict(type="int"),
        ),
        mutually_exclusive=[("name", "min_interval")],
        supports_check_mode=True,
    )
    task = SnapshotTask(module)
    try:
        result = task.run()
    except (zfs.ZfsError, OSError) as error:
        module.fail_json(msg="zfsync snapshot of %s: %s" % (module.params["dataset"], error),
                         exception=traceback.format_exc())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
