"""zfsync_send -> zfsync_recv on real pools: the replication behaviours."""
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


def test_full_sync_replicates_tree_with_identical_contents(sender_pool, daemon, tmp_path):
    root = zfstest.make_tree(sender_pool, "local")
    zfs("snapshot", "-r", root + "@s1")

    proc = zfstest.send(root, daemon.port, "-v", "-t", "3", "-o", str(tmp_path / "send.log"))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"5 datasets, \d+ bytes, [\d.]+ s; new=5 full=0 incremental=0 uptodate=0 skipped=0 failed=0",
                     proc.stdout), proc.stdout
    zfstest.assert_same_tree(root, daemon.root, str(tmp_path))
    assert zfstest.tree(daemon.root + ".zfsyncbuffer") == {"": []}, "buffer not emptied by cleanbuffer"


def test_received_datasets_are_never_mounted(sender_pool, daemon, tmp_path):
    root = zfstest.make_tree(sender_pool, "local", children=("/a",))
    zfs("set", "mountpoint=/%s-elsewhere" % sender_pool, root)  # a local mountpoint travels with -p
    zfs("snapshot", "-r", root + "@s1")

    assert zfstest.send(root, daemon.port).returncode == 0
    for suffix in ("", "/a"):
        values = zfs("get", "-H", "-o", "value", "canmount,mounted", daemon.root + suffix).split()
        assert values == ["noauto", "no"], (suffix, values)


def test_incremental_sends_only_changes_and_prunes_exact_names(sender_pool, daemon, tmp_path):
    root = zfstest.make_tree(sender_pool, "local", children=("/a",))
    for snap in ("s1", "s10"):
        zfs("snapshot", "-r", "%s@%s" % (root, snap))
    assert zfstest.send(root, daemon.port).returncode == 0
    zfstest.write_file(root + "/a", "more.bin", 256)
    zfs("snapshot", "-r", root + "@s11")
    zfs("destroy", "-r", root + "@s1")

    proc = zfstest.send(root, daemon.port)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "incremental=2" in proc.stdout
    # The original pruned by substring: "@s1" survived beside "@s10".
    assert zfstest.tree(daemon.root) == {"": ["s10", "s11"], "/a": ["s10", "s11"]}
    zfstest.assert_same_tree(root, daemon.root, str(tmp_path))


def test_second_run_without_new_snapshot_is_uptodate_and_does_not_hang(sender_pool, daemon):
    root = zfstest.make_tree(sender_pool, "local", children=("/a",))
    zfs("snapshot", "-r", root + "@s1")
    assert zfstest.send(root, daemon.port).returncode == 0

    started = time.monotonic()
    proc = zfstest.send(root, daemon.port, timeout=60)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "uptodate=2" in proc.stdout and " 0 bytes" in proc.stdout
    assert time.monotonic() - started < 30


def test_prune_happens_even_when_newest_is_already_there(sender_pool, daemon):
    root = zfstest.make_tree(sender_pool, "local", children=())
    zfs("snapshot", root + "@s1")
    zfs("snapshot", root + "@s2")
    assert zfstest.send(root, daemon.port).returncode == 0
    zfs("destroy", root + "@s1")

    assert zfstest.send(root, daemon.port).returncode == 0
    assert zfstest.tree(daemon.root) == {"": ["s2"]}


def test_new_dataset_with_several_snapshots_arrives_with_all_of_them(sender_pool, daemon, tmp_path):
    root = zfstest.make_tree(sender_pool, "local", children=())
    zfs("snapshot", root + "@s1")
    assert zfstest.send(root, daemon.port).returncode == 0
    zfs("create", root + "/new")
    zfstest.write_file(root + "/new", "x.bin", 64)
    for snap in ("s4", "s5"):
        zfs("snapshot", "%s/new@%s" % (root, snap))

    assert zfstest.send(root, daemon.port).returncode == 0
    assert zfstest.tree(daemon.root)["/new"] == ["s4", "s5"]


