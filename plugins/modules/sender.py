#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: sender
short_description: Set up the zfsync sender side, a zfsyncron cron job, on a host
version_added: 0.1.0
description:
  - Installs the zfsync engine that this module was itself shipped with under O(prefix), and the
    C(zfsync_recv), C(zfsync_send) and C(zfsyncron) launchers in C(<prefix>/bin). These are the same files
    M(zfsync.zfsync.receiver) installs, so a host that sends and receives has one engine.
  - Writes one cron file for O(dataset), in the system crontab format (with the user column) that both
    Linux (C(/etc/cron.d)) and FreeBSD (C(/usr/local/etc/cron.d)) read. Its one job runs
    C(<prefix>/bin/zfsyncron) with the original zfsync flags. Each run takes a recursive snapshot of
    O(dataset) named C(yymmdd-HHMMSS_<class>), destroys the snapshots of that class beyond O(retention),
    then syncs the tree to every receiver in O(receivers), in order.
  - The cron file is the job's whole configuration. No other configuration file is written, because
    C(zfsyncron) reads none. The file's comment lines say what the job does.
  - With O(state=absent) the cron file is removed. The engine and the launchers stay, because the receiver
    daemon and the jobs of other datasets may use them. Datasets and snapshots are never touched.
  - The zfsync wire protocol has no authentication and no encryption. Send over trusted networks only.
