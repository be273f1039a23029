# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""zfsyncron: the snapshot + send job a cron entry runs on a sender host.

One run: check the ``-w`` window, take the pid lock, ``zfs snapshot -r`` the
root with a zfsyncron name (see ``snapshots.py``), destroy (``-r``) the
snapshots of that class beyond its retention, then one sync per HOST, in the
order given.

Exit status (the original's, without its bug: its zfsync_send always exited
0, so it never reported a failed send):

- 0 everything succeeded
- 1 usage: a bad option or argument, or a log or pid file that cannot be
  created
- 2 the window was not met (nothing done), the snapshot failed (nothing
  sent), or retention could not destroy an old snapshot (sends still ran)
- 3 a send to at least one HOST failed (the snapshot was taken)
- 4 another run holds the pid file

Differences from the original, on purpose:

- The pid file is per root dataset by default
  (``/var/run/zfsyncron.<root, percent-encoded>.pid``), so jobs for two
  roots do not shut each other out; ``--pid-file /var/run/zfsyncron.pid``
  gives the original's single lock.
- The lock survives a stale pid file (a run that was killed): the file is
  created with O_EXCL and held with flock(2); a file nobody holds is taken
  over unless its pid is a live zfsyncron (such as an original
  zfsyncron.sh, which does not flock).
- The window is checked before the lock, so a run outside its window
  changes nothing at all, not even the pid file.
- ``-i`` has no default: the system picks the source address. The
  original's 127.0.0.1 cannot reach another host.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple
from urllib.parse import quote

from . import __version__, protocol
from .cli import add_tls_options, check_tls
from .logs import Log
from .sender import SyncOptions, sync_tree
from .snapshots import Retention, Snapshot, SnapshotPlan, plan_cron_run, window_met
from .zfs import Zfs, ZfsError

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_SNAPSHOT = 2  # also: window not met, retention failed
EXIT_SEND = 3
EXIT_RUNNING = 4

DEFAULT_PORT = 30
DEFAULT_THREADS = 2
RUN_DIR = "/var/run"

_HOST_RE = re.compile(r"^[A-Za-z0-9_.%:][A-Za-z0-9_.%:-]*$")


