"""Our sender against a receiver that answers as the original does on the
wire (golden traces wire_noop, wire_full): it answers the probe with
``1:Unknown cmd xhello`` and closes, never sends ``0:OK`` after
``0:<newest>``, and closes after ``cleanbuffer``.

The peer here is scripted from those captures (no original binary can be
built on these machines); the sender side is real: real pools, real zfs."""
import socket
import threading
import time

import pytest

import zfstest
from zfstest import zfs


class OriginalLikeReceiver:
    """Answers frames the way the captured original receiver did and
    records every frame it got."""

    def __init__(self, size=512):
        self.size = size
        self.frames = []
        self.closed_by_peer = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn = self.listener.accept()[0]
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def reply(self, conn, text):
        conn.sendall(text.encode().ljust(self.size, b"\0"))

    def serve(self, conn):
        conn.settimeout(120)
        with conn:
            while True:
                data = zfstest.recv_exact(conn, self.size)
                if len(data) < self.size:
                    self.closed_by_peer.append(time.monotonic())
                    return
                text = data.split(b"\0", 1)[0].decode()
                self.frames.append(text)
                command = text.rsplit(":", 1)[-1]
                if command == "sync":
                    names = text.rsplit(":", 2)[0].split("@")[1:]
                    # The dataset is already up to date: answer the newest and
                    # then wait for a stream forever, as wire_noop shows.
                    self.reply(conn, "0:" + names[-1])
                    continue
                if command == "cleanbuffer":
                    self.reply(conn, "0:OK")
                    return
                if command == "close":
                    return
                self.reply(conn, "1:Unknown cmd " + command)
                return

    def close(self):
        self.listener.close()


@pytest.fixture
def original():
    peer = OriginalLikeReceiver()
    yield peer
    peer.close()


def test_uptodate_dataset_does_not_hang_with_an_original_receiver(sender_pool, original):
    root = zfstest.make_tree(sender_pool, "local", children=("/a",))
    zfs("snapshot", "-r", root + "@s1")
    zfs("snapshot", "-r", root + "@s2")
    started = time.monotonic()

    proc = zfstest.send(root, original.port, "-t", "1", "--timeout", "120", timeout=100)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - started < 30, "the sender waited for an 0:OK the original never sends"
    assert "uptodate=2" in proc.stdout
    assert original.frames[0] == ":xhello"
    assert "@s1@s2::sync" in original.frames and "@s1@s2:/a:sync" in original.frames
    assert original.frames[-1] == ":cleanbuffer"


def test_long_snapshot_list_is_a_reported_error_with_an_original_and_never_sent(sender_pool, original):
    root = zfstest.make_tree(sender_pool, "local", children=(), data_kib=4)
    for n in range(60):
        zfs("snapshot", "%s@daily-2026-11-%02d-longish-name" % (root, n))

    proc = zfstest.send(root, original.port, timeout=100)

    assert proc.returncode == 1
    assert "does not fit a 512-byte frame" in proc.stderr
    assert not [f for f in original.frames if f.endswith(":sync")], "a truncated list would make it prune"


def test_plan_refuses_an_original_receiver_without_sending_sync(sender_pool, original):
    root = zfstest.make_tree(sender_pool, "local", children=())
    zfs("snapshot", root + "@s1")

    proc = zfstest.send(root, original.port, "--plan", timeout=100)

    assert proc.returncode == 1
    assert "planning needs a zfsync receiver" in proc.stdout
    assert original.frames == [":xhello"]


def test_old_256_byte_original_is_recognized_from_its_short_answer(sender_pool):
    peer = OriginalLikeReceiver(size=256)
    try:
        root = zfstest.make_tree(sender_pool, "local", children=())
        zfs("snapshot", root + "@s1")
        proc = zfstest.send(root, peer.port, "--frame-size", "256", timeout=100)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "uptodate=1" in proc.stdout
        assert peer.frames[:2] == [":xhello", "@s1::sync"]
    finally:
        peer.close()
