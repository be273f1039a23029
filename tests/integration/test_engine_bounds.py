"""Resource bounds of a live receiver: connection limits, the first-request
bound, and that silent or slow clients hold no worker, so a well-behaved
sender keeps being served during a flood."""
import contextlib
import select
import time

import zfstest
from zfstest import connect_from, zfs


def closed_by_peer(sock, within):
    """True when the receiver closes the connection within ``within`` s."""
    if not select.select([sock], [], [], within)[0]:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def wait_for_log(daemon, text, timeout=10):
    deadline = time.monotonic() + timeout
    while text not in daemon.log():
        if time.monotonic() > deadline:
            raise AssertionError("%r not in the receiver log:\n%s" % (text, daemon.log()[-3000:]))
        time.sleep(0.1)


def test_a_flood_of_silent_and_half_frame_connections_does_not_delay_a_good_sender(sender_pool, daemon, capsys,
                                                                                   tmp_path):
    # If a silent connection held a worker until its first-request bound,
    # the two workers would be busy for 60 s at a time.
    daemon.stop()
    daemon.start("-t", "2", "--first-request-timeout", "60")
    root = zfstest.make_tree(sender_pool, "local", children=("/a", "/a/b", "/d"), data_kib=256)
    zfs("snapshot", "-r", root + "@s1")
    with contextlib.ExitStack() as stack:
        flood = [stack.enter_context(contextlib.closing(connect_from("127.0.0.3", daemon.port))) for _n in range(12)]
        for sock in flood[:4]:
            sock.sendall(b"@s1::sy")  # half a frame: a slow client
        for sock in flood[4:6]:
            sock.sendall(b"\0" * 300)  # more than 256 bytes, less than 512
        wait_for_log(daemon, "connection from 127.0.0.3")

        started = time.monotonic()
        proc = zfstest.send(root, daemon.port, "-t", "2", timeout=120)
        first = time.monotonic() - started
        assert proc.returncode == 0 and "new=4" in proc.stdout, proc.stdout + proc.stderr

        zfstest.write_file(root + "/a", "more.bin", 128)
        zfs("snapshot", "-r", root + "@s2")
        started = time.monotonic()
        proc = zfstest.send(root, daemon.port, "-t", "2", timeout=120)
        second = time.monotonic() - started
        assert proc.returncode == 0 and "incremental=4" in proc.stdout, proc.stdout + proc.stderr
        assert not any(closed_by_peer(sock, 0) for sock in flood), "the flood stays open, waiting for its bound"
    with capsys.disabled():
        print("\n  good sender during a flood of 12 silent/slow connections on 2 workers: "
              "full %.1f s, incremental %.1f s" % (first, second))
    assert first < 30 and second < 30
    zfstest.assert_same_tree(root, daemon.root, str(tmp_path))


def test_connections_past_the_per_client_limit_are_closed_at_once_and_logged(sender_pool, daemon):
    daemon.stop()
    daemon.start("--max-per-client", "3")
    root = zfstest.make_tree(sender_pool, "local", children=("/a",))
    zfs("snapshot", "-r", root + "@s1")
    with contextlib.ExitStack() as stack:
        flood = [stack.enter_context(contextlib.closing(connect_from("127.0.0.3", daemon.port))) for _n in range(5)]
        assert [closed_by_peer(sock, 2) for sock in flood] == [False, False, False, True, True]
        wait_for_log(daemon, "3 connections from 127.0.0.3 open (--max-per-client 3)")
        # Another address is not affected.
        proc = zfstest.send(root, daemon.port, "-t", "2", timeout=120)
        assert proc.returncode == 0 and "new=2" in proc.stdout, proc.stdout + proc.stderr
    # Closed connections free their places.
    with contextlib.closing(connect_from("127.0.0.3", daemon.port)) as sock:
        assert zfstest.exchange(sock, ":xhello").startswith("0:zfsync ")


