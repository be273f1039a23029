#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: receiver
short_description: Deploy and run the zfsync receiver daemon on a host
version_added: 0.1.0
description:
  - Installs the zfsync engine that this module was itself shipped with under O(prefix), so the
    daemon and the modules of this collection always speak the same protocol version, and writes the
    C(zfsync_recv), C(zfsync_send) and C(zfsyncron) launchers in C(<prefix>/bin).
  - Writes the service definition for the receiver daemon C(zfsync_recv) and keeps it running, restarting
    it only when the engine, a launcher, the service definition or the daemon's command line changed.
    On FreeBSD an rc.d script (rc.subr with daemon(8)) plus its settings in C(/etc/rc.conf.d/zfsync_recv);
    on Linux with systemd the unit C(zfsync-recv.service); with O(service_manager=none) a detached
    process with a pid file, for containers and local sandboxes.
  - Creates the receiver's buffer dataset C(<dataset>.zfsyncbuffer) (C(canmount=off), C(mountpoint=none))
    when it is missing. The root dataset O(dataset) itself is not created here; the first sync receives it.
  - The zfsync wire protocol has no authentication and no encryption. Keep O(listen_address) on a
    trusted network or behind a firewall.
  - With O(state=absent) the daemon is stopped and its service definition, launcher and pid file are
    removed. Datasets are never touched, and neither are the log file and the error flags.
author:
  - zfsync engineers (@zfsync)
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - Predicts every file change, the buffer dataset creation and the start, restart or stop of the daemon.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details:
      - Shows the service definition, the rc.conf.d settings and the launchers in full, the engine as one
        line per file with its checksum, the buffer dataset and the daemon's state.
  idempotent:
    description: When run twice in a row with the same arguments, the second run reports no change.
    support: full
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
    details:
      - FreeBSD (rc.d) and Linux (systemd), or any POSIX host with O(service_manager=none).
