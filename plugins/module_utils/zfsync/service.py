# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""Deploying the engine and the receiver daemon on a host.

* ``engine_files``/``launcher_files``: the engine package, copied from the
  very files this code was loaded from (also out of an AnsiballZ zip), and the
  ``zfsync_recv``/``zfsync_send``/``zfsyncron`` launchers that run it.
* ``render_systemd_unit``, ``render_rc_script``, ``render_rc_conf``: the
  service definitions (systemd on Linux, rc.d + daemon(8) on FreeBSD).
* ``plan_files``/``apply_files``: compare wanted files with the host and
  write only the difference, atomically.
* ``Systemd``, ``RcService``, ``Detached``: start, stop, restart and inspect
  the daemon under each service manager (``none`` = a detached process with a
  pid file, for containers and the local demo).

Nothing here imports Ansible: the ``receiver`` module is a thin adapter over
it, and tests drive it directly.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import pkgutil
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import ENGINE_MODULES, __version__
from .clients import DEFAULT_FIRST_REQUEST_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_CLIENT

SERVICE_NAME = "zfsync-recv"            # systemd
RC_NAME = "zfsync_recv"                 # FreeBSD rc.d and rc.conf.d
SYSTEMD_UNIT_PATH = "/etc/systemd/system/zfsync-recv.service"
RC_SCRIPT_PATH = "/usr/local/etc/rc.d/zfsync_recv"
RC_CONF_PATH = "/etc/rc.conf.d/zfsync_recv"
RC_SUPERVISOR_PID_FILE = "/var/run/zfsync_recv.supervisor.pid"
DEFAULT_PID_FILE = "/var/run/zfsync_recv.pid"

LAUNCHERS = (("zfsync_recv", "main_recv"), ("zfsync_send", "main_send"), ("zfsyncron", "main_cron"))
MANAGED_MARK = "Managed by zfsync.zfsync.receiver"

COMMAND_TIMEOUT = 120.0
# The daemon lets a running receive finish for --stop-timeout (30 s by
# default) and then joins its workers; systemd and we wait a little longer.
STOP_TIMEOUT = 60.0
START_TIMEOUT = 20.0

MANAGERS = ("systemd", "rc", "none")


class ServiceError(RuntimeError):
    """Deploying or controlling the daemon failed; the message says what, where
    and what the failing command printed."""


# -- what the daemon runs ---------------------------------------------------

@dataclass(frozen=True)
class ReceiverSettings:
    """The daemon's command line: the original's flags and our long ones."""

    root: str
    prefix: str = "/usr/local"
    port: int = 30
    listen_address: str = "127.0.0.1"
    backlog: int = 50
    threads: int = 4
    log_file: str = "/var/log/zfshad.log"
    flag_dir: str = "/var/run/zfshad"
    verbose: bool = False
    frame_size: str = "auto"
    pid_file: str = DEFAULT_PID_FILE
    allow: Tuple[str, ...] = ()
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tls_ca: Optional[str] = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_client: int = DEFAULT_MAX_PER_CLIENT
    first_request_timeout: float = DEFAULT_FIRST_REQUEST_TIMEOUT
    client_roots: Tuple[str, ...] = ()

    @property
    def bin_dir(self) -> str:
        return os.path.join(self.prefix, "bin")

    @property
    def lib_dir(self) -> str:
        return os.path.join(self.prefix, "lib", "zfsync")

    @property
    def package_dir(self) -> str:
        return os.path.join(self.lib_dir, "zfsync")

    @property
    def launcher(self) -> str:
        return os.path.join(self.bin_dir, "zfsync_recv")

    def daemon_args(self, pid_file: bool = False) -> List[str]:
        """Arguments after the program name, ROOT last; ``--frame-size`` and
        the connection bounds only when not the default, so the default is
        the original's command line."""
        args = ["-v"] if self.verbose else []
        args += ["-p", str(self.port), "-b", str(self.backlog), "-t", str(self.threads),
                 "-o", self.log_file, "-d", self.flag_dir, "-i", self.listen_address]
        if self.frame_size != "auto":
            args += ["--frame-size", str(self.frame_size)]
        for cidr in self.allow:
            args += ["--allow", cidr]
        for flag, value, default in (("--max-connections", self.max_connections, DEFAULT_MAX_CONNECTIONS),
                                     ("--max-per-client", self.max_per_client, DEFAULT_MAX_PER_CLIENT),
                                     ("--first-request-timeout", self.first_request_timeout,
                                      DEFAULT_FIRST_REQUEST_TIMEOUT)):
            if value != default:
                args += [flag, "%g" % value]
        for spec in self.client_roots:
            args += ["--client-root", spec]
        for flag, value in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key), ("--tls-ca", self.tls_ca)):
            if value:
                args += [flag, value]
        if pid_file:
            args += ["--pid-file", self.pid_file]
        return args + [self.root]


