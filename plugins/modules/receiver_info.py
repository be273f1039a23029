#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: receiver_info
short_description: Report the state of a zfsync receiver, for monitoring
version_added: 0.1.0
description:
  - Read-only facts about a zfsync receiver host. Changes nothing.
  - Whether the receiver daemon runs (its pid file names a live C(zfsync_recv) process, and/or something
    listens on its port), the datasets under the receiver's root with their newest snapshot and its age,
    the error flags the daemon keeps for monitoring, and what waits in the buffer dataset
    C(<dataset>.zfsyncbuffer).
  - Works for receivers of this collection and for the original C zfsync receiver, whose error flags are
    named with the raw suffix (C(/a/b.sync) in a subdirectory) where ours are flat and URL-quoted
    (C(%2Fa%2Fb.sync)).
  - Every list is a list of dictionaries, so that C(community.general.json_query) and the C(selectattr)
    filters can select from it.
author:
  - zfsync engineers (@zfsync)
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - The module changes nothing; it returns the same facts in check mode.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
    details:
      - Nothing changes, so there is nothing to show.
  idempotent:
    description: When run twice in a row with the same arguments, the second run reports no change.
    support: full
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
    details:
      - Linux (the listening check reads C(/proc/net/tcp) and C(/proc/net/tcp6)) and FreeBSD (it runs C(sockstat)).
