"""FramedConnection.run_zfs: how a stream's process is waited for and
when it is stopped. Real processes on a socketpair stand in for the zfs
stream (the waiting logic does not depend on which program writes)."""
import socket
import subprocess
import threading
import time

from zfsync.connection import FramedConnection


def spawner(script):
    def spawn(argv, stdin=None, stdout=None):
        return subprocess.Popen(["sh", "-c", script], stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                stdout=stdout if stdout is not None else subprocess.DEVNULL, stderr=subprocess.PIPE)
    return spawn


def peer(sock, reply, delay=0.0):
    """The receiving end: read the stream until it has some, then answer."""
    def run():
        sock.recv(65536)
        time.sleep(delay)
        if reply is not None:
            sock.sendall(reply)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_reply_that_arrives_before_the_sender_process_exits_is_no_failure():
    """Found by the benchmark (zfsync-8, TCG): the receiver had the whole
    stream and answered 0:OK while `zfs send` was still exiting; the sender
    took the answer for a peer that stopped reading and failed a dataset
    that had arrived."""
    ours, theirs = socket.socketpair()
    conn = FramedConnection(ours, 512, 60.0)
    peer(theirs, b"0:OK".ljust(512, b"\0"))

    status, stderr = conn.run_zfs(spawner("printf stream; sleep 1.5"), ["zfs"], "send", watch_peer=True)

    assert (status, stderr) == (0, "")
    assert theirs.fileno() >= 0 and ours.recv(4, socket.MSG_PEEK) == b"0:OK"


def test_a_peer_that_answers_and_stops_reading_ends_a_stuck_send():
    ours, theirs = socket.socketpair()
    conn = FramedConnection(ours, 512, 60.0)
    peer(theirs, b"1:zfs receive failed".ljust(512, b"\0"))
    started = time.monotonic()

    status, stderr = conn.run_zfs(spawner("printf stream; exec sleep 60"), ["zfs"], "send", watch_peer=True)

    assert status != 0
    assert "the peer stopped reading the stream" in stderr
    assert time.monotonic() - started < 30


def test_a_stop_request_ends_a_receive():
    ours, theirs = socket.socketpair()
    conn = FramedConnection(ours, 512, 60.0)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()

    status, stderr = conn.run_zfs(spawner("exec sleep 60"), ["zfs"], "receive", stop_check=stop.is_set)

    assert status != 0 and "shutting down" in stderr
    assert time.monotonic() - started < 15
    theirs.close()


def test_an_exit_is_seen_at_once_not_at_the_next_check():
    ours, _theirs = socket.socketpair()
    conn = FramedConnection(ours, 512, 60.0)
    started = time.monotonic()
    status, _stderr = conn.run_zfs(spawner("sleep 0.3"), ["zfs"], "receive", stop_check=lambda: False)
    assert status == 0
    assert time.monotonic() - started < 0.9