options:
  dataset:
    description:
      - The receiver's root dataset (C(ROOT_DATASET) of C(zfsync_recv)), for example C(tank/backup).
      - Senders' trees are received below it; its pool must exist.
    type: str
    required: true
  listen_address:
    description:
      - Address the daemon listens on, IPv4 or IPv6 (C(-i)). The original's default is loopback only.
      - Use C(0.0.0.0) or C(::) to accept senders from other hosts.
    type: str
    default: 127.0.0.1
  port:
    description: TCP port (C(-p)).
    type: int
    default: 30
  threads:
    description: Worker threads, that is datasets received at once (C(-t)).
    type: int
    default: 4
  backlog:
    description: Listen backlog (C(-b)), connections the kernel holds before the daemon accepts them.
    type: int
    default: 50
  max_connections:
    description:
      - Open connections at most, waiting for a request or being served (C(--max-connections)). A connection
        beyond it is closed at once, without an answer, and logged; a sender sees it closed and reports
        the datasets of that connection failed, and its next run retries.
      - Connections between requests wait without holding a worker thread, so silent clients cannot
        starve well-behaved senders of O(threads).
    type: int
    default: 64
  max_per_client:
    description:
      - Open connections at most from one client address (C(--max-per-client)). Keep it above the
        senders' thread count (C(zfsync_send -t), C(zfsyncron -t)), plus one for the probe connection.
    type: int
    default: 16
  first_request_timeout:
    description:
      - Seconds a new connection has for its TLS handshake and its first complete request
        (C(--first-request-timeout)); between requests the daemon's idle bound (300 s) applies.
    type: int
    default: 30
  client_roots:
    description:
      - Per-client sub-roots (C(--client-root), repeatable, first match wins), each C(MATCH=SUB).
        C(MATCH) is a network (V(10.0.0.0/24), V(192.0.2.7)) or C(cn:NAME), the commonName of the client's
        TLS certificate (needs O(tls_cert)). A matching client writes only below C(<dataset>/SUB), and its
        root dataset lands at C(<dataset>/SUB).
      - When set, a client that no entry matches is closed without an answer and logged.
      - Sub-roots must not nest (V(a) and V(a/b)). The daemon creates C(<dataset>) (C(canmount=off)) at start
        when it is missing, so that the sub-roots can be placed under it.
    type: list
    elements: str
    default: []
  log_file:
    description:
      - The daemon's main log (C(-o)). With O(verbose), one log per worker thread beside it.
    type: path
    default: /var/log/zfshad.log
  flag_dir:
    description: Directory of the per-dataset error flags (C(-d)).
    type: path
    default: /var/run/zfshad
  verbose:
    description: One log per worker thread as well (C(-v)).
    type: bool
    default: false
  frame_size:
    description:
      - Frame size of the wire protocol. V(auto) detects it per connection (256 for senders older than
        2021-02-18, 512 for newer ones and ours).
    type: str
    choices: [auto, '256', '512']
    default: auto
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
  allow:
    description:
      - Networks (CIDR) whose clients may connect (C(--allow), repeatable); others are closed without an answer
        and logged as refused. Empty means everyone who can reach O(listen_address).
      - The module refuses to open a non-loopback listener without O(allow) or TLS (O(tls_cert)).
    type: list
    elements: str
    default: []
  tls_cert:
    description:
      - The daemon's certificate (PEM, on the receiver host) for mutual TLS with zfsync senders of ours (C(--tls-cert)).
      - Senders must then use TLS with a certificate from O(tls_ca); original zfsync senders cannot connect.
    type: path
  tls_key:
    description: The private key of O(tls_cert), if not in the same file (C(--tls-key)).
    type: path
  tls_ca:
    description: The CA that senders' certificates must come from (C(--tls-ca)). Required with O(tls_cert).
    type: path
  pid_file:
    description:
      - The daemon's pid file. With O(service_manager=none) it is how the daemon is found again; under rc.d
        daemon(8) writes it; systemd tracks the process itself and does not use it.
    type: path
    default: /var/run/zfsync_recv.pid
  service_manager:
    description:
      - How the daemon is run. V(auto) picks V(systemd) when systemd is running, V(rc) on FreeBSD, else V(none).
      - V(none) starts the daemon detached with O(pid_file); nothing restarts it after a reboot.
    type: str
    choices: [auto, systemd, rc, none]
    default: auto
  enabled:
    description:
      - Start the daemon at boot (systemd C(enable), C(zfsync_recv_enable) on FreeBSD).
      - Ignored with O(service_manager=none).
    type: bool
    default: true
  running:
    description: Whether the daemon should be running now. Only with O(state=present).
    type: bool
    default: true
  remove_engine:
    description:
      - With O(state=absent), also remove the engine under O(prefix) and the C(zfsync_send) and C(zfsyncron)
        launchers. They are shared with M(zfsync.zfsync.sender), so leave this off on hosts that also send.
    type: bool
    default: false
  state:
    description:
      - V(present) installs, configures and (see O(running)) runs the daemon.
      - V(absent) stops it and removes its files; datasets, logs and error flags are kept.
    type: str
    choices: [present, absent]
    default: present
notes:
  - The daemon is C(zfsync_recv) from this collection's engine; its command line keeps the original
    zfsync flags, so the rendered service definitions also document how to run it by hand.
seealso:
  - module: zfsync.zfsync.sync
  - module: zfsync.zfsync.receiver_info
"""

EXAMPLES = r"""
- name: Run a receiver for tank/backup, reachable from the branch network
  zfsync.zfsync.receiver:
    dataset: tank/backup
    listen_address: 0.0.0.0
    allow: [10.1.0.0/16]
    threads: 8

- name: Mutual TLS, each sender confined to its own tree below tank/backup
  zfsync.zfsync.receiver:
    dataset: tank/backup
    listen_address: 0.0.0.0
    tls_cert: /etc/zfsync/receiver.pem
    tls_key: /etc/zfsync/receiver.key
    tls_ca: /etc/zfsync/ca.pem
    client_roots:
      - cn:web1.example.org=web1
      - cn:db1.example.org=db1
      - 10.2.0.0/24=branch
    max_connections: 128

- name: Receiver in a container or sandbox, without a service manager
  zfsync.zfsync.receiver:
    dataset: sandbox/recv
    port: 3030
    service_manager: none
    prefix: /opt/zfsync
    pid_file: /run/zfsync_recv.pid
    log_file: /var/log/zfsync_recv.log

- name: Remove the receiver daemon; datasets stay
  zfsync.zfsync.receiver:
    dataset: tank/backup
    state: absent
"""

RETURN = r"""
version:
  description: Version of the engine installed (and run by the daemon).
  returned: always
  type: str
  sample: 0.1.0
previous_version:
  description: Version of the engine that was installed under O(prefix) before, null if none was.
  returned: always
  type: str
  sample: 0.1.0
service_manager:
  description: The service manager used, after V(auto) was resolved.
  returned: always
  type: str
  sample: systemd