def test_child_arriving_before_parent_goes_through_the_buffer(sender_pool, daemon, tmp_path):
    """Deterministic: the child's sync is sent by hand before the root has
    ever been received; it must wait in the buffer and be placed later."""
    root = zfstest.make_tree(sender_pool, "local", children=("/a", "/a/b"))
    zfs("snapshot", "-r", root + "@s1")
    with zfstest.raw_connection(daemon.port, timeout=60) as sock:
        assert zfstest.exchange(sock, "@s1:/a/b:sync") == "0:NEW"
        sock.settimeout(None)
        subprocess.run(["zfs", "send", "-p", root + "/a/b@s1"], stdout=sock.fileno(), check=True, timeout=60)
        sock.settimeout(60)
        assert zfstest.recv_exact(sock, 512).rstrip(b"\0") == b"0:OK"
        assert zfstest.exchange(sock, ":cleanbuffer") == "1:cleanbuffer: 1 entries could not be placed"
    assert zfstest.tree(daemon.root + ".zfsyncbuffer") == {"": [], "/2F612F62": ["s1"]}
    assert not zfstest.run(["zfs", "list", daemon.root], check=False).returncode == 0

    proc = zfstest.send(root, daemon.port, "-t", "1")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The buffered copy was a valid replica: it was placed, not re-sent.
    assert "uptodate=1" in proc.stdout
    assert zfstest.tree(daemon.root + ".zfsyncbuffer") == {"": []}
    zfstest.assert_same_tree(root, daemon.root, str(tmp_path))


def test_full_replaces_a_diverged_copy_and_keeps_its_children(sender_pool, daemon, tmp_path):
    root = zfstest.make_tree(sender_pool, "local", children=("/a", "/a/b"))
    zfs("snapshot", "-r", root + "@s1")
    assert zfstest.send(root, daemon.port).returncode == 0
    # /a diverges: the sender's /a loses every snapshot the receiver knows.
    zfs("destroy", root + "/a@s1")
    zfstest.write_file(root + "/a", "new.bin", 32)
    zfs("snapshot", root + "/a@fresh")

    proc = zfstest.send(root, daemon.port, "-t", "2")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "full=1" in proc.stdout
    assert zfstest.tree(daemon.root) == {"": ["s1"], "/a": ["fresh"], "/a/b": ["s1"]}
    zfstest.assert_same_tree(root, daemon.root, str(tmp_path))
    assert zfstest.tree(daemon.root + ".zfsyncbuffer") == {"": []}


def test_no_full_option_refuses_to_replace_a_diverged_copy(sender_pool, daemon, tmp_path):
    daemon.stop()
    daemon.start("--no-full")
    root = zfstest.make_tree(sender_pool, "local", children=())
    zfs("snapshot", root + "@s1")
    assert zfstest.send(root, daemon.port).returncode == 0
    zfs("destroy", root + "@s1")
    zfs("snapshot", root + "@other")

    proc = zfstest.send(root, daemon.port)

    assert proc.returncode == 1
    assert "FULL refused" in proc.stderr
    assert zfstest.tree(daemon.root) == {"": ["s1"]}


def test_256_byte_frames_are_detected_and_answered_in_kind(sender_pool, daemon, tmp_path):
    root = zfstest.make_tree(sender_pool, "local", children=("/a",))
    zfs("snapshot", "-r", root + "@s1")
    zfs("snapshot", "-r", root + "@s2")
    with zfstest.raw_connection(daemon.port) as sock:
        assert zfstest.exchange(sock, ":xhello", size=256).startswith("0:zfsync ")
        assert zfstest.exchange(sock, ":xhello", size=256).startswith("0:zfsync ")

    proc = zfstest.send(root, daemon.port, "--frame-size", "256")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A 256-byte receiver expects one stream for NEW: the newest snapshot.
    assert zfstest.tree(daemon.root) == {"": ["s2"], "/a": ["s2"]}
    zfstest.write_file(root, "later.bin", 16)
    zfs("snapshot", "-r", root + "@s3")
    assert zfstest.send(root, daemon.port, "--frame-size", "256").returncode == 0
    assert zfstest.tree(daemon.root) == {"": ["s2", "s3"], "/a": ["s2", "s3"]}