# -- files ------------------------------------------------------------------

@dataclass(frozen=True)
class WantedFile:
    path: str
    content: bytes
    mode: int


@dataclass(frozen=True)
class FileChange:
    """One file to create, update or remove. ``before``/``after`` are None
    for a file that is missing before / removed after."""

    path: str
    before: Optional[bytes]
    after: Optional[bytes]
    before_mode: Optional[int] = None
    mode: Optional[int] = None

    @property
    def action(self) -> str:
        if self.after is None:
            return "remove"
        if self.before is None:
            return "create"
        return "update" if self.before != self.after else "chmod"


def _read_engine_file(name: str) -> bytes:
    """The source of one engine module, read through the package's loader so
    it works from a checkout, an installed collection and an AnsiballZ zip."""
    try:
        data = pkgutil.get_data(__package__, name + ".py")
        if data is not None:
            return data
    except OSError:
        pass
    try:
        module = importlib.import_module("%s.%s" % (__package__, name) if name != "__init__" else __package__)
        source = module.__loader__.get_source(module.__name__)  # type: ignore[union-attr]
    except (ImportError, AttributeError) as error:
        raise ServiceError("engine file %s.py is missing from this copy of the engine: %s" % (name, error))
    if source is None:
        raise ServiceError("engine file %s.py: its loader has no source to install" % name)
    return source.encode("utf-8")


def engine_files(settings: ReceiverSettings, modules: Sequence[str] = ENGINE_MODULES) -> List[WantedFile]:
    """The engine package as ``{prefix}/lib/zfsync/zfsync/*.py``."""
    return [WantedFile(os.path.join(settings.package_dir, name + ".py"), _read_engine_file(name), 0o644)
            for name in modules]


def render_launcher(settings: ReceiverSettings, program: str, entry: str, python: str) -> bytes:
    lib_dir = settings.lib_dir
    text = (
        "#!{python}\n"
        "# {program}: {mark}; changes are overwritten.\n"
        "# Runs the zfsync engine {version} installed in {lib_dir}.\n"
        "import sys\n"
        "\n"
        "sys.path.insert(0, {lib_dir!r})\n"
        "\n"
        "from zfsync.cli import {entry}  # noqa: E402\n"
        "\n"
        "sys.exit({entry}())\n"
    ).format(python=python, program=program, mark=MANAGED_MARK, version=__version__, lib_dir=lib_dir, entry=entry)
    return text.encode("utf-8")


def launcher_files(settings: ReceiverSettings, python: str) -> List[WantedFile]:
    if not python.startswith("/") or any(c.isspace() for c in python):
        raise ServiceError("python interpreter for the launchers must be an absolute path without spaces: %r" % python)
    return [WantedFile(os.path.join(settings.bin_dir, program), render_launcher(settings, program, entry, python), 0o755)
            for program, entry in LAUNCHERS]


def _current(path: str):
    try:
        with open(path, "rb") as handle:
            content = handle.read()
        return content, os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return None, None
    except OSError as error:
        raise ServiceError("cannot read %s: %s" % (path, error))


def plan_files(wanted: Sequence[WantedFile]) -> List[FileChange]:
    """The files whose content or mode differs from what is wanted."""
    changes = []
    for item in wanted:
        before, before_mode = _current(item.path)
        if before != item.content or before_mode != item.mode:
            changes.append(FileChange(item.path, before, item.content, before_mode, item.mode))
    return changes


def plan_removal(paths: Sequence[str]) -> List[FileChange]:
    changes = []
    for path in paths:
        before, before_mode = _current(path)
        if before is not None:
            changes.append(FileChange(path, before, None, before_mode, None))
    return changes