command:
  description: The daemon's command line, as the service definition runs it.
  returned: always
  type: list
  elements: str
  sample: [/usr/local/bin/zfsync_recv, -p, '30', -b, '50', -t, '4', -o, /var/log/zfshad.log, -d, /var/run/zfshad,
           -i, 127.0.0.1, tank/backup]
buffer_dataset:
  description: The receiver's buffer dataset. Created when missing with O(state=present), never removed.
  returned: always
  type: str
  sample: tank/backup.zfsyncbuffer
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
      description: The daemon's launcher.
      type: str
      sample: /usr/local/bin/zfsync_recv
    launchers:
      description: All launchers written.
      type: list
      elements: str
      sample: [/usr/local/bin/zfsync_recv, /usr/local/bin/zfsync_send, /usr/local/bin/zfsyncron]
    service_files:
      description: Service definition files (none with O(service_manager=none)).
      type: list
      elements: str
      sample: [/etc/systemd/system/zfsync-recv.service]
    pid_file:
      description: The daemon's pid file.
      type: str
      sample: /var/run/zfsync_recv.pid
    log_file:
      description: The daemon's main log.
      type: str
      sample: /var/log/zfshad.log
service:
  description: The daemon after the run (predicted in check mode).
  returned: always
  type: dict
  contains:
    running:
      description: Whether the daemon runs.
      type: bool
      sample: true
    pid:
      description: Its process id, when known (null in check mode after a predicted start).
      type: int
      sample: 4242
    enabled:
      description: Whether it starts at boot; null with O(service_manager=none).
      type: bool
      sample: true
    actions:
      description: What was (or in check mode would be) done to the service.
      type: list
      elements: str
      sample: [daemon-reload, restart]
