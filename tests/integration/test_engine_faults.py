"""Faults on real pools: after each, the receiver keeps serving, no dataset
is left unusable or half-renamed, and the next normal run converges to
exactly the sender's state. README.md's fault table is made of these."""
import os
import signal
import subprocess
import sys
import threading

import zfstest
from zfstest import zfs


def start_sender(root, port, *args):
    return subprocess.Popen([sys.executable, os.path.join(zfstest.BIN, "zfsync_send"), "-p", str(port)]
                            + list(args) + [root, "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)


def grown_tree(sender_pool, daemon, mib=8):
    """A synced tree whose /big then gets a large change and @s2."""
    root = zfstest.make_tree(sender_pool, "local", children=("/a", "/big"), data_kib=16)
    zfs("snapshot", "-r", root + "@s1")
    assert zfstest.send(root, daemon.port).returncode == 0
    zfstest.write_file(root + "/big", "large.bin", mib * 1024)
    zfs("snapshot", "-r", root + "@s2")
    return root


def assert_converges(root, daemon, tmp_path):
    proc = zfstest.send(root, daemon.port)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    zfstest.assert_same_tree(root, daemon.root, str(tmp_path))
    assert zfstest.tree(daemon.root + ".zfsyncbuffer") == {"": []}


def test_receiver_killed_mid_receive(sender_pool, daemon, tmp_path):
    root = grown_tree(sender_pool, daemon)
    proxy = zfstest.Proxy(daemon.port, rate=2 * 1024 * 1024)
    try:
        sender = start_sender(root, proxy.port, "-t", "1")
        proxy.wait_forwarded(2 * 1024 * 1024)
        daemon.stop(signal.SIGKILL)
        subprocess.run(["pkill", "-KILL", "-f", "zfs receive .*%s" % daemon.root], check=False)
        sender.communicate(timeout=120)
    finally:
        proxy.close()
    assert sender.returncode == 1
    # The orphaned zfs receive may still have completed the stream; either
    # way the copy is a complete snapshot, never a half one.
    assert zfstest.tree(daemon.root)["/big"] in (["s1"], ["s1", "s2"])
    daemon.start()
    assert_converges(root, daemon, tmp_path)


def test_connection_cut_mid_stream(sender_pool, daemon, tmp_path):
    root = grown_tree(sender_pool, daemon)
    proxy = zfstest.Proxy(daemon.port, rate=2 * 1024 * 1024)
    try:
        sender = start_sender(root, proxy.port, "-t", "1")
        proxy.wait_forwarded(2 * 1024 * 1024)
        proxy.cut()
        out, err = sender.communicate(timeout=120)
    finally:
        proxy.close()
    assert sender.returncode == 1, out + err
    assert daemon.alive
    assert zfstest.tree(daemon.root)["/big"] == ["s1"]
    assert_converges(root, daemon, tmp_path)


def test_receiver_pool_full(sender_pool, pools, tmp_path):
    small = pools.create("f", size="96M")
    zfs("create", small + "/recv")
    workdir = tmp_path / "full"
    workdir.mkdir()
    daemon = zfstest.Daemon(small + "/recv/remote", zfstest.free_port(), str(workdir)).start()
    try:
        root = zfstest.make_tree(sender_pool, "local", children=("/a",), data_kib=16)
        zfs("snapshot", "-r", root + "@s1")
        assert zfstest.send(root, daemon.port).returncode == 0
        zfstest.write_file(root + "/a", "huge.bin", 100 * 1024)  # more than the receiver pool holds
        zfs("snapshot", "-r", root + "@s2")

        proc = zfstest.send(root, daemon.port)

        assert proc.returncode == 1
        assert "zfs_receive(incr)" in proc.stderr
        assert daemon.alive
        assert zfstest.tree(daemon.root) == {"": ["s1", "s2"], "/a": ["s1"]}
        # The administrator adds a disk; the next run converges.
        extra = os.path.join(str(tmp_path), "extra.img")
        with open(extra, "wb") as handle:
            handle.truncate(256 << 20)
        zfstest.run(["zpool", "add", small, extra])
        proc = zfstest.send(root, daemon.port)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert zfstest.tree(daemon.root) == zfstest.tree(root)
    finally:
        daemon.stop()


def test_receiver_restarted_during_a_run(sender_pool, daemon, tmp_path):
    root = grown_tree(sender_pool, daemon)
    proxy = zfstest.Proxy(daemon.port, rate=2 * 1024 * 1024)
    try:
        sender = start_sender(root, proxy.port, "-t", "2")
        proxy.wait_forwarded(2 * 1024 * 1024)
        daemon.stop()
        daemon.start()
        sender.communicate(timeout=120)
    finally:
        proxy.close()
    assert sender.returncode == 1
    assert_converges(root, daemon, tmp_path)


def test_two_senders_into_one_receiver_root_at_once(sender_pool, pools, daemon, tmp_path):
    """Two senders with the same tree shape race for the same datasets:
    per-dataset locks make the loser get 1:busy; nothing interleaves."""
    other_pool = pools.create("o")
    roots = [zfstest.make_tree(pool, "local", children=("/a", "/b"), data_kib=256)
             for pool in (sender_pool, other_pool)]
    # Snapshots are matched by name on the wire: two senders must not share
    # names (zfsyncron's are time-based; these differ by sender).
    for root, name in zip(roots, ("one1", "two1")):
        zfs("snapshot", "-r", "%s@%s" % (root, name))
    results = {}

    def run(root):
        results[root] = zfstest.send(root, daemon.port, "-t", "3")

    threads = [threading.Thread(target=run, args=(root,)) for root in roots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert any(r.returncode == 0 or "busy" in r.stderr for r in results.values())
    assert daemon.alive
    # Whatever won, each received dataset is one sender's complete copy.
    for suffix, snaps in zfstest.tree(daemon.root).items():
        assert snaps in (["one1"], ["two1"]), suffix
    # The first sender's next run makes the receiver exactly its copy.
    assert_converges(roots[0], daemon, tmp_path)


def test_a_second_run_of_the_same_sender_while_the_first_is_going(sender_pool, daemon, tmp_path):
    root = grown_tree(sender_pool, daemon)
    proxy = zfstest.Proxy(daemon.port, rate=2 * 1024 * 1024)
    try:
        first = start_sender(root, proxy.port, "-t", "1")
        proxy.wait_forwarded(1024 * 1024)
        second = zfstest.send(root, daemon.port, "-t", "2")
        first_out, first_err = first.communicate(timeout=120)
    finally:
        proxy.close()
    # The second run cannot take /big while the first holds it.
    assert "busy" in second.stderr or second.returncode == 0, second.stderr
    assert first.returncode == 0, first_out + first_err
    assert_converges(root, daemon, tmp_path)