def stale_engine_files(settings: ReceiverSettings, modules: Sequence[str] = ENGINE_MODULES) -> List[str]:
    """``*.py`` in the installed package that this engine no longer has: a
    leftover module of an older release must not shadow anything."""
    try:
        names = os.listdir(settings.package_dir)
    except FileNotFoundError:
        return []
    wanted = {name + ".py" for name in modules}
    return sorted(os.path.join(settings.package_dir, n) for n in names if n.endswith(".py") and n not in wanted)


def write_atomically(path: str, content: bytes, mode: int) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    descriptor, temp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


def apply_files(changes: Sequence[FileChange]) -> None:
    for change in changes:
        try:
            if change.after is None:
                os.unlink(change.path)
            elif change.before == change.after and change.mode is not None:
                os.chmod(change.path, change.mode)
            else:
                write_atomically(change.path, change.after, change.mode if change.mode is not None else 0o644)
        except FileNotFoundError:
            if change.after is not None:
                raise ServiceError("cannot write %s: its directory vanished" % change.path)
        except OSError as error:
            raise ServiceError("cannot %s %s: %s" % (change.action, change.path, error))


def installed_version(settings: ReceiverSettings) -> Optional[str]:
    """``__version__`` of the engine installed under the prefix, if any."""
    content, mode = _current(os.path.join(settings.package_dir, "__init__.py"))
    del mode
    if content is None:
        return None
    for line in content.decode("utf-8", "replace").splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return None


def engine_manifest(files: Dict[str, Optional[bytes]]) -> str:
    """A readable stand-in for the engine's source in diff mode: one line per
    file with its sha256, so a diff says which files change without showing
    thousands of lines of Python."""
    lines = []
    for path in sorted(files):
        content = files[path]
        if content is not None:
            lines.append("%s sha256:%s" % (path, hashlib.sha256(content).hexdigest()[:16]))
    return "\n".join(lines) + ("\n" if lines else "")


def _text(content: Optional[bytes]) -> str:
    return "" if content is None else content.decode("utf-8", "replace")


def engine_diff(changes: Sequence["FileChange"], package_dir: str) -> List[Dict[str, str]]:
    """Ansible diff entries for engine files: one manifest line per file
    (name and checksum), not the whole source."""
    if not changes:
        return []
    before = dict((c.path, c.before) for c in changes)
    after = dict((c.path, c.after) for c in changes)
    return [{"before_header": "%s (engine files)" % package_dir,
             "after_header": "%s (engine %s)" % (package_dir, __version__),
             "before": engine_manifest(before), "after": engine_manifest(after)}]


def files_diff(changes: Sequence["FileChange"]) -> List[Dict[str, str]]:
    """Ansible diff entries for other files: their text in full, or their
    mode when only the mode changes."""
    entries = []
    for change in changes:
        before, after = _text(change.before), _text(change.after)
        if change.before == change.after:
            before = "mode %04o\n" % (change.before_mode or 0)
            after = "mode %04o\n" % (change.mode or 0)
        entries.append({"before_header": change.path, "after_header": change.path, "before": before, "after": after})
    return entries


# -- service definitions ----------------------------------------------------

def _systemd_quote(arg: str) -> str:
    """One ExecStart argument: systemd expands % specifiers and $ variables,
    and splits on whitespace unless quoted."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if escaped and all(c.isalnum() or c in "/._-:,=+@" for c in escaped.replace("%%", "").replace("$$", "")):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_systemd_unit(settings: ReceiverSettings) -> str:
    exec_start = " ".join(_systemd_quote(a) for a in [settings.launcher] + settings.daemon_args())
    return (
        "# {mark}; changes are overwritten.\n"
        "[Unit]\n"
        "Description=zfsync receiver daemon for {root}\n"
        "Documentation=man:zfs(8)\n"
        "After=network-online.target zfs.target zfs-import.target local-fs.target\n"
        "Wants=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        "ExecStart={exec_start}\n"
        "ExecReload=/bin/kill -USR1 $MAINPID\n"
        "KillSignal=SIGTERM\n"
        "KillMode=mixed\n"
        "TimeoutStopSec={stop_timeout}\n"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    ).format(mark=MANAGED_MARK, root=settings.root, exec_start=exec_start, stop_timeout=int(STOP_TIMEOUT))


def render_rc_script(settings: ReceiverSettings) -> str:
    """FreeBSD rc.d script: daemon(8) supervises (-r restarts it, -P holds the
    supervisor's pid for stop, -p the daemon's own pid for reload), -f sends
    the standard descriptors to /dev/null and -S startup errors to syslog; the
    daemon writes its own log. Settings live in /etc/rc.conf.d/zfsync_recv."""
    return r"""#!/bin/sh