author:
  - zfsync engineers (@zfsync)
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - Predicts every file that would be created, updated or removed. Nothing is written.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details:
      - Shows the cron file and the launchers before and after in full, and the engine as one line per file
        with its checksum.
  idempotent:
    description: When run twice in a row with the same arguments, the second run reports no change.
    support: full
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
    details:
      - Linux with a cron that reads C(/etc/cron.d) (Debian's C(cron), cronie), and FreeBSD's cron(8).
options:
  dataset:
    description:
      - The root of the tree to replicate, for example C(tank/data). Its descendants are replicated with it.
      - It must exist when the module runs (in check mode a missing dataset only warns, since an earlier task
        may create it).
    type: str
    required: true
  receivers:
    description:
      - The receiver daemons to sync to, in order. Each run of the job syncs to each of them.
      - Required with O(state=present).
    type: list
    elements: dict
    suboptions:
      host:
        description:
          - Host name, IPv4 or IPv6 address (without brackets) of a M(zfsync.zfsync.receiver) daemon, or of
            an original zfsync receiver.
        type: str
        required: true
      port:
        description: Its TCP port (the receiver's C(-p)).
        type: int
        default: 30
  retention:
    description:
      - How many snapshots of each class C(zfsyncron) keeps (its C(-s), C(-m), C(-h), C(-d)). A class left out
        keeps its default.
      - The class of a new snapshot relates it to the newest snapshot before it. V(S) for the same minute,
        V(M) for the same hour, V(H) for the same day, V(D) otherwise.
    type: dict
    suboptions:
      secondly:
        description: Snapshots of class V(S) to keep (C(-s)).
        type: int
        default: 1
      minutely:
        description: Snapshots of class V(M) to keep (C(-m)).
        type: int
        default: 4
      hourly:
        description: Snapshots of class V(H) to keep (C(-h)).
        type: int
        default: 3
      daily:
        description: Snapshots of class V(D) to keep (C(-d)).
        type: int
        default: 2
  window:
    description:
      - C(zfsyncron -w). A run does nothing unless the epoch second it starts in is a multiple of this.
      - cron starts jobs at second 0 of a minute, so V(300) with the every-minute schedule runs the job every
        five minutes. A slow start can push a run past the second and make it skip, so a coarser cron
        schedule is the more predictable way to run less often.
    type: int
    default: 1
  threads:
    description: Datasets sent at once (C(zfsyncron -t)); each sender worker holds one connection.
    type: int
    default: 2
  bind_address:
    description:
      - Local address to send from (C(-i)). By default the system chooses. The original's 127.0.0.1 cannot
        reach another host.
    type: str
  log_file:
    description:
      - The job's log (C(-o)), in the original zfsync format, with one log per sender worker beside it
        (C(<stem>.th<N>.<ext>)).
      - Jobs of several datasets may share it; each line names its thread.
    type: path
    default: /var/log/zfsyncron.log
  frame_size:
    description: Protocol frame size. Use V(256) for receivers older than 2021-02-18.
    type: int
    choices: [256, 512]
    default: 512
  tls_cert:
    description:
      - This sender's certificate (PEM, on the sender host) for mutual TLS with zfsync receivers of ours
        (zfsyncron C(--tls-cert)). Original zfsync receivers have no TLS.
    type: path
  tls_key:
    description: The private key of O(tls_cert), if not in the same file.
    type: path
  tls_ca:
    description: The CA the receivers' certificates must come from. Required with O(tls_cert).
    type: path
  minute:
    description: Minute field of the cron schedule. Defaults to C(*). Cannot be combined with O(schedule).
    type: str
  hour:
    description: Hour field of the cron schedule. Defaults to C(*). Cannot be combined with O(schedule).
    type: str
  day:
    description: Day-of-month field of the cron schedule. Defaults to C(*). Cannot be combined with O(schedule).
    type: str
  month:
    description: Month field of the cron schedule. Defaults to C(*). Cannot be combined with O(schedule).
    type: str
  weekday:
    description: Day-of-week field of the cron schedule. Defaults to C(*). Cannot be combined with O(schedule).
    type: str
  schedule:
    description:
      - The whole schedule in one string, five fields (V(*/5 * * * *)) or a keyword such as V(@hourly).
      - Without it and without the five field options the job runs every minute, as C(zfsyncron) is meant to
        run. Each run snapshots and syncs, and retention keeps the snapshot count bounded.
    type: str
  user:
    description: The user the job runs as. zfs(8) snapshot, destroy and send need root or delegated permissions.
    type: str
    default: root
  cron_file:
    description:
      - Name of the cron file. Letters, digits, C(_) and C(-) only, as Debian's cron ignores other names.
      - Default C(zfsync-<dataset>), with C(/) and any other character not allowed replaced by C(_), for example
        C(zfsync-tank_data).
    type: str
  cron_dir:
    description:
      - Directory of the cron file. Default C(/usr/local/etc/cron.d) on FreeBSD, C(/etc/cron.d) elsewhere.
      - Set it to write the file elsewhere, for example to review it before installing it.
    type: path
  prefix:
    description:
      - Where the engine is installed, C(<prefix>/lib/zfsync/zfsync), and the launchers, C(<prefix>/bin).
    type: path
    default: /usr/local
  python:
    description:
      - Interpreter of the launchers (their C(#!) line). Python 3.9 or later.
      - Default is the interpreter that runs this module.
    type: path
  state:
    description:
      - V(present) installs the engine and writes the cron file.
      - V(absent) removes the cron file. The engine stays, and so do datasets, snapshots and logs.
    type: str
    choices: [present, absent]
    default: present
notes:
  - cron picks up a new or changed cron file by itself within a minute; no service is restarted.
  - The cron file sets C(PATH) to include C(/sbin) and C(/usr/local/sbin), where zfs(8) is.
  - Two runs of one job never overlap. C(zfsyncron) holds a pid file per dataset and a run that finds it
    held exits with status 4.
seealso:
  - module: zfsync.zfsync.receiver
  - module: zfsync.zfsync.sync
  - module: zfsync.zfsync.snapshot
"""

EXAMPLES = r"""
- name: Snapshot tank/data every minute and send it to the backup host
  zfsync.zfsync.sender:
    dataset: tank/data
    receivers:
      - host: backup1.example.com

- name: Every 15 minutes to two receivers, keep more snapshots, from a given address
  zfsync.zfsync.sender:
    dataset: tank/home
    receivers:
      - host: backup1.example.com
        port: 3030
      - host: "2001:db8::10"
    minute: "*/15"
    retention:
      minutely: 0
      hourly: 24
      daily: 14
    threads: 4
    bind_address: 192.0.2.5

- name: Review the cron file before it goes live
  zfsync.zfsync.sender:
    dataset: tank/data
    receivers: [{host: backup1.example.com}]
    cron_dir: /root/zfsync-review
  check_mode: true
  diff: true

- name: Stop replicating tank/data; snapshots and engine stay
  zfsync.zfsync.sender:
    dataset: tank/data
    state: absent
"""

RETURN = r"""
cron_file:
  description: Path of the cron file.
  returned: always
  type: str
  sample: /etc/cron.d/zfsync-tank_data
job:
  description: The cron job written (or, in check mode, that would be).
  returned: when O(state=present)
  type: dict
  contains:
    schedule:
      description: The five time fields, or the @-keyword.
      type: str
      sample: "* * * * *"
    user:
      description: The user it runs as.
      type: str
      sample: root
    command:
      description: The zfsyncron command line.
      type: list
      elements: str
      sample: [/usr/local/bin/zfsyncron, -s, '1', -m, '4', -h, '3', -d, '2', -t, '2', -w, '1',
               -o, /var/log/zfsyncron.log, tank/data, 'backup1.example.com:30']
    line:
      description: The job's line in the cron file.
      type: str
      sample: "* * * * * root /usr/local/bin/zfsyncron -s 1 -m 4 -h 3 -d 2 -t 2 -w 1 -o /var/log/zfsyncron.log
               tank/data backup1.example.com:30"
receivers:
  description: The receivers as C(zfsyncron) is given them, C(host:port) or C([ipv6]:port).
  returned: always
  type: list
  elements: str
  sample: ['backup1.example.com:30', '[2001:db8::10]:30']
version:
  description: Version of the engine installed (and run by the job).
  returned: always
  type: str
  sample: 0.1.0
previous_version:
  description: Version of the engine installed under O(prefix) before, null if none was.
  returned: always
  type: str
  sample: 0.1.0
paths:
  description: Where things are on the host.
  returned: always
  type: dict
  contains:
    engine:
      description: Directory of the installed engine package.
      type: str
      sample: /usr/local/lib/zfsync/zfsync
    launcher:
      description: The C(zfsyncron) launcher the job runs.
      type: str
      sample: /usr/local/bin/zfsyncron
    launchers:
      description: All launchers.
      type: list
      elements: str
      sample: [/usr/local/bin/zfsync_recv, /usr/local/bin/zfsync_send, /usr/local/bin/zfsyncron]
changed_files:
  description: Files created, updated or removed (or that would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [/usr/local/bin/zfsyncron, /etc/cron.d/zfsync-tank_data]
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.zfsync.zfsync.plugins.module_utils import cronjob
from ansible_collections.zfsync.zfsync.plugins.module_utils import zfsync as engine
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import cli  # noqa: F401 pylint: disable=unused-import
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import clients  # noqa: F401 pylint: disable=unused-import
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import connection  # noqa: F401 pylint: disable=unused-import
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import cron  # noqa: F401 pylint: disable=unused-import
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import logs  # noqa: F401 pylint: disable=unused-import
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import protocol  # noqa: F401 pylint: disable=unused-import
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import receiver  # noqa: F401 pylint: disable=unused-import
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import sender  # noqa: F401 pylint: disable=unused-import
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import service
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import snapshots
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import zfs

ZFS_DIRS = ["/sbin", "/usr/sbin", "/usr/local/sbin"]
CRON_FILE_MODE = 0o644  # Debian's cron ignores cron.d files writable by group or others


class SenderSetup:
    """Adapter between the module's options and the cron job + engine install."""

    def __init__(self, module):
        self.module = module
        params = module.params
        self.check_mode = module.check_mode
        self.dataset = params["dataset"].strip("/")
        # The engine's install helpers take the receiver's settings; only the
        # prefix-derived paths (bin, lib, package) matter for the engine.
        self.layout = service.ReceiverSettings(root=self.dataset, prefix=params["prefix"])
        self.python = params["python"] or service.current_python()
        self.cron_dir = params["cron_dir"] or cronjob.default_cron_dir()
        self.diff = []

    def fail(self, msg, **extra):
        self.module.fail_json(msg=msg, **extra)

    @property
    def launcher(self):
        return os.path.join(self.layout.bin_dir, "zfsyncron")

    def cron_path(self):
        name = self.module.params["cron_file"] or cronjob.default_file_name(self.dataset)
        try:
            return os.path.join(self.cron_dir, cronjob.check_file_name(name))
        except cronjob.CronJobError as error:
            self.fail(str(error))

    def destinations(self):
        receivers = self.module.params["receivers"] or []
        try:
            return tuple(cronjob.destination(r["host"], r["port"]) for r in receivers)
        except cronjob.CronJobError as error:
            self.fail(str(error))

    def job(self):
        params = self.module.params
        fields = [params[name] for name in cronjob.FIELD_NAMES]
        try:
            retention = snapshots.Retention(**(params["retention"] or {}))
            return cronjob.CronJob(
                dataset=self.dataset, destinations=self.destinations(), launcher=self.launcher,
                retention=retention, window=params["window"], threads=params["threads"],
                bind_address=params["bind_address"], log_file=params["log_file"] or None,
                frame_size=params["frame_size"], schedule=cronjob.schedule_from(fields, params["schedule"]),
                user=params["user"], tls_cert=params["tls_cert"], tls_key=params["tls_key"],
                tls_ca=params["tls_ca"]).validate()
        except (cronjob.CronJobError, ValueError) as error:
            self.fail("zfsync sender job for %s: %s" % (self.dataset, error))

    def check_dataset(self):
        """zfsyncron snapshots the dataset every run: a missing one would
        fail every minute, so it fails here, once (check mode warns, for a
        dataset an earlier task of the play would create)."""
        zfs_bin = self.module.get_bin_path("zfs", opt_dirs=ZFS_DIRS)
        if zfs_bin is None:
            self.fail("zfs(8) not found on this host (searched PATH and %s): is ZFS installed?" % ", ".join(ZFS_DIRS))
        try:
            exists = zfs.Zfs(zfs_bin).exists(self.dataset)
        except zfs.ZfsError as error:
            self.fail("cannot check dataset %s: %s" % (self.dataset, error))
        if exists:
            return
        message = "dataset %s does not exist on this host; zfsyncron would fail on every run" % self.dataset
        if not self.check_mode:
            self.fail(message)
        self.module.warn(message + " (check mode: assuming an earlier task creates it)")

    def check_python(self):
        if not os.path.isabs(self.python) or not os.access(self.python, os.X_OK):
            self.fail("python interpreter %s for the launchers is not an executable file" % self.python)

    # -- present / absent -------------------------------------------------

    def present(self, cron_path):
        job = self.job()
        self.check_python()
        self.check_dataset()
        modules = engine.ENGINE_MODULES
        try:
            engine_changes = (service.plan_files(service.engine_files(self.layout, modules))
                              + service.plan_removal(service.stale_engine_files(self.layout, modules)))
            launcher_changes = service.plan_files(service.launcher_files(self.layout, self.python))
            cron_changes = service.plan_files([service.WantedFile(cron_path, job.render().encode("utf-8"),
                                                                  CRON_FILE_MODE)])
        except service.ServiceError as error:
            self.fail("zfsync sender for %s: %s" % (self.dataset, error))
        changes = engine_changes + launcher_changes + cron_changes
        if not self.check_mode:
            service.apply_files(changes)
        self._diff_engine(engine_changes)
        self._diff_files(launcher_changes + cron_changes)
        return changes, job

    def absent(self, cron_path):
        changes = service.plan_removal([cron_path])
        if not self.check_mode:
            service.apply_files(changes)
        self._diff_files(changes)
        return changes

    # -- diff -------------------------------------------------------------

    def _diff_engine(self, changes):
        self.diff.extend(service.engine_diff(changes, self.layout.package_dir))

    def _diff_files(self, changes):
        self.diff.extend(service.files_diff(changes))

    def run(self):
        cron_path = self.cron_path()
        previous = service.installed_version(self.layout)
        job = None
        if self.module.params["state"] == "present":
            changes, job = self.present(cron_path)
        else:
            changes = self.absent(cron_path)
        result = dict(
            changed=bool(changes),
            cron_file=cron_path,
            receivers=[str(d) for d in (job.destinations if job else self.destinations())],
            version=engine.__version__,
            previous_version=previous,
            paths=dict(engine=self.layout.package_dir, launcher=self.launcher,
                       launchers=[os.path.join(self.layout.bin_dir, name) for name, entry in service.LAUNCHERS]),
            changed_files=[c.path for c in changes],
        )
        if job is not None:
            result["job"] = dict(schedule=job.schedule, user=job.user, command=job.argv(), line=job.line())
        if self.module._diff:
            result["diff"] = self.diff
        return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dataset=dict(type="str", required=True),
            receivers=dict(type="list", elements="dict", options=dict(
                host=dict(type="str", required=True),
                port=dict(type="int", default=30),
            )),
            retention=dict(type="dict", apply_defaults=True, options=dict(
                secondly=dict(type="int", default=1),
                minutely=dict(type="int", default=4),
                hourly=dict(type="int", default=3),
                daily=dict(type="int", default=2),
            )),
            window=dict(type="int", default=1),
            threads=dict(type="int", default=2),
            bind_address=dict(type="str"),
            log_file=dict(type="path", default="/var/log/zfsyncron.log"),
            frame_size=dict(type="int", default=512, choices=[256, 512]),
            tls_cert=dict(type="path"),
            tls_key=dict(type="path"),
            tls_ca=dict(type="path"),
            minute=dict(type="str"),
            hour=dict(type="str"),
            day=dict(type="str"),
            month=dict(type="str"),
            weekday=dict(type="str"),
            schedule=dict(type="str"),
            user=dict(type="str", default="root"),
            cron_file=dict(type="str"),
            cron_dir=dict(type="path"),
            prefix=dict(type="path", default="/usr/local"),
            python=dict(type="path"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
        ),
        mutually_exclusive=[("schedule", name) for name in cronjob.FIELD_NAMES],
        required_if=[("state", "present", ["receivers"])],
        supports_check_mode=True,
        required_together=[("tls_cert", "tls_ca")],
    )
    setup = SenderSetup(module)
    try:
        result = setup.run()
    except (service.ServiceError, zfs.ZfsError, OSError) as error:
        module.fail_json(msg="zfsync sender for %s: %s" % (module.params["dataset"], error),
                         exception=traceback.format_exc())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
