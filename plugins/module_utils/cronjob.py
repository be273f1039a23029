# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""The zfsyncron job of a sender host, as one cron.d file.

What the ``sender`` module writes: a file in ``/etc/cron.d`` (Linux) or
``/usr/local/etc/cron.d`` (FreeBSD), system crontab format (with the user
column), whose one job runs ``<prefix>/bin/zfsyncron`` with the original's
flags. Pure functions, no I/O: the module compares the rendering with the
host and writes the difference through the engine's ``service`` helpers.

Not part of the engine (``module_utils/zfsync``): a host never needs it,
only the module that configures one.
"""
from __future__ import annotations

import platform
import re
import shlex
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .zfsync import cron, protocol
from .zfsync.snapshots import Retention

MANAGED_MARK = "Managed by zfsync.zfsync.sender"
LINUX_CRON_DIR = "/etc/cron.d"
FREEBSD_CRON_DIR = "/usr/local/etc/cron.d"
# cron runs jobs with PATH=/usr/bin:/bin, where zfs(8) is not (it is in
# /sbin on FreeBSD and Debian); zfsyncron runs ``zfs`` from PATH.
CRON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EVERY_MINUTE = "* * * * *"

# Debian's cron (run-parts naming) ignores cron.d files whose name has any
# other character, a dot included; FreeBSD's cron takes these too.
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_FIELD_RE = re.compile(r"^[A-Za-z0-9*/,-]+$")
_USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_MACROS = ("@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
FIELD_NAMES = ("minute", "hour", "day", "month", "weekday")


class CronJobError(ValueError):
    """An option that cannot go into a cron file; the message names it."""


def default_cron_dir(system: Optional[str] = None) -> str:
    """Where the system cron reads cron.d files: FreeBSD keeps the local
    ones under /usr/local, every Linux cron reads /etc/cron.d."""
    system = system or platform.system()
    return FREEBSD_CRON_DIR if system == "FreeBSD" else LINUX_CRON_DIR


def default_file_name(dataset: str) -> str:
    """``zfsync-<dataset>``, every character cron would refuse in a file
    name (``/``, ``.``, ``:``, space) turned into ``_``."""
    return "zfsync-" + re.sub(r"[^A-Za-z0-9_-]", "_", dataset.strip("/"))


def check_file_name(name: str) -> str:
    if not _FILE_NAME_RE.match(name):
        raise CronJobError("cron_file %r: cron ignores cron.d files whose name has characters other than "
                           "letters, digits, '_' and '-'" % name)
    return name


def schedule_from(fields: Sequence[Optional[str]], schedule: Optional[str]) -> str:
    """The five time fields of the line, or ``schedule`` (five fields or an
    @-keyword); every field left out is ``*``. The default is every minute,
    as zfsyncron is run: its ``-w`` window and snapshot classes thin it out."""
    if schedule is not None:
        text = " ".join(schedule.split())
        if text in _MACROS:
            return text
        parts = text.split(" ")
        if len(parts) != 5:
            raise CronJobError("schedule %r: expected five fields (minute hour day month weekday) or one of %s"
                               % (schedule, ", ".join(_MACROS)))
    else:
        parts = ["*" if value is None else str(value).strip() for value in fields]
    for name, value in zip(FIELD_NAMES, parts):
        if not _FIELD_RE.match(value):
            raise CronJobError("cron %s field %r: only digits, names, '*', '/', ',' and '-' are allowed" % (name, value))
    return " ".join(parts)


def destination(host: str, port: int) -> cron.Destination:
    """A receiver as a zfsyncron HOST argument, checked the way zfsyncron
    parses it, so the job never fails on its own command line."""
    bare = host.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    try:
        parsed = cron.parse_destination(str(cron.Destination(bare, port)), port)
    except ValueError as error:
        raise CronJobError("receiver %r port %s: %s" % (host, port, error))
    if parsed != cron.Destination(bare, port):
        raise CronJobError("receiver %r: not a host name or address zfsyncron can use" % host)
    return parsed


def cron_quote(arg: str) -> str:
    """One argument of a cron command: quoted for sh(1), and ``%`` escaped,
    which cron would otherwise turn into a newline (IPv6 zones, paths)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in arg):
        raise CronJobError("%r: control characters cannot go into a cron line" % arg)
    return shlex.quote(arg).replace("%", "\\%")


@dataclass(frozen=True)
class CronJob:
    """One zfsyncron job: what it runs, when, and as whom."""

    dataset: str
    destinations: Tuple[cron.Destination, ...]
    launcher: str
    retention: Retention = Retention()
    window: int = 1
    threads: int = cron.DEFAULT_THREADS
    bind_address: Optional[str] = None
    log_file: Optional[str] = None
    frame_size: int = protocol.DEFAULT_FRAME_SIZE
    schedule: str = EVERY_MINUTE
    user: str = "root"
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tls_ca: Optional[str] = None

    def validate(self) -> "CronJob":
        try:
            protocol.validate_suffix("/" + self.dataset)
        except protocol.ProtocolError as error:
            raise CronJobError("dataset %r cannot be synced: %s" % (self.dataset, error))
        if not self.destinations:
            raise CronJobError("receivers: at least one receiver is needed")
        if self.threads < 1 or self.window < 1:
            raise CronJobError("threads and window must be at least 1, got threads=%d window=%d"
                               % (self.threads, self.window))
        if not _USER_RE.match(self.user):
            raise CronJobError("user %r is not a user name" % self.user)
        if self.bind_address is not None and not re.match(r"^[A-Za-z0-9_.:%-]+$", self.bind_address):
            raise CronJobError("bind_address %r is not a host address" % self.bind_address)
        if self.log_file is not None and not self.log_file.startswith("/"):
            raise CronJobError("log_file %r must be an absolute path (cron runs jobs in the user's home)"
                               % self.log_file)
        self.command_line()  # control characters
        return self

    def argv(self) -> List[str]:
        """zfsyncron's command line, the original's flags first."""
        keep = self.retention
        args = [self.launcher, "-s", str(keep.secondly), "-m", str(keep.minutely), "-h", str(keep.hourly),
                "-d", str(keep.daily), "-t", str(self.threads), "-w", str(self.window)]
        if self.bind_address:
            args += ["-i", self.bind_address]
        if self.log_file:
            args += ["-o", self.log_file]
        if self.frame_size != protocol.DEFAULT_FRAME_SIZE:
            args += ["--frame-size", str(self.frame_size)]
        for flag, value in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key), ("--tls-ca", self.tls_ca)):
            if value:
                args += [flag, value]
        return args + [self.dataset] + [str(d) for d in self.destinations]

    def command_line(self) -> str:
        return " ".join(cron_quote(arg) for arg in self.argv())

    def line(self) -> str:
        return "%s %s %s" % (self.schedule, self.user, self.command_line())

    def render(self) -> str:
        """The whole cron.d file. The variables apply to the job below them
        (both Vixie cron on Linux and FreeBSD's cron read them there)."""
        keep = self.retention
        return (
            "# {mark}; changes are overwritten.\n"
            "# zfsyncron for {dataset}: a recursive snapshot, retention S={s} M={m} H={h} D={d},\n"
            "# then a sync to {receivers}.\n"
            "SHELL=/bin/sh\n"
            "PATH={path}\n"
            "{line}\n"
        ).format(mark=MANAGED_MARK, dataset=self.dataset, s=keep.secondly, m=keep.minutely, h=keep.hourly,
                 d=keep.daily, receivers=", ".join(str(d) for d in self.destinations), path=CRON_PATH,
                 line=self.line())