#
# PROVIDE: zfsync_recv
# REQUIRE: LOGIN NETWORKING zfs
# KEYWORD: shutdown
#
# {mark}; changes are overwritten.
# Set these in {rc_conf} (the module writes it), not in /etc/rc.conf:
#
# zfsync_recv_enable (bool):  "YES" starts the receiver at boot. Default "NO".
# zfsync_recv_args (str):     zfsync_recv arguments, ROOT_DATASET last.
# zfsync_recv_pidfile (str):  the receiver's pid. Default "{pid_file}".

. /etc/rc.subr

name="zfsync_recv"
rcvar="zfsync_recv_enable"
desc="zfsync receiver daemon"

load_rc_config "$name"

: ${{zfsync_recv_enable:="NO"}}
: ${{zfsync_recv_args:=""}}
: ${{zfsync_recv_pidfile:="{pid_file}"}}

required_modules="zfs"
pidfile="{supervisor_pid_file}"
procname="/usr/sbin/daemon"
command="/usr/sbin/daemon"
command_args="-f -S -T ${{name}} -r -P ${{pidfile}} -p ${{zfsync_recv_pidfile}} {launcher} ${{zfsync_recv_args}}"

extra_commands="reload"
sig_reload="USR1"
reload_cmd="${{name}}_reload"

# daemon(8) does not pass SIGUSR1 on (it would die of it): signal the
# receiver itself, which reopens its logs.
zfsync_recv_reload()
{{
    if [ ! -r "${{zfsync_recv_pidfile}}" ]; then
        echo "${{name}} is not running."
        return 1
    fi
    read _zfsync_recv_pid _zfsync_recv_rest < "${{zfsync_recv_pidfile}}"
    kill -s "${{sig_reload}}" "${{_zfsync_recv_pid}}"
}}