@dataclass(frozen=True)
class Destination:
    """One HOST argument: a receiver and its port."""

    host: str
    port: int

    def __str__(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s:%d" % (host, self.port)


@dataclass
class CronOptions:
    root: str
    destinations: List[Destination]
    retention: Retention = field(default_factory=Retention)
    threads: int = DEFAULT_THREADS
    bind_address: Optional[str] = None
    log_file: Optional[str] = None
    window: int = 1
    pid_file: Optional[str] = None  # None: default_pid_file(root)
    frame_size: int = protocol.DEFAULT_FRAME_SIZE
    verbose: bool = False
    tls_cert: Optional[str] = None  # mutual TLS with zfsync receivers of ours
    tls_key: Optional[str] = None
    tls_ca: Optional[str] = None

    @property
    def lock_path(self) -> str:
        return self.pid_file or default_pid_file(self.root)


def default_pid_file(root: str, run_dir: str = RUN_DIR) -> str:
    """One lock per root dataset. Percent-encoding keeps distinct roots
    distinct (``a/b_c`` vs ``a_b/c``) and the file name free of ``/``."""
    return os.path.join(run_dir, "zfsyncron.%s.pid" % quote(root, safe=""))


def parse_destination(text: str, default_port: int) -> Destination:
    """``host``, ``host:port``, ``[v6addr]``, ``[v6addr]:port``; a bare IPv6
    address (more than one ``:``) takes the default port."""
    bracketed = re.match(r"^\[([^\[\]]+)\](?::([^:]*))?$", text)
    if bracketed:
        host, port_text = bracketed.group(1), bracketed.group(2)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None
    # Names, IPv4, IPv6 (with a %zone): nothing that could be an option or
    # a second argument in disguise.
    if not _HOST_RE.match(host):
        raise ValueError("invalid HOST %r: expected host, host:port, [ipv6] or [ipv6]:port" % text)
    if port_text is None:
        return Destination(host, default_port)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("invalid port in HOST %r: must be 1..65535" % text)
    return Destination(host, int(port_text))


# -- the pid lock ---------------------------------------------------------------

class AlreadyRunning(Exception):
    def __init__(self, path: str, pid: Optional[int]):
        self.path = path
        self.pid = pid
        holder = "pid %d" % pid if pid else "another process"
        super().__init__("already running: %s holds %s" % (holder, path))


class PidLock:
    """A pid file held with flock(2) for the length of a run.

    flock is released by the kernel when its holder dies, so a pid file left
    by a killed run is recognised as stale without trusting the pid in it;
    the pid is still checked, for holders that do not flock (the original
    zfsyncron.sh) and for pid files written by hand."""

    def __init__(self, path: str):
        self.path = path
        self.replaced_pid: Optional[int] = None  # the stale holder taken over
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        # A few rounds: between our open() and our flock() the holder may
        # release (unlink) the file, and a newcomer may create a new one.
        for _attempt in range(10):
            fd, created = self._open()
            if fd is None:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                pid = _read_pid(fd)
                os.close(fd)
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise AlreadyRunning(self.path, pid)
                raise
            if not _same_file(fd, self.path):
                os.close(fd)
                continue
            if not created:
                pid = _read_pid(fd)
                if pid is not None and pid != os.getpid() and is_zfsyncron(pid):
                    os.close(fd)
                    raise AlreadyRunning(self.path, pid)
                self.replaced_pid = pid
            os.ftruncate(fd, 0)
            os.pwrite(fd, b"%d\n" % os.getpid(), 0)
            self._fd = fd
            return
        raise AlreadyRunning(self.path, None)

    def _open(self) -> Tuple[Optional[int], bool]:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            pass
        try:
            return os.open(self.path, os.O_RDWR), False
        except FileNotFoundError:  # released in between: create it next round
            return None, False

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the lock: a waiter that opened this
        # file sees it replaced once it gets the lock, and starts over.
        if _same_file(self._fd, self.path):
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "PidLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def is_zfsyncron(pid: int) -> bool:
    """Is ``pid`` a live zfsyncron (ours or the original zfsyncron.sh)?
    When the command line cannot be read, assume it is: a run refused is
    retried by cron, two runs at once are not undone. (A stale pid that
    now belongs to a zfsyncron of another root also counts, until that
    run ends.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    command = process_command(pid)
    return command is None or "zfsyncron" in command


def process_command(pid: int) -> Optional[str]:
    """The command line of ``pid``: /proc where mounted (Linux), else ps(1)
    (FreeBSD); "" for a process that is gone or a zombie, None when unknown."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return ""  # procfs is there, the process is not
    except OSError:
        pass
    try:
        proc = subprocess.run(  # pylint: disable=ansible-bad-function
            ["ps", "-o", "command=", "-p", str(pid)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.decode("utf-8", "replace").strip()


# -- one run ------------------------------------------------------------------

def run_cron(options: CronOptions, now: Optional[float] = None, zfs: Optional[Zfs] = None,
             log: Optional[Log] = None) -> int:
    """One zfsyncron run; returns the exit status. ``now`` (epoch seconds)
    replaces the clock, for simulating a day of runs."""
    now = time.time() if now is None else now
    zfs = zfs or Zfs()
    log = log or Log(options.log_file, stream=sys.stdout)
    if not window_met(now, options.window):
        log.main("main", "window not met: epoch second %d is not a multiple of %d; nothing done"
                 % (int(now), options.window))
        return EXIT_SNAPSHOT
    lock = PidLock(options.lock_path)
    try:
        lock.acquire()
    except AlreadyRunning as error:
        log.main("main", str(error))
        return EXIT_RUNNING
    except OSError as error:
        log.main("main", "cannot create the pid file %s: %s" % (lock.path, error))
        return EXIT_USAGE
    try:
        if lock.replaced_pid is not None:
            log.main("main", "took over the stale pid file %s of pid %d" % (lock.path, lock.replaced_pid))
        outcome = take_snapshot(options, now, zfs, log)
        if not outcome.taken:
            return EXIT_SNAPSHOT
        status = EXIT_OK if outcome.pruned else EXIT_SNAPSHOT
        for destination in options.destinations:
            if not send_to(options, destination, zfs, log):
                status = EXIT_SEND
        log.main("main", "zfsyncron done, exit %d" % status)
        return status
    finally:
        lock.release()


@dataclass
class SnapshotOutcome:
    plan: Optional[SnapshotPlan]
    taken: bool
    pruned: bool


def take_snapshot(options: CronOptions, now: float, zfs: Zfs, log: Log) -> SnapshotOutcome:
    """``zfs snapshot -r ROOT@NAME``, then ``zfs destroy -r ROOT@OLD`` for
    the snapshots of the new one's class beyond its retention."""
    root = options.root
    try:
        created = zfs.snapshot_creation(root)
    except ZfsError as error:
        log.main("main", "cannot list the snapshots of %s: %s" % (root, error))
        return SnapshotOutcome(None, False, False)
    plan = plan_cron_run([Snapshot(n, t) for n, t in created.items()], now, options.retention)
    try:
        zfs.snapshot(["%s@%s" % (root, plan.create)], recursive=True)
    except ZfsError as error:
        log.main("main", "snapshot failed (%s@%s): %s" % (root, plan.create, error))
        return SnapshotOutcome(plan, False, False)
    log.main("main", "snapshot done (%s@%s), class %s keeps %d" % (
        root, plan.create, plan.snapshot_class, options.retention.keep(plan.snapshot_class)))
    pruned = True
    for name in plan.destroy:
        try:
            zfs.destroy("%s@%s" % (root, name), recursive=True)
            log.main("main", "destroyed %s@%s (retention)" % (root, name))
        except ZfsError as error:
            log.main("main", "retention: cannot destroy %s@%s: %s" % (root, name, error))
            pruned = False
    return SnapshotOutcome(plan, True, pruned)


def send_to(options: CronOptions, destination: Destination, zfs: Zfs, log: Log) -> bool:
    """One sync of the tree to one HOST; True when every dataset succeeded.
    The sender logs each failed dataset and its summary line itself."""
    sync = SyncOptions(root=options.root, receiver=destination.host, port=destination.port,
                       threads=options.threads, bind_address=options.bind_address,
                       frame_size=options.frame_size, log_file=options.log_file,
                       verbose=options.verbose, tls_cert=options.tls_cert, tls_key=options.tls_key,
                       tls_ca=options.tls_ca)
    try:
        result = sync_tree(sync, zfs=zfs, log=log)
    except Exception as error:  # one receiver's trouble must not keep the next from its sync
        log.main("main", "send to %s failed: %r" % (destination, error))
        return False
    log.main("main", "send to %s %s" % (destination, "done" if result.ok else "FAILED"))
    return result.ok


# -- command line ---------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1, as the original's did."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, "%s: error: %s\n" % (self.prog, message))


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError("must be a whole number >= 0, not %r" % text)
    return int(text)


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("must be a whole number >= 1, not %r" % text)
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError("port must be 1..65535, not %r" % text)
    return int(text)


def _frame_size(text: str) -> int:
    if not text.isdigit() or int(text) not in protocol.FRAME_SIZES:
        raise argparse.ArgumentTypeError("frame size must be 256 or 512, not %r" % text)
    return int(text)


def _epoch(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("--now takes epoch seconds, not %r" % text)


def cron_parser() -> argparse.ArgumentParser:
    # -h is the hourly count, as in the original, so help is -H/--help.
    parser = _Parser(prog="zfsyncron", add_help=False,
                     description="Take a recursive zfsyncron snapshot of ROOT_DATASET (named yymmdd-HHMMSS_<class> "
                     "in local time; class S, M, H or D when the newest snapshot is of the same minute, hour, day, "
                     "or older), destroy the oldest ones of that class beyond its retention, then sync the tree "
                     "to every HOST.",
                     epilog="Exit status: 0 ok, 1 usage, 2 window not met / snapshot failed / retention failed, "
                     "3 a send failed, 4 already running.")
    parser.add_argument("-H", "--help", action="help", help="show this help and exit")
    parser.add_argument("-s", "--secondly", type=_count, default=1, metavar="N",
                        help="keep N snapshots of class S (default 1)")
    parser.add_argument("-m", "--minutely", type=_count, default=4, metavar="N",
                        help="keep N snapshots of class M (default 4)")
    parser.add_argument("-h", "--hourly", type=_count, default=3, metavar="N",
                        help="keep N snapshots of class H (default 3)")
    parser.add_argument("-d", "--daily", type=_count, default=2, metavar="N",
                        help="keep N snapshots of class D (default 2)")
    parser.add_argument("-p", "--port", type=_port, default=DEFAULT_PORT,
                        help="receiver port for HOSTs without one (default 30)")
    parser.add_argument("-t", "--threads", type=_at_least_one, default=DEFAULT_THREADS,
                        help="sender worker threads (default 2)")
    parser.add_argument("-i", "--bind", default=None, metavar="BIND_IP",
                        help="local address to send from (default: chosen by the system; the original's "
                        "127.0.0.1 cannot reach another host)")
    parser.add_argument("-o", "--log-file", default=None, metavar="LOGFILE",
                        help="log here, with every dataset sent (default: standard output, summaries only)")
    parser.add_argument("-w", "--window", type=_at_least_one, default=1, metavar="W",
                        help="do nothing (exit 2) unless the epoch second is a multiple of W (default 1)")
    parser.add_argument("--pid-file", default=None,
                        help="lock file (default /var/run/zfsyncron.<ROOT_DATASET, percent-encoded>.pid, "
                        "one per root; the original used /var/run/zfsyncron.pid for all)")
    parser.add_argument("--frame-size", type=_frame_size, default=protocol.DEFAULT_FRAME_SIZE,
                        metavar="256|512", help="frame size (default 512; 256 for receivers older than 2021-02-18)")
    parser.add_argument("--verbose", action="store_true", help="log every dataset even without -o")
    add_tls_options(parser, "this sender's")
    parser.add_argument("--version", action="version", version="zfsyncron " + __version__)
    parser.add_argument("--now", type=_epoch, default=None, help=argparse.SUPPRESS)  # tests: the clock
    parser.add_argument("root", metavar="ROOT_DATASET")
    parser.add_argument("hosts", metavar="HOST", nargs="+",
                        help="receiver: host, host:port, [ipv6] or [ipv6]:port")
    return parser


def options_from_args(args: argparse.Namespace) -> CronOptions:
    """Raises ValueError for a HOST that cannot be used."""
    destinations = [parse_destination(text, args.port) for text in args.hosts]
    return CronOptions(
        root=args.root, destinations=destinations,
        retention=Retention(args.secondly, args.minutely, args.hourly, args.daily),
        threads=args.threads, bind_address=args.bind, log_file=args.log_file, window=args.window,
        pid_file=args.pid_file, frame_size=args.frame_size,
        # The original always ran zfsync_send -v into its -o log.
        verbose=args.verbose or args.log_file is not None,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca)


def main_cron(argv: Optional[Sequence[str]] = None) -> int:
    parser = cron_parser()
    args = parser.parse_args(argv)
    try:
        protocol.validate_suffix("/" + args.root)
    except protocol.ProtocolError as error:
        parser.error("invalid ROOT_DATASET %r: %s" % (args.root, error))
    check_tls(parser, args)
    try:
        options = options_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    try:
        log = Log(options.log_file, options.verbose, stream=sys.stdout)
    except OSError as error:
        sys.stderr.write("zfsyncron: cannot open log %s: %s\n" % (options.log_file, error))
        return EXIT_USAGE
    restore = _exit_on_sigterm()
    try:
        return run_cron(options, now=args.now, log=log)
    finally:
        restore()
        log.close()


def _exit_on_sigterm():
    """SIGTERM unwinds the run (releasing the pid file) instead of killing
    it on the spot. Returns what puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    return lambda: signal.signal(signal.SIGTERM, previous)
