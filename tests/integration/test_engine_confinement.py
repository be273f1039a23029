"""Per-client sub-roots on a live receiver: each sender lands in its own
part of the tree, by address or TLS certificate name, and cannot reach
another's."""
import contextlib

import pytest

import zfstest
from test_engine_security import make_ca, make_cert
from zfstest import connect_from, zfs


def datasets(name):
    return zfs("list", "-H", "-o", "name", "-t", "all", "-r", name, check=False).split()


@pytest.fixture
def confined(daemon):
    daemon.stop()
    daemon.start("--client-root", "127.0.0.1=one", "--client-root", "127.0.0.2/32=two")
    return daemon


def two_trees(pool):
    left = zfstest.make_tree(pool, "left", children=("/a", "/a/b"), data_kib=128)
    right = zfstest.make_tree(pool, "right", children=("/a", "/c"), data_kib=128)
    zfs("snapshot", "-r", left + "@l1")
    zfs("snapshot", "-r", right + "@r1")
    return left, right


def test_two_senders_by_address_each_land_in_their_own_sub_root(sender_pool, confined, tmp_path):
    left, right = two_trees(sender_pool)

    first = zfstest.send(left, confined.port, "-t", "2")
    second = zfstest.send(right, confined.port, "-t", "2", "-i", "127.0.0.2")

    assert first.returncode == 0 and "new=3" in first.stdout, first.stdout + first.stderr
    assert second.returncode == 0 and "new=3" in second.stdout, second.stdout + second.stderr
    zfstest.assert_same_tree(left, confined.root + "/one", str(tmp_path))
    zfstest.assert_same_tree(right, confined.root + "/two", str(tmp_path))
    assert zfs("list", "-H", "-o", "name", "-d", "1", confined.root).split() == [
        confined.root, confined.root + "/one", confined.root + "/two"]
    # Incrementals stay in place, and the buffer is empty afterwards.
    zfs("snapshot", "-r", left + "@l2")
    zfs("snapshot", "-r", right + "@r2")
    assert zfstest.send(right, confined.port, "-i", "127.0.0.2").returncode == 0
    assert zfstest.send(left, confined.port).returncode == 0
    zfstest.assert_same_tree(left, confined.root + "/one", str(tmp_path), contents=False)
    zfstest.assert_same_tree(right, confined.root + "/two", str(tmp_path), contents=False)
    assert datasets(confined.root + ".zfsyncbuffer") == [confined.root + ".zfsyncbuffer"]


def test_a_sender_cannot_overwrite_another_senders_sub_root(sender_pool, confined, tmp_path):
    left, right = two_trees(sender_pool)
    assert zfstest.send(right, confined.port, "-i", "127.0.0.2").returncode == 0
    theirs = zfstest.tree(confined.root + "/two")
    # The left sender syncs a tree laid out like the right one's: it lands
    # below its own sub-root, never on top of the other.
    zfs("create", left + "/two")
    zfs("snapshot", "-r", left + "@l2")

    proc = zfstest.send(left, confined.port)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert zfstest.tree(confined.root + "/two") == theirs
    assert confined.root + "/one/two" in datasets(confined.root + "/one")
    zfstest.assert_same_tree(right, confined.root + "/two", str(tmp_path))


ESCAPES = [
    "@s1:/..:sync",
    "@s1:/../two:sync",
    "@s1:/a/../../two:sync",
    "@s1:/%2E%2E/two:sync",
    "@s1:/%2Ftwo:sync",
    "@s1:..:sync",
    "@s1:two:sync",
    "@s1:../two:sync",
    "@s1://two:sync",
    "@s1:/two@s1:sync",
    "@s1:/.:sync",
    "@s1:/\u2024\u2024/two:sync",
    "@s1:/two/:sync",
    "@s1:/two\\..:sync",
]


@pytest.mark.parametrize("text", ESCAPES)
def test_names_that_would_leave_the_sub_root_are_refused_and_change_nothing(receiver_pool, confined, text):
    before = datasets(receiver_pool)
    with contextlib.closing(connect_from("127.0.0.1", confined.port, timeout=30)) as sock:
        answer = zfstest.exchange(sock, text)
    assert answer.startswith("1:"), answer
    assert datasets(receiver_pool) == before


def test_a_plausible_name_from_one_client_is_read_below_its_own_sub_root(receiver_pool, confined):
    before = datasets(receiver_pool)
    with contextlib.closing(connect_from("127.0.0.1", confined.port, timeout=30)) as sock:
        # ROOT/one/two does not exist: NEW, although ROOT/two might.
        assert zfstest.exchange(sock, "@s1:/two:sync") == "0:NEW"
    assert datasets(receiver_pool) == before
    assert "/one/two" in confined.log()