run_rc_command "$1"
""".format(mark=MANAGED_MARK, rc_conf=RC_CONF_PATH, pid_file=settings.pid_file,
           supervisor_pid_file=RC_SUPERVISOR_PID_FILE, launcher=settings.launcher)


def _sh_double_quote(text: str) -> str:
    return '"' + "".join("\\" + c if c in '"$`\\' else c for c in text) + '"'


def render_rc_conf(settings: ReceiverSettings, enabled: bool) -> str:
    """The rc.conf.d file, as sysrc(8) would write it. rc.subr eval()s
    command_args, so the args are shell-quoted once for that eval and once
    more for the assignment."""
    args = " ".join(shlex.quote(a) for a in settings.daemon_args())
    return (
        "# {mark}; changes are overwritten.\n"
        "zfsync_recv_enable={enable}\n"
        "zfsync_recv_args={args}\n"
        "zfsync_recv_pidfile={pid_file}\n"
    ).format(mark=MANAGED_MARK, enable=_sh_double_quote("YES" if enabled else "NO"),
             args=_sh_double_quote(args), pid_file=_sh_double_quote(settings.pid_file))


def detect_service_manager(system: Optional[str] = None, systemd_dir: str = "/run/systemd/system") -> str:
    """``systemd`` where systemd is running, ``rc`` on FreeBSD, else ``none``."""
    system = system or platform.system()
    if system == "FreeBSD":
        return "rc"
    if system == "Linux" and os.path.isdir(systemd_dir):
        return "systemd"
    return "none"


# -- running commands -------------------------------------------------------

@dataclass(frozen=True)
class CommandResult:
    argv: List[str]
    rc: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        output = (self.stderr.strip() or self.stdout.strip() or "no output")
        return "%s exited %d: %s" % (" ".join(self.argv), self.rc, output)


def run_command(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> CommandResult:
    """argv list, C locale, bounded; raises ServiceError if it cannot run."""
    env = dict(os.environ, LC_ALL="C", LANG="C", LANGUAGE="C")
    try:
        proc = subprocess.run(  # pylint: disable=ansible-bad-function
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ServiceError("%s: command not found" % argv[0])
    except subprocess.TimeoutExpired:
        raise ServiceError("%s: no answer within %.0f s" % (" ".join(argv), timeout))
    return CommandResult(list(argv), proc.returncode, proc.stdout.decode("utf-8", "replace"),
                         proc.stderr.decode("utf-8", "replace"))


Runner = Callable[[Sequence[str]], CommandResult]


@dataclass
class ServiceState:
    running: bool
    pid: Optional[int] = None
    enabled: Optional[bool] = None
    # The daemon's command line where no service definition file shows it
    # (``none``): what runs, or what will run.
    command: Optional[List[str]] = None


@dataclass
class ServicePlan:
    """What ``converge`` did or, in check mode, would do."""

    actions: List[str] = field(default_factory=list)
    state: ServiceState = field(default_factory=lambda: ServiceState(False))

    @property
    def changed(self) -> bool:
        return bool(self.actions)


# -- process helpers (the ``none`` manager and status everywhere) -----------

def read_pid_file(path: str) -> Optional[int]:
    try:
        with open(path) as handle:
            text = handle.read(64).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def process_argv(pid: int) -> Optional[List[str]]:
    """The command line of a live process, None if there is none (zombies
    count as gone). /proc where there is one, else ps(1)."""
    if os.path.isdir("/proc/self"):
        try:
            with open("/proc/%d/stat" % pid, "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
            if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
                return None
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                raw = handle.read()
        except OSError:
            return None
        return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]
    result = run_command(["ps", "-ww", "-o", "state=", "-o", "args=", "-p", str(pid)], timeout=30)
    line = result.stdout.strip()
    if result.rc != 0 or not line or line.startswith("Z"):
        return None
    return line.split()[1:]


def _reap(pid: int) -> None:
    """Collect our own child (a daemon started in this process) so it does
    not linger as a zombie; harmless for anyone else's process."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def _alive(pid: int) -> bool:
    _reap(pid)
    return process_argv(pid) is not None


