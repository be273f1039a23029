"""zfsyncron without ZFS: the command line, HOST arguments, the pid lock."""
import os
import subprocess
import sys
import textwrap
import time

import re

import pytest

from zfsync import cron
from zfsync.cron import AlreadyRunning, Destination, PidLock, default_pid_file, parse_destination
from zfsync.snapshots import Retention

ENGINE = os.path.dirname(os.path.dirname(cron.__file__))


# -- HOST arguments ---------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("backup1", Destination("backup1", 30)),
    ("backup1.example.org:3030", Destination("backup1.example.org", 3030)),
    ("192.0.2.7", Destination("192.0.2.7", 30)),
    ("192.0.2.7:31", Destination("192.0.2.7", 31)),
    ("[2001:db8::7]:31", Destination("2001:db8::7", 31)),
    ("[2001:db8::7]", Destination("2001:db8::7", 30)),
    ("2001:db8::7", Destination("2001:db8::7", 30)),
    ("::1", Destination("::1", 30)),
])
def test_host_arguments(text, expected):
    assert parse_destination(text, 30) == expected


@pytest.mark.parametrize("text", ["", ":30", "host:", "host:0", "host:65536", "host:x", "[::1]:", "[]:30",
                                  "[::1", "-p", "a b"])
def test_bad_host_arguments_are_refused(text):
    with pytest.raises(ValueError, match="HOST"):
        parse_destination(text, 30)


def test_destination_prints_ipv6_in_brackets():
    assert str(Destination("2001:db8::7", 31)) == "[2001:db8::7]:31"
    assert str(Destination("backup1", 30)) == "backup1:30"


# -- command line -------------------------------------------------------------------

def test_original_flags_are_accepted_unchanged():
    args = cron.cron_parser().parse_args(
        "-s 2 -m 5 -h 6 -d 7 -p 31 -t 3 -i 192.0.2.1 -o /tmp/z.log -w 60 pool/src host1 host2:32".split())
    options = cron.options_from_args(args)
    assert options.retention == Retention(secondly=2, minutely=5, hourly=6, daily=7)
    assert options.destinations == [Destination("host1", 31), Destination("host2", 32)]
    assert (options.threads, options.bind_address, options.log_file, options.window) == \
        (3, "192.0.2.1", "/tmp/z.log", 60)
    assert options.verbose  # the original ran zfsync_send -v into its log


def test_defaults_are_the_originals():
    options = cron.options_from_args(cron.cron_parser().parse_args(["pool/src", "host1"]))
    assert options.retention == Retention(1, 4, 3, 2)
    assert options.destinations == [Destination("host1", 30)]
    assert (options.threads, options.window, options.frame_size) == (2, 1, 512)
    assert options.lock_path == "/var/run/zfsyncron.pool%2Fsrc.pid"


def test_long_options():
    args = cron.cron_parser().parse_args(
        ["--secondly", "0", "--minutely", "1", "--hourly", "2", "--daily", "3", "--port", "33", "--threads", "4",
         "--bind", "::1", "--log-file", "/tmp/l", "--window", "5", "--pid-file", "/tmp/p.pid",
         "--frame-size", "256", "pool/src", "h"])
    options = cron.options_from_args(args)
    assert options.retention == Retention(0, 1, 2, 3)
    assert options.destinations == [Destination("h", 33)]
    assert (options.threads, options.bind_address, options.window, options.lock_path, options.frame_size) == \
        (4, "::1", 5, "/tmp/p.pid", 256)


def test_help_is_capital_h_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cron.main_cron(["-H"])
    assert exit_info.value.code == 0
    # argparse prints "-h N, --hourly N" before Python 3.13, "-h, --hourly N" since.
    assert re.search(r"-h( N)?, --hourly N", capsys.readouterr().out)


