# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""service.py: what the receiver module deploys on a host.

Rendered service definitions are checked by the tools that judge them here
(sh -n, dash -n, checkbashisms, systemd-analyze verify) and by running the
rc.d script against a small rc.subr stand-in that prints what rc.subr would
execute. Installs go into a temporary prefix and the launchers run with the
system python3. No ZFS is involved: the daemon here is a stand-in script.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.zfsync.zfsync.plugins.module_utils import zfsync as engine
from ansible_collections.zfsync.zfsync.plugins.module_utils.zfsync import service

SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def settings(tmp_path=None, **overrides):
    values = dict(root="tank/backup", prefix=str(tmp_path / "prefix") if tmp_path else "/usr/local")
    values.update(overrides)
    return service.ReceiverSettings(**values)


def run(argv, **kwargs):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=60, check=False, **kwargs)


# -- the daemon's command line ----------------------------------------------

def test_daemon_args_are_the_original_flags_with_root_last():
    args = settings().daemon_args()
    assert args == ["-p", "30", "-b", "50", "-t", "4", "-o", "/var/log/zfshad.log", "-d", "/var/run/zfshad",
                    "-i", "127.0.0.1", "tank/backup"]


def test_daemon_args_add_verbose_frame_size_and_pid_file_when_asked():
    args = settings(verbose=True, frame_size="256", pid_file="/run/x.pid").daemon_args(pid_file=True)
    assert args[0] == "-v"
    assert args[-5:] == ["--frame-size", "256", "--pid-file", "/run/x.pid", "tank/backup"]


def test_auto_frame_size_is_left_to_the_daemon():
    assert "--frame-size" not in settings(frame_size="auto").daemon_args()


# -- systemd ----------------------------------------------------------------

def unit_lines(text):
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_systemd_unit_runs_the_launcher_with_the_daemon_flags():
    unit = service.render_systemd_unit(settings(port=3030, listen_address="::"))
    assert ("ExecStart=/usr/local/bin/zfsync_recv -p 3030 -b 50 -t 4 -o /var/log/zfshad.log "
            "-d /var/run/zfshad -i :: tank/backup") in unit_lines(unit)


def test_systemd_unit_restarts_on_failure_and_stops_with_sigterm():
    lines = unit_lines(service.render_systemd_unit(settings()))
    for wanted in ("Type=simple", "Restart=on-failure", "KillSignal=SIGTERM",
                   "ExecReload=/bin/kill -USR1 $MAINPID", "WantedBy=multi-user.target"):
        assert wanted in lines


def test_systemd_unit_starts_after_zfs_and_local_filesystems():
    after = [line for line in unit_lines(service.render_systemd_unit(settings())) if line.startswith("After=")]
    assert len(after) == 1
    assert {"zfs.target", "zfs-import.target", "local-fs.target"} <= set(after[0][len("After="):].split())


def test_systemd_unit_quotes_arguments_with_spaces_and_escapes_specifiers():
    unit = service.render_systemd_unit(settings(root="tank/my backup", log_file="/var/log/100%.log"))
    exec_start = [line for line in unit.splitlines() if line.startswith("ExecStart=")][0]
    assert exec_start.endswith(' "tank/my backup"')
    assert " /var/log/100%%.log " in exec_start


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    wanted = settings(tmp_path, root="tank/my backup")
    service.apply_files(service.plan_files(service.launcher_files(wanted, SYSTEM_PYTHON)))
    unit = tmp_path / "zfsync-recv.service"
    unit.write_text(service.render_systemd_unit(wanted))
    result = run(["systemd-analyze", "verify", str(unit)])
    assert result.returncode == 0, result.stderr
    assert "zfsync-recv.service" not in result.stderr, result.stderr


# -- FreeBSD rc.d -----------------------------------------------------------

