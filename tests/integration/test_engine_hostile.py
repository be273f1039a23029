"""Bad input against a live receiver: clear refusals, nothing changed, the
daemon keeps serving."""
import os
import random
import socket
import time

import pytest

import zfstest
from zfstest import zfs


def datasets_on(pool):
    return zfs("list", "-H", "-o", "name", "-t", "all", "-r", pool).split()


HOSTILE = [
    ("@s1:/../escape:sync", "1:dataset name component '..' is not allowed"),
    ("@s1:/a/../../x:sync", "1:dataset name component '..' is not allowed"),
    ("@s1:/a@b:sync", "1:invalid character in dataset name component 'a@b'"),
    ("@s1:/a\x07b:sync", "1:invalid character in dataset name component 'a\\x07b'"),
    ("@s1:/a%b:sync", "1:invalid character in dataset name component 'a%b'"),
    ("@s1:noslash:sync", "1:dataset suffix must start with '/'"),
    ("@s1://x:sync", "1:empty dataset name component"),
    ("@s1:/" + "x" * 300 + ":sync", "1:dataset suffix too long"),
    (":/a:sync", "1:sync without snapshots"),
    ("@s1@../x:/a:sync", "1:invalid character in snapshot name '../x'"),
    ("@s1:/a:destroy", "1:Unknown cmd destroy"),
    ("nothing", "1:cmd=NULL"),
    ("", "1:cmd=NULL"),
    ("12:/a:xsync", None),  # list length announced, never sent: closed after the read bound
]


@pytest.mark.parametrize("text, answer", HOSTILE)
def test_hostile_frames_are_refused_and_change_nothing(daemon, receiver_pool, text, answer):
    before = datasets_on(receiver_pool)
    with zfstest.raw_connection(daemon.port, timeout=90) as sock:
        if answer is None:
            sock.sendall(text.encode().ljust(512, b"\0"))
            sock.shutdown(socket.SHUT_WR)
            assert zfstest.recv_exact(sock, 512) == b""
        else:
            assert zfstest.exchange(sock, text) == answer
            # The receiver closes after an error reply, as the original does.
            assert sock.recv(1) == b""
    assert datasets_on(receiver_pool) == before
    assert os.listdir(daemon.flag_dir) == []
    assert_still_serving(daemon)


def assert_still_serving(daemon):
    with zfstest.raw_connection(daemon.port) as sock:
        assert zfstest.exchange(sock, ":xhello").startswith("0:zfsync ")


def test_random_bytes_half_frames_and_silent_clients_do_not_wedge_the_daemon(daemon, receiver_pool):
    daemon.stop()
    daemon.start("--idle-timeout", "2", "-t", "2")
    before = datasets_on(receiver_pool)
    rng = random.Random(1234)
    for _attempt in range(40):
        with zfstest.raw_connection(daemon.port) as sock:
            sock.settimeout(10)
            try:
                sock.sendall(bytes(rng.randrange(256) for _byte in range(rng.choice([1, 100, 256, 300, 512, 700]))))
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(512):
                    pass
            except (ConnectionResetError, BrokenPipeError, OSError):
                pass  # the daemon answered and closed before reading all of our bytes
    # Silent clients on every worker: the idle bound frees them.
    silent = [socket.create_connection(("127.0.0.1", daemon.port)) for _worker in range(4)]
    half = socket.create_connection(("127.0.0.1", daemon.port))
    half.sendall(b"@s1::sy")
    started = time.monotonic()
    assert_still_serving(daemon)
    assert time.monotonic() - started < 15
    for sock in silent + [half]:
        sock.close()
    assert daemon.alive
    assert datasets_on(receiver_pool) == before


def test_frames_split_across_tcp_segments_are_reassembled(sender_pool, daemon):
    root = zfstest.make_tree(sender_pool, "local", children=())
    zfs("snapshot", root + "@s1")
    assert zfstest.send(root, daemon.port).returncode == 0
    with zfstest.raw_connection(daemon.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        frame = b"@s1::sync".ljust(512, b"\0")
        for start in range(0, 512, 100):
            sock.sendall(frame[start:start + 100])
            time.sleep(0.05)
        assert zfstest.recv_exact(sock, 512).rstrip(b"\0") == b"0:s1"
        assert zfstest.recv_exact(sock, 512).rstrip(b"\0") == b"0:OK"


def test_padding_after_the_nul_is_ignored_as_the_original_sends_it(sender_pool, daemon):
    root = zfstest.make_tree(sender_pool, "local", children=())
    zfs("snapshot", root + "@s1")
    assert zfstest.send(root, daemon.port).returncode == 0
    with zfstest.raw_connection(daemon.port) as sock:
        sock.sendall(b"@s1::sync\0L".ljust(512, b"\0"))
        assert zfstest.recv_exact(sock, 512).rstrip(b"\0") == b"0:s1"
        assert zfstest.recv_exact(sock, 512).rstrip(b"\0") == b"0:OK"
        sock.sendall(b":close\0uffer".ljust(512, b"\0"))
        assert sock.recv(1) == b""


def test_two_senders_on_one_dataset_do_not_interleave(sender_pool, daemon):
    root = zfstest.make_tree(sender_pool, "local", children=())
    zfs("snapshot", root + "@s1")
    with zfstest.raw_connection(daemon.port, timeout=30) as first:
        assert zfstest.exchange(first, "@s1::sync") == "0:NEW"
        # The first holds the root (its stream has not come yet).
        with zfstest.raw_connection(daemon.port) as second:
            assert zfstest.exchange(second, "@s1::sync").startswith("1:busy: ")
    assert_still_serving(daemon)


def fuzz_frame(rng):
    """Frames that look almost right: odd separators, long lists, stray
    NULs, truncation, valid-looking commands with invalid parts."""
    pieces = ["@s1", "@", ":", "::", "/a", "/..", "/a/b", "sync", "xsync", "xplan", "cleanbuffer", "close",
              "\x00", "\xff", "%", "#", " ", "9999999", "@" + "x" * 300, ":/" + "y" * 200]
    text = "".join(rng.choice(pieces) for _piece in range(rng.randrange(1, 12)))
    data = text.encode("utf-8", "surrogateescape")[:rng.choice([100, 255, 511, 600])]
    size = rng.choice([256, 512])
    return data.ljust(size, b"\0") if rng.random() < 0.8 else data


def test_bounded_fuzz_run_against_a_live_daemon(daemon, receiver_pool):
    daemon.stop()
    daemon.start("--idle-timeout", "1")
    before = datasets_on(receiver_pool)
    rng = random.Random(20261127)
    deadline = time.monotonic() + 60
    sent = 0
    while sent < 300 and time.monotonic() < deadline:
        with zfstest.raw_connection(daemon.port, timeout=5) as sock:
            try:
                sock.sendall(fuzz_frame(rng))
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass
            except OSError:
                pass
        sent += 1
    assert sent >= 100
    assert daemon.alive
    assert datasets_on(receiver_pool) == before
    assert_still_serving(daemon)