@pytest.mark.parametrize("argv", [
    [], ["pool/src"], ["-s", "-1", "pool/src", "h"], ["-w", "0", "pool/src", "h"], ["-t", "0", "pool/src", "h"],
    ["-p", "70000", "pool/src", "h"], ["--frame-size", "1024", "pool/src", "h"], ["pool/../etc", "h"],
    ["pool/src@snap", "h"], ["pool/src", "h:0"], ["-x", "pool/src", "h"],
])
def test_usage_errors_exit_1(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cron.main_cron(argv)
    assert exit_info.value.code == 1
    assert "zfsyncron: error:" in capsys.readouterr().err


def test_window_not_met_exits_2_before_touching_anything(tmp_path):
    pid_file = tmp_path / "z.pid"
    code = cron.main_cron(["-w", "10", "--now", "1700000005", "--pid-file", str(pid_file),
                           "-o", str(tmp_path / "z.log"), "no-such-pool/src", "h"])
    assert code == 2
    assert not pid_file.exists()
    assert "| th:main | window not met" in (tmp_path / "z.log").read_text()


def test_unwritable_pid_file_is_a_usage_error(tmp_path):
    code = cron.main_cron(["--pid-file", str(tmp_path / "missing-dir" / "z.pid"), "-o", str(tmp_path / "z.log"),
                           "no-such-pool/src", "h"])
    assert code == 1


def test_default_pid_file_is_per_root_and_unambiguous():
    assert default_pid_file("pool/a_b") != default_pid_file("pool_a/b")
    assert default_pid_file("pool/src", "/run") == "/run/zfsyncron.pool%2Fsrc.pid"


# -- the pid lock -----------------------------------------------------------------------

def holder(path, as_name="zfsyncron-test-holder"):
    """Another process holding the lock, until its stdin closes."""
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, %r)
        from zfsync.cron import PidLock
        with PidLock(%r):
            print("locked", flush=True)
            sys.stdin.read()
    """ % (ENGINE, path))
    proc = subprocess.Popen([sys.executable, "-c", code, as_name], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"locked\n"
    return proc


def wait_for_command(pid, prefix):
    deadline = time.monotonic() + 10
    while not (cron.process_command(pid) or "").startswith(prefix):
        assert time.monotonic() < deadline, "process %d never became %s" % (pid, prefix)
        time.sleep(0.02)


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_lock_writes_our_pid_and_release_removes_the_file(tmp_path):
    path = str(tmp_path / "z.pid")
    with PidLock(path):
        assert open(path).read() == "%d\n" % os.getpid()
    assert not os.path.exists(path)


def test_lock_held_by_a_live_process_refuses_with_its_pid(tmp_path):
    path = str(tmp_path / "z.pid")
    proc = holder(path)
    try:
        with pytest.raises(AlreadyRunning) as error:
            PidLock(path).acquire()
        assert error.value.pid == proc.pid
    finally:
        proc.stdin.close()
        proc.wait(10)
    assert not os.path.exists(path)


def test_lock_of_a_killed_holder_is_taken_over(tmp_path):
    path = str(tmp_path / "z.pid")
    proc = holder(path)
    proc.kill()
    proc.wait(10)
    assert os.path.exists(path)  # left behind
    lock = PidLock(path)
    with lock:
        assert lock.replaced_pid == proc.pid
        assert open(path).read() == "%d\n" % os.getpid()


def test_stale_pid_file_of_a_dead_pid_is_taken_over(tmp_path):
    path = tmp_path / "z.pid"
    pid = dead_pid()
    path.write_text("%d\n" % pid)
    lock = PidLock(str(path))
    with lock:
        assert lock.replaced_pid == pid


def test_stale_pid_file_of_a_reused_pid_is_taken_over(tmp_path):
    path = tmp_path / "z.pid"
    other = subprocess.Popen(["sleep", "30"])
    try:
        path.write_text("%d\n" % other.pid)
        with PidLock(str(path)) as lock:
            assert lock.replaced_pid == other.pid
    finally:
        other.kill()
        other.wait()


def test_pid_file_of_a_running_original_zfsyncron_sh_is_respected(tmp_path):
    # The original writes its pid and never flocks.
    path = tmp_path / "z.pid"
    original = subprocess.Popen(["bash", "-c", "exec -a zfsyncron.sh sleep 30"])
    try:
        wait_for_command(original.pid, "zfsyncron.sh")
        path.write_text("%d\n" % original.pid)
        with pytest.raises(AlreadyRunning) as error:
            PidLock(str(path)).acquire()
        assert error.value.pid == original.pid
        assert path.read_text() == "%d\n" % original.pid
    finally:
        original.kill()
        original.wait()


@pytest.mark.parametrize("content", ["", "garbage\n", "0\n", "-5\n"])
def test_pid_file_without_a_usable_pid_is_taken_over(tmp_path, content):
    path = tmp_path / "z.pid"
    path.write_text(content)
    with PidLock(str(path)):
        assert path.read_text() == "%d\n" % os.getpid()


def test_process_command_of_a_gone_process_is_empty():
    assert cron.process_command(dead_pid()) == ""
    assert not cron.is_zfsyncron(dead_pid())


def test_tls_options_reach_the_sync_options():
    args = cron.cron_parser().parse_args(["--tls-cert", "/c.pem", "--tls-key", "/k.pem", "--tls-ca", "/ca.pem",
                                          "pool/src", "host"])
    options = cron.options_from_args(args)
    assert (options.tls_cert, options.tls_key, options.tls_ca) == ("/c.pem", "/k.pem", "/ca.pem")


def test_tls_cert_without_ca_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        cron.main_cron(["--tls-cert", "/c.pem", "pool/src", "host"])
    assert exit_info.value.code == 1