changed_files:
  description: Files created, updated or removed (or that would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [/usr/local/lib/zfsync/zfsync/protocol.py, /etc/systemd/system/zfsync-recv.service]
"""

import ipaddress
import os
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.zfsync.zfsync.plugins.module_utils import zfsync as engine
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import cli  # noqa: F401 pylint: disable=unused-import
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import clients
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import connection  # noqa: F401 pylint: disable=unused-import
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import logs  # noqa: F401 pylint: disable=unused-import
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import protocol
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import receiver as engine_receiver
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import sender  # noqa: F401 pylint: disable=unused-import
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import service
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import zfs

from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import snapshots  # noqa: F401 pylint: disable=unused-import
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import cron  # noqa: F401 pylint: disable=unused-import


def _text(content):
    return "" if content is None else content.decode("utf-8", "replace")


class ReceiverDeployment:
    """Adapter between the module's options and the engine's service layer."""

    def __init__(self, module):
        self.module = module
        params = module.params
        self.check_mode = module.check_mode
        self.manager = params["service_manager"]
        if self.manager == "auto":
            self.manager = service.detect_service_manager()
        self.settings = service.ReceiverSettings(
            root=params["dataset"].strip("/"), prefix=params["prefix"], port=params["port"],
            listen_address=params["listen_address"], backlog=params["backlog"], threads=params["threads"],
            log_file=params["log_file"], flag_dir=params["flag_dir"], verbose=params["verbose"],
            frame_size=params["frame_size"], pid_file=params["pid_file"], allow=tuple(params["allow"]),
            tls_cert=params["tls_cert"], tls_key=params["tls_key"], tls_ca=params["tls_ca"],
            max_connections=params["max_connections"], max_per_client=params["max_per_client"],
            first_request_timeout=params["first_request_timeout"], client_roots=tuple(params["client_roots"]))
        self.python = params["python"] or service.current_python()
        self.daemon = service.service_for(self.manager, self.settings)
        self.zfs = zfs.Zfs()
        self.buffer = self.settings.root + engine_receiver.BUFFER_SUFFIX
        self.diff = []

    # -- checks -----------------------------------------------------------

    def validate(self):
        params = self.module.params
        try:
            protocol.validate_suffix("/" + self.settings.root)
        except protocol.ProtocolError as error:
            self.module.fail_json(msg="dataset %r is not a valid receiver root: %s" % (params["dataset"], error))
        if not 0 < params["port"] < 65536:
            self.module.fail_json(msg="port must be 1..65535, got %d" % params["port"])
        for cidr in params["allow"]:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as error:
                self.module.fail_json(msg="allow: %s is not a network: %s" % (cidr, error))
        if params["state"] == "present" and not params["allow"] and not params["tls_cert"] \
                and not _is_loopback(params["listen_address"]):
            self.module.fail_json(msg="listen_address %s is not loopback: the zfsync protocol has no authentication, "
                                  "so set allow (client networks) or tls_cert/tls_ca" % params["listen_address"])
        try:
            roots = clients.ClientRoots(params["client_roots"])
        except ValueError as error:
            self.module.fail_json(msg="client_roots: %s" % error)
        if roots.need_certificates and not params["tls_cert"]:
            self.module.fail_json(msg="client_roots: a cn:NAME entry needs TLS (tls_cert, tls_ca): the name comes "
                                  "from the sender's certificate")
        for name in ("threads", "backlog", "max_connections", "max_per_client", "first_request_timeout"):
            if params[name] < 1:
                self.module.fail_json(msg="%s must be at least 1, got %d" % (name, params[name]))
        if not params["listen_address"] or any(c.isspace() for c in params["listen_address"]):
            self.module.fail_json(msg="listen_address must be a host address, got %r" % params["listen_address"])
        if not os.path.isabs(self.python) or not os.access(self.python, os.X_OK):
            self.module.fail_json(msg="python interpreter %s for the launchers is not an executable file" % self.python)

    # -- present ----------------------------------------------------------

    def wanted_files(self):
        # Every file of the engine, as shipped with this module: the imports
        # above make AnsiballZ carry them all.
        modules = engine.ENGINE_MODULES
        engine_files = service.engine_files(self.settings, modules)
        launchers = service.launcher_files(self.settings, self.python)
        definitions = service.service_files(self.manager, self.settings, self.module.params["enabled"])
        stale = service.stale_engine_files(self.settings, modules)
        return engine_files, launchers + definitions, stale

    def ensure_buffer(self):
        """Create ROOT.zfsyncbuffer (never mounted) when missing."""
        if self.zfs.exists(self.buffer):
            return False
        pool = self.settings.root.split("/")[0]
        if not self.zfs.exists(pool):
            self.module.fail_json(msg="cannot set up receiver for %s: pool %s does not exist" % (self.settings.root, pool))
        if not self.check_mode:
            self.zfs.create(self.buffer, {"canmount": "off", "mountpoint": "none"}, parents=True)
        self.diff.append({"before_header": "zfs dataset %s" % self.buffer, "before": "",
                          "after_header": "zfs dataset %s" % self.buffer,
                          "after": "%s canmount=off mountpoint=none\n" % self.buffer})
        return True

    def present(self):
        params = self.module.params
        engine_files, other_files, stale = self.wanted_files()
        engine_changes = service.plan_files(engine_files) + service.plan_removal(stale)
        other_changes = service.plan_files(other_files)
        buffer_created = self.ensure_buffer()
        if not self.check_mode:
            service.apply_files(engine_changes + other_changes)
        self._diff_engine(engine_changes)
        self._diff_files(other_changes)
        changes = engine_changes + other_changes
        restart = service.restart_needed(changes)
        if self.manager == "systemd":
            unit_changed = any(c.path == service.SYSTEMD_UNIT_PATH for c in changes)
            plan = self.daemon.converge(params["running"], params["enabled"], restart, self.check_mode,
                                        unit_changed=unit_changed)
        else:
            plan = self.daemon.converge(params["running"], params["enabled"], restart, self.check_mode)
        return changes, buffer_created, plan

    # -- absent -----------------------------------------------------------

    def absent(self):
        paths = service.service_file_paths(self.manager) + [self.settings.launcher]
        if self.module.params["remove_engine"]:
            paths += [os.path.join(self.settings.bin_dir, launcher[0]) for launcher in service.LAUNCHERS[1:]]
            paths += sorted(os.path.join(self.settings.package_dir, n)
                            for n in _listdir(self.settings.package_dir) if n.endswith(".py"))
        if self.manager != "systemd":
            paths.append(self.settings.pid_file)
        # Planned before the stop, which removes the pid file itself, so that
        # check mode and the real run report the same files.
        changes = service.plan_removal(paths)
        plan = self.daemon.remove(self.check_mode)
        if not self.check_mode:
            service.apply_files(changes)
            if self.module.params["remove_engine"]:
                _remove_empty_dirs(self.settings.package_dir, self.settings.lib_dir)
            if self.manager == "systemd" and changes:
                self.daemon.after_removal(self.check_mode)
        engine_dir = self.settings.package_dir + os.sep
        self._diff_engine([c for c in changes if c.path.startswith(engine_dir)])
        self._diff_files([c for c in changes if not c.path.startswith(engine_dir)])
        return changes, False, plan

    # -- diff -------------------------------------------------------------

    def _diff_engine(self, changes):
        self.diff.extend(service.engine_diff(changes, self.settings.package_dir))

    def _diff_files(self, changes):
        self.diff.extend(service.files_diff(changes))

    def _diff_service(self, before, plan):
        if not plan.actions:
            return
        header = "service %s (%s)" % (service.SERVICE_NAME, self.manager)
        self.diff.append({"before_header": header, "after_header": "%s: %s" % (header, ", ".join(plan.actions)),
                          "before": _state_text(before), "after": _state_text(plan.state)})

    # -- run --------------------------------------------------------------

    def run(self):
        self.validate()
        previous = service.installed_version(self.settings)
        before = self.daemon.state()
        if self.module.params["state"] == "present":
            changes, buffer_created, plan = self.present()
        else:
            changes, buffer_created, plan = self.absent()
        self._diff_service(before, plan)
        result = dict(
            changed=bool(changes or buffer_created or plan.actions),
            version=engine.__version__,
            previous_version=previous,
            service_manager=self.manager,
            command=[self.settings.launcher] + self.settings.daemon_args(pid_file=self.manager == "none"),
            buffer_dataset=self.buffer,
            paths=dict(engine=self.settings.package_dir, launcher=self.settings.launcher,
                       launchers=[os.path.join(self.settings.bin_dir, launcher[0]) for launcher in service.LAUNCHERS],
                       service_files=service.service_file_paths(self.manager),
                       pid_file=self.settings.pid_file, log_file=self.settings.log_file),
            service=dict(running=plan.state.running, pid=plan.state.pid, enabled=plan.state.enabled,
                         actions=plan.actions),
            changed_files=[c.path for c in changes],
        )
        if self.module._diff:
            result["diff"] = self.diff
        return result


def _state_text(state):
    enabled = "n/a" if state.enabled is None else ("yes" if state.enabled else "no")
    text = "running: %s\npid: %s\nenabled: %s\n" % ("yes" if state.running else "no", state.pid or "-", enabled)
    if state.command:
        text += "command: %s\n" % " ".join(state.command)
    return text


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def _remove_empty_dirs(*paths):
    for path in paths:
        pycache = os.path.join(path, "__pycache__")
        for name in _listdir(pycache):
            if name.endswith(".pyc"):
                os.unlink(os.path.join(pycache, name))
        for directory in (pycache, path):
            try:
                os.rmdir(directory)
            except OSError:
                pass


def _is_loopback(address):
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dataset=dict(type="str", required=True),
            listen_address=dict(type="str", default="127.0.0.1"),
            port=dict(type="int", default=30),
            threads=dict(type="int", default=4),
            backlog=dict(type="int", default=50),
            max_connections=dict(type="int", default=64),
            max_per_client=dict(type="int", default=16),
            first_request_timeout=dict(type="int", default=30),
            client_roots=dict(type="list", elements="str", default=[]),
            log_file=dict(type="path", default="/var/log/zfshad.log"),
            flag_dir=dict(type="path", default="/var/run/zfshad"),
            verbose=dict(type="bool", default=False),
            frame_size=dict(type="str", default="auto", choices=["auto", "256", "512"]),
            prefix=dict(type="path", default="/usr/local"),
            python=dict(type="path"),
            pid_file=dict(type="path", default=service.DEFAULT_PID_FILE),
            allow=dict(type="list", elements="str", default=[]),
            tls_cert=dict(type="path"),
            tls_key=dict(type="path"),
            tls_ca=dict(type="path"),
            service_manager=dict(type="str", default="auto", choices=["auto", "systemd", "rc", "none"]),
            enabled=dict(type="bool", default=True),
            running=dict(type="bool", default=True),
            remove_engine=dict(type="bool", default=False),
            state=dict(type="str", default="present", choices=["present", "absent"]),
        ),
        supports_check_mode=True,
        required_together=[("tls_cert", "tls_ca")],
    )
    deployment = ReceiverDeployment(module)
    try:
        result = deployment.run()
    except (service.ServiceError, zfs.ZfsError) as error:
        module.fail_json(msg="zfsync receiver on %s: %s" % (module.params["dataset"], error),
                         exception=traceback.format_exc())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