options:
  dataset:
    description: The receiver's root dataset (C(ROOT_DATASET) of C(zfsync_recv)), for example C(tank/backup).
    type: str
    required: true
  flag_dir:
    description: The daemon's error flag directory (its C(-d)).
    type: path
    default: /var/run/zfshad
  pid_file:
    description:
      - The daemon's pid file. When given, the daemon counts as running only if the file names a live process
        whose command line is C(zfsync_recv).
      - M(zfsync.zfsync.receiver) writes C(/var/run/zfsync_recv.pid) with O(zfsync.zfsync.receiver#module:service_manager=none)
        or V(rc); under systemd there is no pid file, give O(port) instead.
    type: path
  port:
    description:
      - The daemon's TCP port (its C(-p)). When given, the daemon counts as running only if a socket listens
        on it at O(listen_address) (or on every address). The check reads the kernel's socket tables and
        connects to nothing.
    type: int
  listen_address:
    description: The daemon's listen address (its C(-i)); used with O(port).
    type: str
    default: 127.0.0.1
  probe:
    description:
      - Also connect to O(listen_address) port O(port) and ask the daemon which zfsync it is, with the protocol's
        C(xhello) message. A receiver of this collection answers with its version; an original zfsync answers
        C(Unknown cmd xhello) and logs it (its error flag of the root may be set until the next sync).
      - Needs O(port).
    type: bool
    default: false
notes:
  - Without O(pid_file) and O(port), RV(daemon.running) is null (unknown).
  - Ages are computed with the receiver host's clock, from the snapshots' creation times (C(zfs get -p creation)),
    which on a received snapshot is when it was taken on the sender.
seealso:
  - module: zfsync.zfsync.receiver
  - module: zfsync.zfsync.sync
"""

EXAMPLES = r"""
- name: Facts of the receiver under tank/backup
  zfsync.zfsync.receiver_info:
    dataset: tank/backup
    pid_file: /var/run/zfsync_recv.pid
    port: 30
  register: zfsync_receiver

- name: The daemon must run
  ansible.builtin.assert:
    that: zfsync_receiver.daemon.running
    fail_msg: "zfsync_recv is not running on {{ inventory_hostname }}"

- name: Replicas older than a day
  ansible.builtin.debug:
    msg: "{{ zfsync_receiver.datasets | community.general.json_query('[?age_seconds > `86400`].[name, newest_snapshot]') }}"

- name: No error flags and nothing stuck in the buffer
  ansible.builtin.assert:
    that:
      - zfsync_receiver.error_flags | length == 0
      - zfsync_receiver.buffer | length == 0
    fail_msg: >-
      flags: {{ zfsync_receiver.error_flags | map(attribute='file') | list }},
      buffered: {{ zfsync_receiver.buffer | map(attribute='target') | list }}
"""

RETURN = r"""
daemon:
  description: Whether the receiver daemon runs.
  returned: always
  type: dict
  contains:
    running:
      description:
        - True when every check that was asked for passed (O(pid_file), O(port)); null when neither was given.
      type: bool
      sample: true
    pid:
      description: The pid of the live C(zfsync_recv) process named by O(pid_file); null otherwise.
      type: int
      sample: 4242
    command:
      description: That process's command line.
      type: list
      elements: str
      sample: [/usr/bin/python3, /usr/local/bin/zfsync_recv, -p, '30', tank/backup]
    listening:
      description: Whether a socket listens on O(port); null when O(port) was not given or the socket tables cannot be read.
      type: bool
      sample: true
    listen_addresses:
      description: The addresses that listen on O(port) (C(0.0.0.0) or C(::) for every address).
      type: list
      elements: str
      sample: [127.0.0.1]
    type:
      description: With O(probe), V(zfsync) or V(original); null otherwise or when the probe failed.
      type: str
      sample: zfsync
    version:
      description: With O(probe), the version a receiver of this collection reports.
      type: str
      sample: 0.1.0
    probe_error:
      description: Why the probe failed; null when it did not or was not asked for.
      type: str
      sample: "cannot connect to 127.0.0.1 port 30: [Errno 111] Connection refused"
root:
  description: The receiver's root dataset.
  returned: always
  type: dict
  contains:
    name:
      description: O(dataset).
      type: str
      sample: tank/backup
    exists:
      description: Whether it exists (it is created by the first sync).
      type: bool
      sample: true
datasets:
  description: The root and every filesystem and volume below it, parent before children.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The dataset.
      type: str
      sample: tank/backup/home
    suffix:
      description: Its name relative to the root (empty for the root), as the sender's dataset is named relative to its root.
      type: str
      sample: /home
    snapshots:
      description: Number of its snapshots.
      type: int
      sample: 6
    newest_snapshot:
      description: Its newest snapshot (after C(@)), null without snapshots.
      type: str
      sample: 240102-120000_D
    created:
      description: Creation time of the newest snapshot, epoch seconds.
      type: int
      sample: 1704196800
    age_seconds:
      description: Seconds from that creation time to now (RV(now)).
      type: int
      sample: 3600
    error_flags:
      description: Commands whose error flag is set for this dataset (V(sync), V(prune), ...).
      type: list
      elements: str
      sample: []
error_flags:
  description: Every error flag in O(flag_dir). A flag exists while the last such command for its dataset failed.
  returned: always
  type: list
  elements: dict
  contains:
    file:
      description: The flag's file name relative to O(flag_dir).
      type: str
      sample: "%2Fhome.sync"
    path:
      description: Its full path.
      type: str
      sample: "/var/run/zfshad/%2Fhome.sync"
    suffix:
      description: The dataset suffix it is about, URL-unquoted (empty for the root).
      type: str
      sample: /home
    dataset:
      description: The receiver's dataset it is about.
      type: str
      sample: tank/backup/home
    command:
      description: V(sync) (the last sync failed), V(prune) (a snapshot could not be pruned), V(cleanbuffer)
        (buffered copies could not be placed).
      type: str
      sample: sync
    since:
      description: When the flag was last set, epoch seconds.
      type: int
      sample: 1704196800
buffer:
  description:
    - The entries of the buffer dataset C(<dataset>.zfsyncbuffer), copies received aside that wait for their
      parent (placed by the next C(cleanbuffer)) or, while a sync runs, copies being received.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The buffered dataset.
      type: str
      sample: tank/backup.zfsyncbuffer/2F686F6D65
    suffix:
      description: The suffix its name encodes (hex of the suffix; C(ROOT) for the root), null when the name is no such encoding.
      type: str
      sample: /home
    target:
      description: Where it goes when placed; null when the name encodes no suffix.
      type: str
      sample: tank/backup/home
    old:
      description: True for an old copy set aside while a FULL replacement swapped the new one in.
      type: bool
      sample: false
    snapshots:
      description: Number of its snapshots.
      type: int
      sample: 2
    newest_snapshot:
      description: Its newest snapshot, null without snapshots.
      type: str
      sample: 240102-120000_D
buffer_dataset:
  description: The buffer dataset's name, and whether it exists.
  returned: always
  type: dict
  contains:
    name:
      description: C(<dataset>.zfsyncbuffer).
      type: str
      sample: tank/backup.zfsyncbuffer
    exists:
      description: Whether it exists (the daemon creates it at start).
      type: bool
      sample: true
now:
  description: The receiver host's clock when the facts were read, epoch seconds.
  returned: always
  type: int
  sample: 1704200400
version:
  description: Version of the zfsync engine this module ran.
  returned: always
  type: str
  sample: 0.1.0
"""

import os
import re
import socket
import time
import traceback
from urllib.parse import unquote

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.zfsync.zfsync.plugins.module_utils import zfsync as engine
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import connection  # noqa: F401 pylint: disable=unused-import
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import protocol
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import receiver
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import sender
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import service
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import zfs

DAEMON_NAME = "zfsync_recv"
# Our ErrorFlags.set writes a temporary link beside the flag and renames it.
_TEMPORARY_FLAG_RE = re.compile(r"\.tmp\d+\.\d+$")
MAX_FLAGS = 10000
CREATION_BATCH = 100
_LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp


# -- the daemon ---------------------------------------------------------------

def daemon_process(pid_file):
    """(pid, argv) of the live zfsync_recv the pid file names, else (None, None)."""
    pid = service.read_pid_file(pid_file)
    if pid is None:
        return None, None
    argv = service.process_argv(pid)
    if argv is None or not any(os.path.basename(arg).startswith(DAEMON_NAME) for arg in argv):
        return None, None
    return pid, argv


def _proc_address(hex_address):
    """``0100007F`` -> 127.0.0.1; IPv6 as four little-endian 32-bit words."""
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def listening_addresses_linux(port):
    addresses = []
    found_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        found_table = True
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != _LISTEN_STATE:
                continue
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port:
                addresses.append(_proc_address(address))
    return addresses if found_table else None


def listening_addresses_sockstat(module, port):
    """FreeBSD: ``sockstat -46l -P tcp -p PORT``; local address in column 6."""
    tool = module.get_bin_path("sockstat")
    if tool is None:
        return None
    argv = [tool, "-4", "-6", "-l", "-P", "tcp", "-p", str(port)]
    rc, out, dummy = module.run_command(argv, environ_update=dict(LC_ALL="C"))
    if rc != 0:
        return None
    addresses = []
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 6 and fields[5].rsplit(":", 1)[-1] == str(port):
            host = fields[5].rsplit(":", 1)[0]
            addresses.append({"*": "0.0.0.0"}.get(host, host))
    return addresses


def wanted_addresses(listen_address, port):
    try:
        infos = socket.getaddrinfo(listen_address, port, 0, socket.SOCK_STREAM)
    except socket.gaierror:
        return set([listen_address])
    return set(info[4][0] for info in infos)


def daemon_facts(module):
    params = module.params
    facts = dict(running=None, pid=None, command=None, listening=None, listen_addresses=None,
                 type=None, version=None, probe_error=None)
    checks = []
    if params["pid_file"]:
        facts["pid"], facts["command"] = daemon_process(params["pid_file"])
        checks.append(facts["pid"] is not None)
    port = params["port"]
    if port is not None:
        addresses = listening_addresses_linux(port)
        if addresses is None:
            addresses = listening_addresses_sockstat(module, port)
        if addresses is not None:
            wanted = wanted_addresses(params["listen_address"], port) | set(["0.0.0.0", "::"])
            facts["listen_addresses"] = sorted(set(addresses))
            facts["listening"] = bool(wanted & set(addresses))
            checks.append(facts["listening"])
        if params["probe"]:
            facts["type"], facts["version"], facts["probe_error"] = probe(params["listen_address"], port)
    if checks:
        facts["running"] = all(checks)
    return facts


def probe(address, port):
    options = sender.SyncOptions(root="", receiver=address, port=port, timeout=10.0, connect_timeout=10.0)
    try:
        peer, version = sender.probe_peer(options)
    except (sender.SenderError, OSError) as error:
        return None, None, str(error)
    return peer, version, None


# -- error flags ----------------------------------------------------------------

def flag_of(flag_dir, relative, root):
    """A flag file's meaning. Ours are flat and URL-quoted (``%2Fa%2Fb.sync``);
    the original's carry the raw suffix (``a/b.sync`` under the directory)."""
    base, dot, command = relative.rpartition(".")
    if not dot:
        return None
    if os.sep in base:
        suffix = "/" + base
    else:
        suffix = unquote(base)
        if suffix and not suffix.startswith("/"):
            suffix = "/" + suffix  # the original's flag of a first-level child
    path = os.path.join(flag_dir, relative)
    try:
        since = int(os.lstat(path).st_mtime)
    except OSError:
        return None  # cleared while we looked
    return dict(file=relative, path=path, suffix=suffix, dataset=root + suffix, command=command, since=since)


def error_flags(flag_dir, root):
    flags = []
    if not os.path.isdir(flag_dir):
        return flags
    for directory, subdirs, files in os.walk(flag_dir):
        subdirs.sort()
        for name in sorted(files):
            if _TEMPORARY_FLAG_RE.search(name):
                continue
            relative = os.path.relpath(os.path.join(directory, name), flag_dir)
            flag = flag_of(flag_dir, relative, root)
            if flag is not None:
                flags.append(flag)
            if len(flags) >= MAX_FLAGS:
                return flags
    return flags


# -- datasets -------------------------------------------------------------------

def creation_times(tool, snapshot_names):
    """{dataset@snap: epoch} in a few ``zfs get -p creation`` calls."""
    created = {}
    for start in range(0, len(snapshot_names), CREATION_BATCH):
        batch = snapshot_names[start:start + CREATION_BATCH]
        out = tool.run(["get", "-H", "-p", "-o", "name,value", "creation"] + batch)
        for line in out.splitlines():
            name, dummy, value = line.partition("\t")
            if value.strip().isdigit():
                created[name] = int(value)
    return created


def tree_facts(tool, top):
    """(exists, [(dataset, [snapshots])]) of ``top`` and its descendants."""
    try:
        names = tool.filesystems(top)
    except zfs.ZfsError as error:
        if error.missing:
            return False, []
        raise
    tree = tool.snapshots_tree(top)
    return True, [(name, tree.get(name, [])) for name in names]


def dataset_facts(tool, root, now, flags):
    exists, tree = tree_facts(tool, root)
    created = creation_times(tool, ["%s@%s" % (name, snaps[-1]) for name, snaps in tree if snaps])
    flagged = {}
    for flag in flags:
        flagged.setdefault(flag["suffix"], []).append(flag["command"])
    datasets = []
    for name, snaps in tree:
        suffix = protocol.suffix_of(name, root)
        newest = snaps[-1] if snaps else None
        when = created.get("%s@%s" % (name, newest)) if newest else None
        datasets.append(dict(name=name, suffix=suffix, snapshots=len(snaps), newest_snapshot=newest, created=when,
                             age_seconds=None if when is None else now - when,
                             error_flags=sorted(flagged.get(suffix, []))))
    return exists, datasets


def suffix_of_entry(entry):
    """The target suffix a buffer entry's name encodes (receiver.py's
    naming: HEX(suffix), ``ROOT`` for the root, ``.old`` for a set-aside copy)."""
    try:
        return receiver.parse_buffer_entry(entry)
    except protocol.ProtocolError:
        return None, entry.endswith(receiver.OLD_MARK)


def buffer_facts(tool, root):
    name = root + receiver.BUFFER_SUFFIX
    exists, tree = tree_facts(tool, name)
    entries = []
    for dataset, snaps in tree:
        if dataset == name or "/" in dataset[len(name) + 1:]:
            continue  # the buffer itself; children of an entry travel with it
        suffix, old = suffix_of_entry(dataset[len(name) + 1:])
        entries.append(dict(name=dataset, suffix=suffix, target=None if suffix is None else root + suffix,
                            old=old, snapshots=len(snaps), newest_snapshot=snaps[-1] if snaps else None))
    return dict(name=name, exists=exists), entries


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dataset=dict(type="str", required=True),
            flag_dir=dict(type="path", default="/var/run/zfshad"),
            pid_file=dict(type="path"),
            port=dict(type="int"),
            listen_address=dict(type="str", default="127.0.0.1"),
            probe=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    root = module.params["dataset"].rstrip("/")
    try:
        protocol.validate_suffix("/" + root)
    except protocol.ProtocolError as error:
        module.fail_json(msg="dataset %r is not a valid receiver root: %s" % (module.params["dataset"], error))
    port = module.params["port"]
    if port is not None and not 0 < port < 65536:
        module.fail_json(msg="port must be 1..65535, got %d" % port)
    if module.params["probe"] and port is None:
        module.fail_json(msg="probe needs port")
    tool = zfs.Zfs()
    now = int(time.time())
    try:
        flags = error_flags(module.params["flag_dir"], root)
        exists, datasets = dataset_facts(tool, root, now, flags)
        buffer_dataset, buffer = buffer_facts(tool, root)
    except zfs.ZfsError as error:
        module.fail_json(msg="cannot read the receiver's datasets under %s: %s" % (root, error),
                         exception=traceback.format_exc())
    module.exit_json(
        changed=False,
        daemon=daemon_facts(module),
        root=dict(name=root, exists=exists),
        datasets=datasets,
        error_flags=flags,
        buffer=buffer,
        buffer_dataset=buffer_dataset,
        now=now,
        version=engine.__version__,
    )


if __name__ == "__main__":
    main()