def test_connections_past_the_total_limit_are_closed_and_a_sender_is_told_it_failed(sender_pool, daemon):
    daemon.stop()
    daemon.start("--max-connections", "4")
    root = zfstest.make_tree(sender_pool, "local", children=())
    zfs("snapshot", root + "@s1")
    with contextlib.ExitStack() as stack:
        flood = [stack.enter_context(contextlib.closing(connect_from("127.0.0.%d" % (3 + n), daemon.port)))
                 for n in range(4)]
        wait_for_log(daemon, "connection from 127.0.0.6")
        extra = stack.enter_context(contextlib.closing(connect_from("127.0.0.9", daemon.port)))
        assert closed_by_peer(extra, 2)
        wait_for_log(daemon, "refused 127.0.0.9:")
        assert "4 connections open (--max-connections 4)" in daemon.log()
        proc = zfstest.send(root, daemon.port, timeout=120)
        # Closed before or after its probe frame arrived: EOF or a reset.
        assert proc.returncode == 1 and "protocol probe" in proc.stdout + proc.stderr
        assert not any(closed_by_peer(sock, 0) for sock in flood)
    assert zfs("list", "-H", "-o", "name", daemon.root, check=False) == ""
    wait_for_log(daemon, "refused 127.0.0.1:")
    time.sleep(0.5)  # the daemon notices the flood's close
    assert zfstest.send(root, daemon.port, timeout=120).returncode == 0


def test_a_new_connection_gets_the_first_request_bound_and_an_open_one_the_idle_bound(daemon):
    daemon.stop()
    daemon.start("--first-request-timeout", "2", "--idle-timeout", "6")
    with contextlib.closing(connect_from("127.0.0.1", daemon.port)) as silent, \
            contextlib.closing(connect_from("127.0.0.1", daemon.port)) as half, \
            contextlib.closing(connect_from("127.0.0.1", daemon.port)) as talking:
        half.sendall(b":xhel")
        assert zfstest.exchange(talking, ":xhello").startswith("0:zfsync ")
        started = time.monotonic()
        assert closed_by_peer(silent, 10) and closed_by_peer(half, 10)
        assert time.monotonic() - started < 5
        assert not closed_by_peer(talking, 1), "one request made: the longer idle bound applies"
        assert closed_by_peer(talking, 10)
        assert time.monotonic() - started > 4
    log = daemon.log()
    assert "no first request within 2 s" in log and "closing idle connection" in log
    assert "no request within 6 s" in log


def test_a_frame_cut_between_requests_is_bounded_by_the_idle_bound(daemon):
    daemon.stop()
    daemon.start("--idle-timeout", "2", "-t", "1")
    with contextlib.closing(connect_from("127.0.0.1", daemon.port)) as slow:
        assert zfstest.exchange(slow, ":xhello").startswith("0:zfsync ")
        slow.sendall(b"@s1::sy")  # never finished
        # It holds no worker meanwhile: the only one answers others at once.
        started = time.monotonic()
        with contextlib.closing(connect_from("127.0.0.1", daemon.port)) as other:
            assert zfstest.exchange(other, ":xhello").startswith("0:zfsync ")
        assert time.monotonic() - started < 2
        assert closed_by_peer(slow, 10)


def test_a_flood_of_refused_connections_is_logged_in_bursts_not_line_by_line(daemon):
    daemon.stop()
    daemon.start("--max-per-client", "1")
    with contextlib.closing(connect_from("127.0.0.5", daemon.port)):
        for _attempt in range(200):
            with contextlib.closing(connect_from("127.0.0.5", daemon.port)) as sock:
                assert closed_by_peer(sock, 5)
        wait_for_log(daemon, "more connection lines not logged (more than 20 a second)")
        time.sleep(1.5)  # the count of the last second comes when it is over
    log = daemon.log()
    refused = log.count("refused 127.0.0.5:")
    left_out = sum(int(line.split("| ")[-1].split()[0]) for line in log.splitlines()
                   if "more connection lines not logged" in line)
    assert refused < 200 and refused + left_out == 200
    with contextlib.closing(connect_from("127.0.0.1", daemon.port)) as sock:
        assert zfstest.exchange(sock, ":xhello").startswith("0:zfsync ")