def _daemon_environment() -> Dict[str, str]:
    """The caller's environment without what points into it: an AnsiballZ
    run's PYTHONPATH names a payload that is deleted when the module exits."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith(("PYTHON", "ANSIBLE_", "_ANSIBLE"))}


class Detached:
    """``service_manager: none``: the daemon runs detached (own session, the
    standard descriptors on /dev/null) and is found again through its pid
    file, checked against the process's command line so that a stale pid
    file or a recycled pid is never mistaken for the daemon."""

    name = "none"

    def __init__(self, settings: ReceiverSettings):
        self.settings = settings

    def wanted_argv(self) -> List[str]:
        return [self.settings.launcher] + self.settings.daemon_args(pid_file=True)

    def running_pid(self) -> Optional[int]:
        pid = read_pid_file(self.settings.pid_file)
        if pid is None:
            return None
        argv = process_argv(pid)
        if argv is None or self.settings.launcher not in argv:
            return None
        return pid

    def running_argv(self) -> Optional[List[str]]:
        pid = self.running_pid()
        if pid is None:
            return None
        argv = process_argv(pid) or []
        return argv[argv.index(self.settings.launcher):] if self.settings.launcher in argv else argv

    def state(self) -> ServiceState:
        pid = self.running_pid()
        return ServiceState(running=pid is not None, pid=pid, enabled=None, command=self.running_argv())

    def start(self) -> int:
        argv = self.wanted_argv()
        self._remove_stale_pid_file()
        try:
            proc = subprocess.Popen(  # pylint: disable=ansible-bad-function
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                close_fds=True, start_new_session=True, cwd="/", env=_daemon_environment())
        except OSError as error:
            raise ServiceError("cannot start %s: %s" % (argv[0], error))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServiceError("%s exited with status %s while starting; %s"
                                   % (" ".join(argv), proc.returncode, self._log_tail()))
            if read_pid_file(self.settings.pid_file) == proc.pid:
                return proc.pid
            time.sleep(0.1)
        self._kill(proc.pid)
        raise ServiceError("%s wrote no pid file %s within %.0f s; stopped it; %s"
                           % (argv[0], self.settings.pid_file, START_TIMEOUT, self._log_tail()))

    def stop(self) -> bool:
        pid = self.running_pid()
        if pid is None:
            self._remove_stale_pid_file()
            return False
        self._kill(pid)
        self._remove_stale_pid_file()
        return True

    def _kill(self, pid: int) -> None:
        """SIGTERM, a bounded wait for the clean stop, then SIGKILL."""
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 10.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _alive(pid):
                    return
                time.sleep(0.1)
        raise ServiceError("process %d survived SIGKILL" % pid)

    def _remove_stale_pid_file(self) -> None:
        pid = read_pid_file(self.settings.pid_file)
        if pid is not None and self.running_pid() is None:
            try:
                os.unlink(self.settings.pid_file)
            except OSError:
                pass

    def _log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.settings.log_file, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 4096))
                tail = handle.read().decode("utf-8", "replace").splitlines()[-lines:]
        except OSError:
            return "no log at %s" % self.settings.log_file
        return "last lines of %s: %s" % (self.settings.log_file, " | ".join(tail))

    def converge(self, running: bool, enabled: bool, restart: bool, check_mode: bool) -> ServicePlan:
        """Bring the daemon to the wanted state. ``enabled`` has no meaning
        without a service manager (nothing starts it at boot)."""
        del enabled
        plan = ServicePlan(state=self.state())
        current = plan.state.command
        wanted = self.wanted_argv()
        if not running:
            if current is not None:
                plan.actions.append("stop")
                if not check_mode:
                    self.stop()
                plan.state = ServiceState(False)
            return plan
        if current is not None and (restart or current != wanted):
            plan.actions.append("restart")
            if not check_mode:
                self.stop()
        elif current is None:
            plan.actions.append("start")
        if plan.actions:
            pid = None if check_mode else self.start()
            plan.state = ServiceState(True, pid, None, wanted)
        return plan

    def remove(self, check_mode: bool) -> ServicePlan:
        plan = ServicePlan(state=self.state())
        if plan.state.running:
            plan.actions.append("stop")
            if not check_mode:
                self.stop()
        plan.state = ServiceState(False)
        return plan


class Systemd:
    """The daemon as the systemd service ``zfsync-recv``."""

    name = "systemd"

    def __init__(self, settings: ReceiverSettings, runner: Runner = run_command):
        self.settings = settings
        self.run = runner

    def _systemctl(self, *args: str) -> CommandResult:
        return self.run(["systemctl"] + list(args))

    def _must(self, *args: str) -> None:
        result = self._systemctl(*args)
        if result.rc != 0:
            raise ServiceError(result.describe())

    def state(self) -> ServiceState:
        active = self._systemctl("is-active", SERVICE_NAME).stdout.strip() == "active"
        enabled = self._systemctl("is-enabled", SERVICE_NAME).stdout.strip() == "enabled"
        pid = None
        if active:
            text = self._systemctl("show", "--property=MainPID", "--value", SERVICE_NAME).stdout.strip()
            pid = int(text) if text.isdigit() and int(text) > 0 else None
        return ServiceState(active, pid, enabled)

    def converge(self, running: bool, enabled: bool, restart: bool, check_mode: bool,
                 unit_changed: bool = False) -> ServicePlan:
        plan = ServicePlan(state=self.state())
        steps = []
        if unit_changed:
            steps.append(("daemon-reload", ["daemon-reload"]))
        if enabled != plan.state.enabled:
            steps.append(("enable" if enabled else "disable", ["enable" if enabled else "disable", SERVICE_NAME]))
        if running and not plan.state.running:
            steps.append(("start", ["start", SERVICE_NAME]))
        elif running and restart:
            steps.append(("restart", ["restart", SERVICE_NAME]))
        elif not running and plan.state.running:
            steps.append(("stop", ["stop", SERVICE_NAME]))
        for action, args in steps:
            plan.actions.append(action)
            if not check_mode:
                self._must(*args)
        if check_mode:
            plan.state = ServiceState(running, plan.state.pid if running and not restart else None, enabled)
        else:
            plan.state = self.state()
        return plan

    def remove(self, check_mode: bool) -> ServicePlan:
        plan = ServicePlan(state=self.state())
        if plan.state.running:
            plan.actions.append("stop")
            if not check_mode:
                self._must("stop", SERVICE_NAME)
        if plan.state.enabled:
            plan.actions.append("disable")
            if not check_mode:
                self._must("disable", SERVICE_NAME)
        plan.state = ServiceState(False, None, False)
        return plan

    def after_removal(self, check_mode: bool) -> None:
        if not check_mode:
            self._systemctl("daemon-reload")


class RcService:
    """The daemon under FreeBSD's rc(8): ``service zfsync_recv ...``. The
    one* commands act whether or not zfsync_recv_enable is YES; enabling is
    the rc.conf.d file's job."""

    name = "rc"

    def __init__(self, settings: ReceiverSettings, runner: Runner = run_command):
        self.settings = settings
        self.run = runner

    def _service(self, command: str) -> CommandResult:
        return self.run(["service", RC_NAME, command])

    def _must(self, command: str) -> None:
        result = self._service(command)
        if result.rc != 0:
            raise ServiceError(result.describe())

    def state(self) -> ServiceState:
        running = os.path.exists(RC_SCRIPT_PATH) and self._service("onestatus").rc == 0
        pid = read_pid_file(self.settings.pid_file) if running else None
        content, mode = _current(RC_CONF_PATH)
        del mode
        enabled = content is not None and b'zfsync_recv_enable="YES"' in content
        return ServiceState(running, pid, enabled)

    def converge(self, running: bool, enabled: bool, restart: bool, check_mode: bool) -> ServicePlan:
        plan = ServicePlan(state=self.state())
        if running and not plan.state.running:
            plan.actions.append("start")
        elif running and restart:
            plan.actions.append("restart")
        elif not running and plan.state.running:
            plan.actions.append("stop")
        for action in plan.actions:
            if not check_mode:
                self._must("one" + action)
        if check_mode:
            plan.state = ServiceState(running, None, enabled)
        else:
            plan.state = self.state()
        return plan

    def remove(self, check_mode: bool) -> ServicePlan:
        plan = ServicePlan(state=self.state())
        if plan.state.running:
            plan.actions.append("stop")
            if not check_mode:
                self._must("onestop")
        plan.state = ServiceState(False, None, False)
        return plan