def test_a_client_no_rule_matches_gets_no_answer_and_is_logged(sender_pool, confined):
    root = zfstest.make_tree(sender_pool, "local", children=())
    zfs("snapshot", root + "@s1")
    with contextlib.closing(connect_from("127.0.0.3", confined.port, timeout=30)) as sock:
        try:
            sock.sendall(b":xhello".ljust(512, b"\0"))
            answer = zfstest.recv_exact(sock, 512)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""
    assert answer == b""
    assert "refused 127.0.0.3:" in confined.log() and "no --client-root matches" in confined.log()
    assert zfstest.send(root, confined.port, "-i", "127.0.0.3").returncode == 1
    assert datasets(confined.root) == [confined.root]  # created for the sub-roots, nothing below


def test_tls_clients_are_confined_by_certificate_name(sender_pool, daemon, tmp_path):
    pki = str(tmp_path / "pki")
    import os

    os.mkdir(pki)
    ca = make_ca(pki, "ca")
    server = make_cert(pki, "ca", "receiver", "IP:127.0.0.1")
    web1 = make_cert(pki, "ca", "web1", "DNS:web1")
    web2 = make_cert(pki, "ca", "web2", "DNS:web2")
    daemon.stop()
    daemon.start("--tls-cert", server[0], "--tls-key", server[1], "--tls-ca", ca,
                 "--client-root", "cn:web1=hosts/web1")
    left, right = two_trees(sender_pool)

    proc = zfstest.send(left, daemon.port, "--tls-cert", web1[0], "--tls-key", web1[1], "--tls-ca", ca)
    assert proc.returncode == 0 and "new=3" in proc.stdout, proc.stdout + proc.stderr
    zfstest.assert_same_tree(left, daemon.root + "/hosts/web1", str(tmp_path))

    proc = zfstest.send(right, daemon.port, "--tls-cert", web2[0], "--tls-key", web2[1], "--tls-ca", ca)
    assert proc.returncode == 1
    assert "(certificate web2): no --client-root matches" in daemon.log()
    assert zfs("list", "-H", "-o", "name", "-r", daemon.root).split() == [
        daemon.root, daemon.root + "/hosts"] + [daemon.root + "/hosts/web1" + s for s in ("", "/a", "/a/b")]


def test_full_replacement_inside_a_sub_root_swaps_through_the_shared_buffer(sender_pool, confined, tmp_path):
    left, right = two_trees(sender_pool)
    assert zfstest.send(left, confined.port).returncode == 0
    assert zfstest.send(right, confined.port, "-i", "127.0.0.2").returncode == 0
    theirs = zfstest.tree(confined.root + "/two")
    # The left root's history is replaced: no snapshot in common with the copy.
    zfs("destroy", "-r", left + "@l1")
    zfstest.write_file(left, "new.bin", 64)
    zfs("snapshot", "-r", left + "@n1")

    proc = zfstest.send(left, confined.port)

    assert proc.returncode == 0 and "full=3" in proc.stdout, proc.stdout + proc.stderr
    zfstest.assert_same_tree(left, confined.root + "/one", str(tmp_path))
    assert zfstest.tree(confined.root + "/two") == theirs
    assert datasets(confined.root + ".zfsyncbuffer") == [confined.root + ".zfsyncbuffer"]


def test_cleanbuffer_of_one_client_leaves_the_other_clients_buffered_copies(sender_pool, confined):
    from zfsync import protocol

    left, right = two_trees(sender_pool)
    assert zfstest.send(right, confined.port, "-i", "127.0.0.2").returncode == 0
    # A copy of the right sender's /x, buffered (its run was interrupted
    # before cleanbuffer); its parent ROOT/two exists.
    entry = confined.root + ".zfsyncbuffer/" + protocol.hex_suffix("/two/x")
    zfs("create", entry)

    assert zfstest.send(left, confined.port).returncode == 0  # ends with the left sender's cleanbuffer
    assert entry in datasets(confined.root + ".zfsyncbuffer")
    assert confined.root + "/two/x" not in datasets(confined.root + "/two")

    assert zfstest.send(right, confined.port, "-i", "127.0.0.2").returncode == 0
    assert entry not in datasets(confined.root + ".zfsyncbuffer")
    assert confined.root + "/two/x" in datasets(confined.root + "/two")