def test_300_snapshots_travel_through_the_extension_and_prune_from_the_full_list(sender_pool, daemon):
    root = zfstest.make_tree(sender_pool, "local", children=(), data_kib=4)
    names = ["snap-%03d" % n for n in range(300)]
    for name in names:
        zfs("snapshot", "%s@%s" % (root, name))

    proc = zfstest.send(root, daemon.port)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert zfstest.tree(daemon.root)[""] == names
    for name in names[:150]:
        zfs("destroy", "%s@%s" % (root, name))
    zfs("snapshot", root + "@last")
    assert zfstest.send(root, daemon.port).returncode == 0
    assert zfstest.tree(daemon.root)[""] == names[150:] + ["last"]


def test_snapshot_names_with_colon_are_left_out_and_reported(sender_pool, daemon):
    root = zfstest.make_tree(sender_pool, "local", children=())
    zfs("snapshot", root + "@plain")
    zfs("snapshot", root + "@auto:2026")

    proc = zfstest.send(root, daemon.port, "--json")

    assert proc.returncode == 0, proc.stderr
    assert "auto:2026" in proc.stdout and "cannot be listed on the wire" in proc.stdout
    assert zfstest.tree(daemon.root)[""] == ["plain"]


def test_dataset_without_snapshots_is_skipped_cleanly(sender_pool, daemon):
    root = zfstest.make_tree(sender_pool, "local", children=("/empty",))
    zfs("snapshot", root + "@s1")

    proc = zfstest.send(root, daemon.port, "-t", "1", timeout=60)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "new=1" in proc.stdout and "skipped=1" in proc.stdout