@pytest.mark.parametrize("shell", ["sh", "dash", "bash"])
def test_rc_script_parses_in_posix_shells(tmp_path, shell):
    if shutil.which(shell) is None:
        pytest.skip("%s is not installed" % shell)
    script = tmp_path / "zfsync_recv"
    script.write_text(service.render_rc_script(settings()))
    result = run([shell, "-n", str(script)])
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("checkbashisms") is None, reason="checkbashisms (devscripts) is not installed")
def test_rc_script_has_no_bashisms(tmp_path):
    script = tmp_path / "zfsync_recv"
    script.write_text(service.render_rc_script(settings()))
    result = run(["checkbashisms", "--posix", str(script)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_rc_script_uses_rc_subr_idioms():
    script = service.render_rc_script(settings())
    lines = [line.strip() for line in script.splitlines()]
    for wanted in ('. /etc/rc.subr', 'name="zfsync_recv"', 'rcvar="zfsync_recv_enable"', 'load_rc_config "$name"',
                   ': ${zfsync_recv_enable:="NO"}', ': ${zfsync_recv_args:=""}', 'command="/usr/sbin/daemon"',
                   'procname="/usr/sbin/daemon"', 'sig_reload="USR1"', 'required_modules="zfs"',
                   'run_rc_command "$1"', '# PROVIDE: zfsync_recv', '# KEYWORD: shutdown'):
        assert wanted in lines
    assert any(line.startswith("# REQUIRE:") and "zfs" in line.split() for line in lines)
    assert 'pidfile="%s"' % service.RC_SUPERVISOR_PID_FILE in lines


def test_rc_script_takes_args_not_flags():
    script = service.render_rc_script(settings())
    assert "zfsync_recv_args" in script
    assert "_flags" not in script


def test_rc_script_supervises_with_daemon_8():
    script = service.render_rc_script(settings())
    command_args = [line for line in script.splitlines() if line.startswith("command_args=")][0]
    words = command_args.split("=", 1)[1].strip('"').split()
    assert {"-f", "-r"} <= set(words)
    assert words[words.index("-P") + 1] == "${pidfile}"
    assert words[words.index("-p") + 1] == "${zfsync_recv_pidfile}"
    assert words[-2:] == ["/usr/local/bin/zfsync_recv", "${zfsync_recv_args}"]


# A stand-in for /etc/rc.subr: enough of it to show what the script would
# execute (rc.subr eval()s "$command $rc_flags $command_args") and how reload
# finds the daemon.
RC_SUBR_STAND_IN = r"""
load_rc_config()
{
    if [ -r "$RC_CONF_D/$1" ]; then . "$RC_CONF_D/$1"; fi
}
run_rc_command()
{
    case "$1" in
    start)
        eval "set -- $command $rc_flags $command_args"
        for arg in "$@"; do printf '%s\n' "$arg"; done
        ;;
    enabled)
        eval "printf '%s\n' \"\$$rcvar\""
        ;;
    reload)
        eval "$reload_cmd"
        ;;
    esac
}
kill()
{
    printf 'kill %s\n' "$*"
}
"""


def rc_run(tmp_path, wanted, command, rc_conf=None):
    subr = tmp_path / "rc.subr"
    subr.write_text(RC_SUBR_STAND_IN)
    conf_dir = tmp_path / "rc.conf.d"
    conf_dir.mkdir(exist_ok=True)
    if rc_conf is not None:
        (conf_dir / "zfsync_recv").write_text(rc_conf)
    script = tmp_path / "zfsync_recv"
    script.write_text(service.render_rc_script(wanted).replace(". /etc/rc.subr", ". %s" % subr))
    result = run(["sh", str(script), command], env=dict(os.environ, RC_CONF_D=str(conf_dir)))
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_rc_script_runs_daemon_8_with_the_receiver_arguments_from_rc_conf_d(tmp_path):
    wanted = settings(root="tank/my backup", log_file="/var/log/zfs$had \"quoted\".log", port=3030)
    argv = rc_run(tmp_path, wanted, "start", service.render_rc_conf(wanted, enabled=True))
    assert argv[0] == "/usr/sbin/daemon"
    launcher = argv.index("/usr/local/bin/zfsync_recv")
    assert argv[launcher + 1:] == wanted.daemon_args()
    daemon_options = argv[1:launcher]
    assert daemon_options[daemon_options.index("-P") + 1] == service.RC_SUPERVISOR_PID_FILE
    assert daemon_options[daemon_options.index("-p") + 1] == wanted.pid_file


def test_rc_script_is_disabled_unless_rc_conf_d_enables_it(tmp_path):
    assert rc_run(tmp_path, settings(), "enabled") == ["NO"]
    assert rc_run(tmp_path, settings(), "enabled", service.render_rc_conf(settings(), enabled=True)) == ["YES"]


def test_rc_conf_d_disabled_says_no(tmp_path):
    assert rc_run(tmp_path, settings(), "enabled", service.render_rc_conf(settings(), enabled=False)) == ["NO"]


def test_rc_reload_signals_the_receiver_not_daemon_8(tmp_path):
    pid_file = tmp_path / "zfsync_recv.pid"
    pid_file.write_text("4242\n")
    wanted = settings(pid_file=str(pid_file))
    assert rc_run(tmp_path, wanted, "reload", service.render_rc_conf(wanted, enabled=True)) == ["kill -s USR1 4242"]


def test_rc_conf_d_parses_in_sh_as_sysrc_would_write_it(tmp_path):
    conf = tmp_path / "conf"
    conf.write_text(service.render_rc_conf(settings(), enabled=True))
    result = run(["sh", "-c", '. "$1"; printf "%s|%s\\n" "$zfsync_recv_enable" "$zfsync_recv_args"', "sh", str(conf)])
    assert result.stdout.strip() == "YES|-p 30 -b 50 -t 4 -o /var/log/zfshad.log -d /var/run/zfshad -i 127.0.0.1 tank/backup"


# -- detection --------------------------------------------------------------

def test_detects_rc_on_freebsd(tmp_path):
    assert service.detect_service_manager("FreeBSD", str(tmp_path)) == "rc"


def test_detects_systemd_when_it_runs(tmp_path):
    assert service.detect_service_manager("Linux", str(tmp_path)) == "systemd"


def test_detects_none_without_systemd(tmp_path):
    assert service.detect_service_manager("Linux", str(tmp_path / "missing")) == "none"
    assert service.detect_service_manager("Darwin", str(tmp_path)) == "none"


# -- installing files -------------------------------------------------------

def install(wanted, python=SYSTEM_PYTHON):
    files = service.engine_files(wanted, available_modules()) + service.launcher_files(wanted, python)
    changes = service.plan_files(files)
    service.apply_files(changes)
    return changes


def available_modules():
    here = os.path.dirname(service.__file__)
    return [name for name in engine.ENGINE_MODULES if os.path.exists(os.path.join(here, name + ".py"))]


def test_engine_files_are_the_package_sources_byte_for_byte():
    here = os.path.dirname(service.__file__)
    for item in service.engine_files(settings(), available_modules()):
        with open(os.path.join(here, os.path.basename(item.path)), "rb") as handle:
            assert item.content == handle.read()
        assert item.path.startswith("/usr/local/lib/zfsync/zfsync/")


def test_a_missing_engine_file_is_an_error_that_names_it():
    with pytest.raises(service.ServiceError, match="no_such_module.py"):
        service.engine_files(settings(), ["no_such_module"])


def test_second_install_changes_nothing(tmp_path):
    wanted = settings(tmp_path)
    first = install(wanted)
    assert {c.action for c in first} == {"create"}
    assert install(wanted) == []


def test_install_leaves_no_temporary_files(tmp_path):
    wanted = settings(tmp_path)
    install(wanted)
    leftovers = [n for d in (wanted.bin_dir, wanted.package_dir) for n in os.listdir(d) if n.startswith(".")]
    assert leftovers == []


def test_a_changed_mode_alone_is_a_change(tmp_path):
    wanted = settings(tmp_path)
    install(wanted)
    os.chmod(wanted.launcher, 0o700)
    changes = install(wanted)
    assert [(c.path, c.action) for c in changes] == [(wanted.launcher, "chmod")]
    assert os.stat(wanted.launcher).st_mode & 0o777 == 0o755


def test_a_different_interpreter_rewrites_the_launchers(tmp_path):
    wanted = settings(tmp_path)
    install(wanted)
    changes = install(wanted, python="/usr/bin/env-python-elsewhere")
    assert sorted(os.path.basename(c.path) for c in changes) == ["zfsync_recv", "zfsync_send", "zfsyncron"]
    assert all(c.before is not None and c.before.startswith(b"#!" + SYSTEM_PYTHON.encode()) for c in changes)


def test_launcher_interpreter_must_be_an_absolute_path(tmp_path):
    with pytest.raises(service.ServiceError, match="absolute path"):
        service.launcher_files(settings(tmp_path), "python3")


def test_launchers_run_with_the_system_python_and_import_the_engine_from_the_prefix(tmp_path):
    wanted = settings(tmp_path)
    install(wanted)
    init = os.path.join(wanted.package_dir, "__init__.py")
    with open(init) as handle:
        source = handle.read()
    # Prove where the engine comes from: only the copy under the prefix has this version.
    with open(init, "w") as handle:
        handle.write(source.replace('__version__ = "%s"' % engine.__version__, '__version__ = "9.9.9-prefix"'))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    for program in ("zfsync_recv", "zfsync_send"):
        result = run([os.path.join(wanted.bin_dir, program), "--version"], env=env, cwd=str(tmp_path))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "%s 9.9.9-prefix" % program


def test_installed_version_reads_the_engine_under_the_prefix(tmp_path):
    wanted = settings(tmp_path)
    assert service.installed_version(wanted) is None
    install(wanted)
    assert service.installed_version(wanted) == engine.__version__


def test_stale_engine_files_are_found(tmp_path):
    wanted = settings(tmp_path)
    install(wanted)
    old = os.path.join(wanted.package_dir, "retired.py")
    with open(old, "w") as handle:
        handle.write("# from an older release\n")
    assert service.stale_engine_files(wanted, available_modules()) == [old]


def test_removal_plans_only_existing_files(tmp_path):
    present = tmp_path / "present"
    present.write_text("x")
    changes = service.plan_removal([str(present), str(tmp_path / "absent")])
    assert [(c.path, c.action) for c in changes] == [(str(present), "remove")]
    service.apply_files(changes)
    assert not present.exists()


def test_engine_manifest_names_each_file_with_its_checksum():
    text = service.engine_manifest({"/p/b.py": b"b", "/p/a.py": b"a", "/p/gone.py": None})
    assert [line.split()[0] for line in text.splitlines()] == ["/p/a.py", "/p/b.py"]


def change(path, before, after):
    return service.FileChange(path, before, after, 0o644, 0o644)


def test_restart_is_needed_for_engine_and_unit_changes():
    assert service.restart_needed([change("/usr/local/lib/zfsync/zfsync/zfs.py", b"a", b"b")])
    assert service.restart_needed([change(service.SYSTEMD_UNIT_PATH, b"a", b"b")])
    assert not service.restart_needed([])


def test_flipping_only_the_rc_enable_knob_needs_no_restart():
    yes = service.render_rc_conf(settings(), enabled=True).encode()
    no = service.render_rc_conf(settings(), enabled=False).encode()
    other = service.render_rc_conf(settings(port=31), enabled=False).encode()
    assert not service.restart_needed([change(service.RC_CONF_PATH, yes, no)])
    assert service.restart_needed([change(service.RC_CONF_PATH, yes, other)])


# -- systemd and rc service control (their command lines) -------------------

class RecordingRunner:
    """Answers systemctl/service queries from a table and records every call."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def __call__(self, argv):
        self.calls.append(list(argv))
        rc, out = self.answers.get(tuple(argv[1:]), (0, ""))
        return service.CommandResult(list(argv), rc, out, "")

    def changes(self, queries=("is-active", "is-enabled", "show", "onestatus")):
        return [c for c in self.calls if not any(q in c for q in queries)]


def systemd_answers(active, enabled):
    return {("is-active", service.SERVICE_NAME): (0 if active else 3, "active\n" if active else "inactive\n"),
            ("is-enabled", service.SERVICE_NAME): (0 if enabled else 1, "enabled\n" if enabled else "disabled\n"),
            ("show", "--property=MainPID", "--value", service.SERVICE_NAME): (0, "77\n" if active else "0\n")}


def test_systemd_new_unit_is_reloaded_enabled_and_started():
    runner = RecordingRunner(systemd_answers(active=False, enabled=False))
    plan = service.Systemd(settings(), runner).converge(True, True, restart=True, check_mode=False, unit_changed=True)
    assert plan.actions == ["daemon-reload", "enable", "start"]
    assert runner.changes() == [["systemctl", "daemon-reload"], ["systemctl", "enable", service.SERVICE_NAME],
                                ["systemctl", "start", service.SERVICE_NAME]]


def test_systemd_running_and_unchanged_is_left_alone():
    runner = RecordingRunner(systemd_answers(active=True, enabled=True))
    plan = service.Systemd(settings(), runner).converge(True, True, restart=False, check_mode=False)
    assert plan.actions == [] and runner.changes() == []
    assert (plan.state.running, plan.state.pid, plan.state.enabled) == (True, 77, True)


def test_systemd_check_mode_predicts_a_restart_without_doing_it():
    runner = RecordingRunner(systemd_answers(active=True, enabled=True))
    plan = service.Systemd(settings(), runner).converge(True, True, restart=True, check_mode=True, unit_changed=True)
    assert plan.actions == ["daemon-reload", "restart"]
    assert runner.changes() == []


def test_systemd_failure_reports_the_command_and_its_output():
    answers = systemd_answers(active=False, enabled=True)
    answers[("start", service.SERVICE_NAME)] = (1, "")
    runner = RecordingRunner(answers)
    with pytest.raises(service.ServiceError, match="systemctl start zfsync-recv exited 1"):
        service.Systemd(settings(), runner).converge(True, True, restart=False, check_mode=False)


def test_rc_uses_one_commands_so_enable_does_not_matter():
    runner = RecordingRunner({(service.RC_NAME, "onestatus"): (1, "")})
    plan = service.RcService(settings(), runner).converge(True, False, restart=False, check_mode=False)
    assert plan.actions == ["start"]
    assert ["service", service.RC_NAME, "onestart"] in runner.calls


# -- service_manager: none ---------------------------------------------------

STAND_IN_DAEMON = """#!{python}
import os, signal, sys, time
args = sys.argv[1:]
if "--exit" in open({control!r}).read():
    sys.exit(3)
pid_file = args[args.index("--pid-file") + 1]
if "--ignore-term" in open({control!r}).read():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(pid_file + ".tmp", "w") as handle:
    handle.write("%d\\n" % os.getpid())
os.replace(pid_file + ".tmp", pid_file)
while True:
    time.sleep(0.1)
"""


@pytest.fixture
def detached(tmp_path):
    """Detached control of a stand-in daemon at the launcher's path."""
    wanted = settings(tmp_path, pid_file=str(tmp_path / "recv.pid"), log_file=str(tmp_path / "recv.log"))
    control = tmp_path / "control"
    control.write_text("")
    os.makedirs(wanted.bin_dir)
    with open(wanted.launcher, "w") as handle:
        handle.write(STAND_IN_DAEMON.format(python=sys.executable, control=str(control)))
    os.chmod(wanted.launcher, 0o755)
    daemon = service.Detached(wanted)
    daemon.control = control
    yield daemon
    pid = daemon.running_pid()
    if pid:
        os.kill(pid, signal.SIGKILL)


def test_detached_start_runs_the_daemon_in_its_own_session(detached):
    plan = detached.converge(running=True, enabled=True, restart=False, check_mode=False)
    assert plan.actions == ["start"]
    pid = plan.state.pid
    assert pid == service.read_pid_file(detached.settings.pid_file) == detached.running_pid()
    assert os.getsid(pid) == pid
    assert os.readlink("/proc/%d/fd/0" % pid) == "/dev/null"
    assert os.readlink("/proc/%d/fd/2" % pid) == "/dev/null"


def test_detached_second_converge_changes_nothing(detached):
    detached.converge(running=True, enabled=True, restart=False, check_mode=False)
    plan = detached.converge(running=True, enabled=True, restart=False, check_mode=False)
    assert plan.actions == []


def test_detached_restarts_when_the_command_line_differs(detached):
    first = detached.converge(running=True, enabled=True, restart=False, check_mode=False).state.pid
    changed = service.Detached(service.ReceiverSettings(**dict(vars(detached.settings), port=3131)))
    plan = changed.converge(running=True, enabled=True, restart=False, check_mode=False)
    assert plan.actions == ["restart"]
    assert plan.state.pid != first and not service.process_argv(first)
    assert "3131" in changed.running_argv()


def test_detached_check_mode_predicts_without_starting(detached):
    plan = detached.converge(running=True, enabled=True, restart=False, check_mode=True)
    assert plan.actions == ["start"] and plan.state.running
    assert detached.running_pid() is None


def test_a_stale_pid_file_is_not_a_running_daemon(detached):
    with open(detached.settings.pid_file, "w") as handle:
        handle.write("%d\n" % os.getpid())  # alive, but not the daemon
    assert detached.running_pid() is None
    plan = detached.converge(running=True, enabled=True, restart=False, check_mode=False)
    assert plan.actions == ["start"] and plan.state.pid != os.getpid()


def test_detached_stop_with_sigterm_removes_the_pid_file(detached):
    pid = detached.start()
    assert detached.stop() is True
    assert service.process_argv(pid) is None
    assert not os.path.exists(detached.settings.pid_file)
    assert detached.stop() is False


def test_detached_stop_kills_a_daemon_that_ignores_sigterm(detached, monkeypatch):
    detached.control.write_text("--ignore-term")
    monkeypatch.setattr(service, "STOP_TIMEOUT", 0.5)
    pid = detached.start()
    started = time.monotonic()
    detached.stop()
    assert service.process_argv(pid) is None
    assert time.monotonic() - started < 10


def test_detached_start_failure_says_how_it_exited_and_shows_the_log(detached):
    detached.control.write_text("--exit")
    with open(detached.settings.log_file, "w") as handle:
        handle.write("cannot start: no such pool\n")
    with pytest.raises(service.ServiceError, match="status 3.*no such pool"):
        detached.start()


def test_detached_remove_stops_the_daemon(detached):
    detached.start()
    plan = detached.remove(check_mode=False)
    assert plan.actions == ["stop"] and detached.running_pid() is None


def test_rendered_files_mention_who_manages_them():
    wanted = settings()
    for text in (service.render_systemd_unit(wanted), service.render_rc_script(wanted),
                 service.render_rc_conf(wanted, True),
                 service.render_launcher(wanted, "zfsync_recv", "main_recv", "/usr/bin/python3").decode()):
        assert service.MANAGED_MARK in text


def test_launcher_is_valid_python_for_old_interpreters():
    source = service.render_launcher(settings(), "zfsync_recv", "main_recv", "/usr/bin/python3").decode()
    compile(textwrap.dedent(source), "zfsync_recv", "exec")


def test_detached_daemon_does_not_inherit_the_callers_python_path(detached, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/tmp/ansible_payload.zip")
    monkeypatch.setenv("ANSIBLE_MODULE_ARGS", "{}")
    pid = detached.start()
    with open("/proc/%d/environ" % pid, "rb") as handle:
        names = [entry.split(b"=", 1)[0] for entry in handle.read().split(b"\0") if entry]
    assert b"PYTHONPATH" not in names and b"ANSIBLE_MODULE_ARGS" not in names
    assert b"PATH" in names


def test_allow_and_tls_options_reach_the_daemon_command_line():
    settings = service.ReceiverSettings(root="tank/backup", allow=("10.0.0.0/8", "192.0.2.0/24"),
                                        tls_cert="/etc/zfsync/r.pem", tls_key="/etc/zfsync/r.key",
                                        tls_ca="/etc/zfsync/ca.pem")
    args = settings.daemon_args()
    assert args[-1] == "tank/backup"
    assert args[args.index("--allow") + 1] == "10.0.0.0/8"
    assert args.count("--allow") == 2
    for flag, value in (("--tls-cert", "/etc/zfsync/r.pem"), ("--tls-key", "/etc/zfsync/r.key"),
                        ("--tls-ca", "/etc/zfsync/ca.pem")):
        assert args[args.index(flag) + 1] == value


def test_connection_bounds_and_client_roots_reach_the_daemon_command_line_only_when_set():
    default = service.ReceiverSettings(root="tank/backup").daemon_args()
    assert not [a for a in default if a.startswith(("--max-", "--first-request", "--client-root"))]
    args = service.ReceiverSettings(root="tank/backup", max_connections=128, max_per_client=4,
                                    first_request_timeout=10, client_roots=("cn:web1=web1", "10.0.0.0/24=branch"),
                                    ).daemon_args()
    assert args[-1] == "tank/backup"
    for flag, value in (("--max-connections", "128"), ("--max-per-client", "4"), ("--first-request-timeout", "10")):
        assert args[args.index(flag) + 1] == value
    assert [args[i + 1] for i, a in enumerate(args) if a == "--client-root"] == ["cn:web1=web1", "10.0.0.0/24=branch"]
