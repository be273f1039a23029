"""bin/zfsyncron on real pools with a real zfsync_recv: snapshot classes and
retention over a simulated day, the pid lock, the window, exit codes.

Self-contained pools (names starting ``h3``) until the shared fixtures in
conftest.py take over; zfstest supplies the ZFS service and the daemon."""
import calendar
import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import zfstest
from zfstest import zfs

CRON = os.path.join(zfstest.BIN, "zfsyncron")
_counter = itertools.count()


def epoch(text):
    """'2024-01-15 12:00:07' UTC -> epoch seconds (runs use TZ=UTC)."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S"))


@pytest.fixture
def pools(tmp_path):
    zfstest.ensure_zfs()
    created = []

    def create(tag):
        name = "h3%s%d%d" % (tag, os.getpid() % 100000, next(_counter))
        image = tmp_path / (name + ".img")
        with open(image, "wb") as handle:
            handle.truncate(192 << 20)
        zfstest.run(["zpool", "create", "-m", "/" + name, name, str(image)])
        created.append(name)
        return name

    yield create
    for name in reversed(created):
        zfstest.destroy_retrying(["zpool", "destroy", "-f", name])


@pytest.fixture
def root(pools):
    """A sender tree: POOL/src with /a and /a/b."""
    pool = pools("s")
    base = pool + "/src"
    zfs("create", "-p", base + "/a/b")
    return base


@pytest.fixture
def small_root(pools):
    """POOL/src with /a: enough to see retention act recursively, and quick
    to sync 76 times."""
    pool = pools("s")
    zfs("create", "-p", pool + "/src/a")
    return pool + "/src"


@pytest.fixture
def receiver(pools, tmp_path):
    pool = pools("r")
    zfs("create", pool + "/recv")
    workdir = tmp_path / "recv"
    workdir.mkdir()
    daemon = zfstest.Daemon(pool + "/recv/remote", zfstest.free_port(), str(workdir)).start()
    yield daemon
    if daemon.alive:
        daemon.stop()


@pytest.fixture
def pid_file(tmp_path):
    return str(tmp_path / "zfsyncron.pid")


def zfsyncron_argv(root, hosts, pid_file, *options, now=None):
    argv = [sys.executable, CRON, "--pid-file", pid_file] + list(options)
    if now is not None:
        argv += ["--now", str(now)]
    return argv + [root] + list(hosts)


def zfsyncron(root, hosts, pid_file, *options, now=None, timeout=120):
    env = dict(os.environ, TZ="UTC", LC_ALL="C")
    return subprocess.run(zfsyncron_argv(root, hosts, pid_file, *options, now=now), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=timeout, check=False)


def host(daemon):
    return "127.0.0.1:%d" % daemon.port


def snapshots(dataset):
    return zfstest.tree(dataset)[""]


def dead_port():
    return "127.0.0.1:%d" % zfstest.free_port()


@contextlib.contextmanager
def silent_receiver():
    """Accepts connections (through the backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield "127.0.0.1:%d" % sock.getsockname()[1]
    finally:
        sock.close()


def wait_for_pid_file(path, pid, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if open(path).read().strip() == str(pid):
                return
        assert time.monotonic() < deadline, "pid %d never wrote %s" % (pid, path)
        time.sleep(0.05)


def zfs_fuse_busy(proc):
    """zfs-fuse sometimes refuses a receive right after the previous one
    ("dataset is busy", its remount racing); zfsyncron then rightly exits 3
    and the next run catches up. Not a retention matter: tolerated here."""
    return (proc.returncode == 3 and zfstest.ensure_zfs() == "zfs-fuse"
            and "dataset is busy" in proc.stdout)


def converge(root, receiver, attempts=3):
    """Bring the receiver up to date after tolerated busy failures."""
    for _attempt in range(attempts):
        proc = zfstest.send(root, receiver.port)
        if proc.returncode == 0:
            return
        assert "dataset is busy" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        time.sleep(1)
    raise AssertionError("receiver did not catch up: %s" % (proc.stdout + proc.stderr))


# -- a simulated day ----------------------------------------------------------------

def test_a_day_of_runs_keeps_the_newest_of_each_class_on_sender_and_receiver(small_root, receiver, pid_file):
    root = small_root
    day = [epoch("2024-01-15 00:00:07") + k * 1200 for k in range(72)]  # every 20 minutes
    seconds_apart = [epoch("2024-01-15 12:00:09"), epoch("2024-01-15 12:00:11")]
    next_day = [epoch("2024-01-16 00:00:07"), epoch("2024-01-16 00:00:08")]
    runs = sorted(day + seconds_apart) + next_day

    for now in runs:
        proc = zfsyncron(root, [host(receiver)], pid_file, now=now)
        assert proc.returncode == 0 or zfs_fuse_busy(proc), proc.stdout
        if now == seconds_apart[-1]:
            assert [s for s in snapshots(root) if s.endswith("_S")] == ["240115-120011_S"]

    expected = [
        "240115-000007_D",
        "240115-210007_H", "240115-220007_H",
        "240115-222007_M", "240115-224007_M", "240115-230007_H",
        "240115-232007_M", "240115-234007_M",
        "240116-000007_D", "240116-000008_S",
    ]
    assert zfstest.tree(root) == {"": expected, "/a": expected}
    converge(root, receiver)
    assert zfstest.tree(receiver.root) == zfstest.tree(root)
    assert not os.path.exists(pid_file)


def test_retention_counts_come_from_the_original_flags(root, receiver, pid_file):
    for now in ("2024-01-15 10:00:00", "2024-01-16 10:00:00", "2024-01-17 10:00:00", "2024-01-17 10:00:30",
                "2024-01-17 10:00:40", "2024-01-17 10:00:50"):
        proc = zfsyncron(root, [host(receiver)], pid_file, "-d", "1", "-s", "2", now=epoch(now))
        assert proc.returncode == 0, proc.stdout

    assert snapshots(root) == ["240117-100000_D", "240117-100040_S", "240117-100050_S"]
    assert snapshots(receiver.root) == snapshots(root)


def test_log_file_has_main_log_lines(root, receiver, pid_file, tmp_path):
    log = tmp_path / "zfsyncron.log"
    proc = zfsyncron(root, [host(receiver)], pid_file, "-o", str(log), now=epoch("2024-01-15 10:00:00"))

    assert proc.returncode == 0, proc.stdout
    lines = log.read_text().splitlines()
    line_re = re.compile(r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:\d{6} \| th:\w+ \| .+$")
    assert lines and all(line_re.match(line) for line in lines), lines
    assert any("| th:main | snapshot done (%s@240115-100000_D)" % root in line for line in lines)
    assert proc.stdout == ""  # with -o, a cron job stays silent


# -- exit codes ---------------------------------------------------------------------

def test_window_not_met_exits_2_and_takes_no_snapshot(root, receiver, pid_file):
    proc = zfsyncron(root, [host(receiver)], pid_file, "-w", "60", now=epoch("2024-01-15 10:00:30"))

    assert proc.returncode == 2, proc.stdout
    assert "window not met" in proc.stdout
    assert snapshots(root) == []


def test_window_met_runs(root, receiver, pid_file):
    proc = zfsyncron(root, [host(receiver)], pid_file, "-w", "60", now=epoch("2024-01-15 10:01:00"))

    assert proc.returncode == 0, proc.stdout
    assert snapshots(root) == ["240115-100100_D"]


def test_send_to_a_dead_port_exits_3_and_keeps_the_snapshot(root, pid_file):
    proc = zfsyncron(root, [dead_port()], pid_file, now=epoch("2024-01-15 10:00:00"))

    assert proc.returncode == 3, proc.stdout
    assert zfstest.tree(root) == {"": ["240115-100000_D"], "/a": ["240115-100000_D"], "/a/b": ["240115-100000_D"]}
    assert not os.path.exists(pid_file)


def test_a_dead_receiver_does_not_keep_the_next_one_from_its_sync(root, receiver, pid_file):
    proc = zfsyncron(root, [dead_port(), host(receiver)], pid_file, now=epoch("2024-01-15 10:00:00"))

    assert proc.returncode == 3, proc.stdout
    assert zfstest.tree(receiver.root) == zfstest.tree(root)


def test_missing_root_exits_2(pools, receiver, pid_file):
    pool = pools("s")
    proc = zfsyncron(pool + "/nothing", [host(receiver)], pid_file)

    assert proc.returncode == 2, proc.stdout
    assert "does not exist" in proc.stdout


def test_failed_snapshot_exits_2_and_sends_nothing(root, receiver, pid_file):
    zfs("snapshot", root + "/a@240115-100000_D")  # in the way of the recursive snapshot
    proc = zfsyncron(root, [host(receiver)], pid_file, now=epoch("2024-01-15 10:00:00"))

    assert proc.returncode == 2, proc.stdout
    assert "snapshot failed" in proc.stdout
    assert not zfs("list", "-H", "-o", "name", receiver.root, check=False)  # nothing was sent


# -- the pid lock -------------------------------------------------------------------

def test_second_run_while_one_holds_the_lock_exits_4_and_a_killed_run_is_taken_over(root, receiver, pid_file):
    with silent_receiver() as silent:
        first = subprocess.Popen(zfsyncron_argv(root, [silent], pid_file, now=epoch("2024-01-15 10:00:00")),
                                 env=dict(os.environ, TZ="UTC"), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            wait_for_pid_file(pid_file, first.pid)

            second = zfsyncron(root, [host(receiver)], pid_file, now=epoch("2024-01-15 10:05:00"))

            assert second.returncode == 4, second.stdout
            assert "already running: pid %d" % first.pid in second.stdout
            assert snapshots(root) == ["240115-100000_D"]  # the second took none
        finally:
            first.kill()
            first.wait(10)

    assert open(pid_file).read().strip() == str(first.pid)  # left behind by the killed run
    third = zfsyncron(root, [host(receiver)], pid_file, now=epoch("2024-01-15 10:10:00"))

    assert third.returncode == 0, third.stdout
    assert "took over the stale pid file" in third.stdout
    assert snapshots(receiver.root) == ["240115-100000_D", "240115-101000_M"]
    assert not os.path.exists(pid_file)


def test_sigterm_releases_the_pid_file(root, pid_file):
    with silent_receiver() as silent:
        run = subprocess.Popen(zfsyncron_argv(root, [silent], pid_file), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        wait_for_pid_file(pid_file, run.pid)
        time.sleep(0.5)  # into the sync
        run.send_signal(signal.SIGTERM)
        assert run.wait(30) == 128 + signal.SIGTERM
    assert not os.path.exists(pid_file)


def test_stale_pid_file_of_a_dead_pid_is_taken_over(root, receiver, pid_file):
    gone = subprocess.Popen(["true"])
    gone.wait()
    with open(pid_file, "w") as handle:
        handle.write("%d\n" % gone.pid)

    proc = zfsyncron(root, [host(receiver)], pid_file, now=epoch("2024-01-15 10:00:00"))

    assert proc.returncode == 0, proc.stdout
    assert zfstest.tree(receiver.root) == zfstest.tree(root)