def service_for(manager: str, settings: ReceiverSettings, runner: Runner = run_command):
    if manager == "systemd":
        return Systemd(settings, runner)
    if manager == "rc":
        return RcService(settings, runner)
    if manager == "none":
        return Detached(settings)
    raise ServiceError("unknown service manager %r (one of %s)" % (manager, ", ".join(MANAGERS)))


def service_files(manager: str, settings: ReceiverSettings, enabled: bool) -> List[WantedFile]:
    """The service definition files a manager needs."""
    if manager == "systemd":
        return [WantedFile(SYSTEMD_UNIT_PATH, render_systemd_unit(settings).encode("utf-8"), 0o644)]
    if manager == "rc":
        return [WantedFile(RC_SCRIPT_PATH, render_rc_script(settings).encode("utf-8"), 0o555),
                WantedFile(RC_CONF_PATH, render_rc_conf(settings, enabled).encode("utf-8"), 0o644)]
    return []


def service_file_paths(manager: str) -> List[str]:
    if manager == "systemd":
        return [SYSTEMD_UNIT_PATH]
    if manager == "rc":
        return [RC_SCRIPT_PATH, RC_CONF_PATH]
    return []


def restart_needed(changes: Sequence[FileChange]) -> bool:
    """Whether file changes call for a restart of a running daemon: any
    change does, except an rc.conf.d change that only flips the enable
    knob (that is about boot, not about the running daemon)."""
    for change in changes:
        if change.path != RC_CONF_PATH:
            return True
        if _rc_conf_without_enable(change.before) != _rc_conf_without_enable(change.after):
            return True
    return False


def _rc_conf_without_enable(content: Optional[bytes]) -> List[bytes]:
    lines = (content or b"").splitlines()
    return [line for line in lines if not line.startswith(b"zfsync_recv_enable=")]


def current_python() -> str:
    """The interpreter running this code: the launchers' default."""
    return sys.executable