def test_sender_killed_mid_stream_leaves_receiver_healthy_and_next_run_converges(sender_pool, daemon, tmp_path):
    root = zfstest.make_tree(sender_pool, "local", children=("/big",), data_kib=16)
    zfs("snapshot", "-r", root + "@s1")
    assert zfstest.send(root, daemon.port).returncode == 0
    zfstest.write_file(root + "/big", "large.bin", 8 * 1024)
    zfs("snapshot", "-r", root + "@s2")
    proxy = zfstest.Proxy(daemon.port, rate=2 * 1024 * 1024)  # the stream takes ~4 s
    try:
        sender = subprocess.Popen([sys.executable, os.path.join(zfstest.BIN, "zfsync_send"), "-p", str(proxy.port),
                                   "-t", "1", root, "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proxy.wait_forwarded(2 * 1024 * 1024)
        sender.send_signal(signal.SIGKILL)
        sender.wait(30)
        # zfs send was the sender's child; it dies writing to the dead socket.
        subprocess.run(["pkill", "-KILL", "-f", "zfs send .*%s/big" % root], check=False)
    finally:
        proxy.close()

    assert daemon.alive
    wait_until(lambda: "zfs_receive(incr)" in daemon.log() or "connection lost" in daemon.log(), 30)
    assert zfstest.tree(daemon.root)["/big"] == ["s1"], "the old copy must stay intact"
    proc = zfstest.send(root, daemon.port)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    zfstest.assert_same_tree(root, daemon.root, str(tmp_path))


def wait_until(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %s s" % timeout)
        time.sleep(0.05)


def test_receiver_restarted_between_runs_continues_incrementally(sender_pool, daemon, tmp_path):
    root = zfstest.make_tree(sender_pool, "local", children=("/a",))
    zfs("snapshot", "-r", root + "@s1")
    assert zfstest.send(root, daemon.port).returncode == 0
    assert daemon.stop() == 0
    daemon.start()  # SO_REUSEADDR: binding again right away works
    zfstest.write_file(root + "/a", "x.bin", 16)
    zfs("snapshot", "-r", root + "@s2")

    proc = zfstest.send(root, daemon.port)

    assert proc.returncode == 0 and "incremental=2" in proc.stdout, proc.stdout + proc.stderr
    zfstest.assert_same_tree(root, daemon.root, str(tmp_path))


def test_sigterm_during_a_receive_stops_cleanly_and_loses_nothing(sender_pool, daemon, tmp_path):
    root = zfstest.make_tree(sender_pool, "local", children=("/big",), data_kib=16)
    zfs("snapshot", "-r", root + "@s1")
    assert zfstest.send(root, daemon.port).returncode == 0
    daemon.stop()
    daemon.start("--stop-timeout", "1")
    zfstest.write_file(root + "/big", "large.bin", 8 * 1024)
    zfs("snapshot", "-r", root + "@s2")
    proxy = zfstest.Proxy(daemon.port, rate=2 * 1024 * 1024)
    try:
        sender = subprocess.Popen([sys.executable, os.path.join(zfstest.BIN, "zfsync_send"), "-p", str(proxy.port),
                                   "-t", "1", root, "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proxy.wait_forwarded(2 * 1024 * 1024)

        assert daemon.stop(signal.SIGTERM, timeout=30) == 0
        sender.wait(60)
    finally:
        proxy.close()
    assert sender.returncode == 1
    assert zfstest.tree(daemon.root)["/big"] == ["s1"]
    daemon.start()
    assert zfstest.send(root, daemon.port).returncode == 0
    zfstest.assert_same_tree(root, daemon.root, str(tmp_path))


def test_error_flags_are_flat_files_for_nested_datasets(sender_pool, daemon):
    root = zfstest.make_tree(sender_pool, "local", children=("/a", "/a/b"))
    zfs("snapshot", "-r", root + "@s1")
    assert zfstest.send(root, daemon.port).returncode == 0
    # /a/b diverges: the sender's /a/b and the receiver's share no snapshot,
    # and this receiver refuses FULL.
    zfs("snapshot", daemon.root + "/a/b@local")
    zfs("destroy", daemon.root + "/a/b@s1")
    zfs("snapshot", "-r", root + "@s2")
    zfs("destroy", root + "/a/b@s1")
    daemon.stop()
    daemon.start("--no-full")

    proc = zfstest.send(root, daemon.port)

    assert proc.returncode == 1
    assert os.listdir(daemon.flag_dir) == ["%2Fa%2Fb.sync"], proc.stdout + proc.stderr
    assert os.readlink(os.path.join(daemon.flag_dir, "%2Fa%2Fb.sync")) == "ERROR"
    daemon.stop()
    daemon.start()
    assert zfstest.send(root, daemon.port).returncode == 0
    assert os.listdir(daemon.flag_dir) == []


def test_logs_have_the_original_formats_and_sigusr1_rotates_worker_logs(sender_pool, daemon):
    root = zfstest.make_tree(sender_pool, "local", children=())
    zfs("snapshot", root + "@s1")
    assert zfstest.send(root, daemon.port).returncode == 0
    stamp = r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:\d{6}"
    assert re.search(r"^%s \| th:\d+ \| " % stamp, daemon.log(), re.M)
    workers = [n for n in os.listdir(daemon.workdir) if re.match(r"zfshad\.th\d+\.log$", n)]
    assert workers
    with open(os.path.join(daemon.workdir, workers[0])) as handle:
        assert re.search(r"^%s \| fd:\d+ \| \([^:]*:\w+\) " % stamp, handle.read(), re.M)

    daemon.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: "SIGUSR1" in daemon.log(), 10)
    rotated = [n for n in os.listdir(daemon.workdir) if re.match(r"zfshad\.th\d+\.log\.\d{8}-\d{6}$", n)]
    assert rotated

    daemon.proc.send_signal(signal.SIGUSR2)
    wait_until(lambda: "respawning workers" in daemon.log(), 10)
    zfs("snapshot", root + "@s2")
    assert zfstest.send(root, daemon.port).returncode == 0


def test_receiver_host_may_be_a_name_or_ipv6(sender_pool, receiver_pool, tmp_path):
    zfs("create", receiver_pool + "/recv")
    root = zfstest.make_tree(sender_pool, "local", children=())
    zfs("snapshot", root + "@s1")
    port = zfstest.free_port()
    workdir = tmp_path / "v6"
    workdir.mkdir()
    argv = [sys.executable, os.path.join(zfstest.BIN, "zfsync_recv"), "-p", str(port), "-o", str(workdir / "log"),
            "-d", str(workdir / "flags"), "-i", "::1", receiver_pool + "/recv/v6"]
    proc = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 20
        while socket.socket(socket.AF_INET6).connect_ex(("::1", port)) != 0:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        for host in ("::1", "localhost"):
            if host == "localhost" and not any(a[0] == socket.AF_INET6 for a in socket.getaddrinfo("localhost", port)):
                continue
            sent = zfstest.run([sys.executable, os.path.join(zfstest.BIN, "zfsync_send"), "-p", str(port),
                                root, host], check=False)
            assert sent.returncode == 0, sent.stdout + sent.stderr
        assert zfstest.tree(receiver_pool + "/recv/v6") == {"": ["s1"]}
    finally:
        proc.terminate()
        proc.wait(30)


def test_missing_zfs_binary_is_a_clear_error():
    from zfsync.zfs import Zfs, ZfsError

    with pytest.raises(ZfsError, match="zfs command not found"):
        Zfs("/nonexistent/zfs").filesystems("tank")


def test_unreachable_receiver_fails_fast_with_a_clear_message(sender_pool):
    root = zfstest.make_tree(sender_pool, "local", children=())
    zfs("snapshot", root + "@s1")

    proc = zfstest.send(root, zfstest.free_port(), "--connect-timeout", "5", timeout=60)

    assert proc.returncode == 1
    assert "cannot connect to 127.0.0.1 port" in proc.stdout + proc.stderr


def test_cleanbuffer_finishes_a_full_swap_that_stopped_before_the_children_moved(sender_pool, daemon, tmp_path):
    root = zfstest.make_tree(sender_pool, "local", children=("/a", "/a/b"))
    zfs("snapshot", "-r", root + "@s1")
    assert zfstest.send(root, daemon.port).returncode == 0
    # The state a receiver killed in the middle of a FULL swap leaves: the
    # old /a (with /a/b under it) set aside, the new /a already in place.
    old = daemon.root + ".zfsyncbuffer/2F61.old"
    zfstest.run(["zfs", "unmount", daemon.root + "/a/b"], check=False)
    zfs("rename", daemon.root + "/a", old)
    subprocess.run("zfs send -p %s/a@s1 | zfs receive %s/a" % (root, daemon.root), shell=True, check=True, timeout=60)

    with zfstest.raw_connection(daemon.port, timeout=60) as sock:
        assert zfstest.exchange(sock, ":cleanbuffer") == "0:OK"

    assert zfstest.tree(daemon.root + ".zfsyncbuffer") == {"": []}
    assert zfstest.tree(daemon.root) == {"": ["s1"], "/a": ["s1"], "/a/b": ["s1"]}
    zfstest.assert_same_tree(root, daemon.root, str(tmp_path))


def test_a_stalled_stream_is_bounded_by_inactivity_not_total_time(sender_pool, daemon):
    daemon.stop()
    daemon.start("--stream-idle-timeout", "3")
    root = zfstest.make_tree(sender_pool, "local", children=(), data_kib=512)
    zfs("snapshot", root + "@s1")
    stream = subprocess.run(["zfs", "send", "-p", root + "@s1"], stdout=subprocess.PIPE, check=True, timeout=60).stdout
    with zfstest.raw_connection(daemon.port, timeout=60) as sock:
        assert zfstest.exchange(sock, "@s1::sync") == "0:NEW"
        sock.sendall(stream[:len(stream) // 2])  # then silence, connection open
        started = time.monotonic()
        reply = zfstest.recv_exact(sock, 512).split(b"\0", 1)[0].decode()
    assert reply.startswith("1:zfs_receive(new)"), reply
    assert 2 < time.monotonic() - started < 30
    assert zfstest.run(["zfs", "list", daemon.root], check=False).returncode != 0
