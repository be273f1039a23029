"""Mutual TLS between our peers and the client allow-list, on real pools."""
import os
import subprocess

import pytest

import zfstest
from zfstest import zfs


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)


def make_ca(directory, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=%s" % name,
            "-keyout", name + ".key", "-out", name + ".pem", cwd=directory)
    return os.path.join(directory, name + ".pem")


def make_cert(directory, ca, name, san):
    with open(os.path.join(directory, name + ".ext"), "w") as handle:
        handle.write("subjectAltName=%s\n" % san)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s" % name, "-keyout", name + ".key",
            "-out", name + ".csr", cwd=directory)
    openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key", "-CAcreateserial",
            "-days", "2", "-extfile", name + ".ext", "-out", name + ".pem", cwd=directory)
    return os.path.join(directory, name + ".pem"), os.path.join(directory, name + ".key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("pki"))
    ca = make_ca(directory, "ca")
    other_ca = make_ca(directory, "otherca")
    return {
        "ca": ca,
        "server": make_cert(directory, "ca", "receiver", "IP:127.0.0.1,DNS:localhost"),
        "client": make_cert(directory, "ca", "sender1", "DNS:sender1"),
        "stranger": make_cert(directory, "otherca", "stranger", "DNS:stranger"),
        "other_ca": other_ca,
    }


@pytest.fixture
def tls_daemon(daemon, pki):
    daemon.stop()
    cert, key = pki["server"]
    daemon.start("--tls-cert", cert, "--tls-key", key, "--tls-ca", pki["ca"])
    return daemon


def tls_args(pki, which="client"):
    cert, key = pki[which]
    return ("--tls-cert", cert, "--tls-key", key, "--tls-ca", pki["ca"])


def test_tls_peers_sync_full_and_incremental(sender_pool, tls_daemon, pki, tmp_path):
    root = zfstest.make_tree(sender_pool, "local", children=("/a", "/a/b"), data_kib=512)
    zfs("snapshot", "-r", root + "@s1")

    proc = zfstest.send(root, tls_daemon.port, *tls_args(pki))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "new=3" in proc.stdout
    assert " 0 bytes" not in proc.stdout, "bytes moved through the relay are counted"
    zfstest.write_file(root + "/a", "more.bin", 256)
    zfs("snapshot", "-r", root + "@s2")
    proc = zfstest.send(root, tls_daemon.port, *tls_args(pki))
    assert proc.returncode == 0 and "incremental=3" in proc.stdout, proc.stdout + proc.stderr
    zfstest.assert_same_tree(root, tls_daemon.root, str(tmp_path))


def test_certificate_from_another_ca_gets_nothing(sender_pool, receiver_pool, tls_daemon, pki):
    root = zfstest.make_tree(sender_pool, "local", children=())
    zfs("snapshot", root + "@s1")
    before = zfs("list", "-H", "-o", "name", "-t", "all", "-r", receiver_pool)
    cert, key = pki["stranger"]

    proc = zfstest.send(root, tls_daemon.port, "--tls-cert", cert, "--tls-key", key, "--tls-ca", pki["ca"])

    assert proc.returncode == 1
    assert zfs("list", "-H", "-o", "name", "-t", "all", "-r", receiver_pool) == before
    assert "TLS handshake failed" in tls_daemon.log()


def test_plain_text_client_on_a_tls_port_gets_nothing_and_changes_nothing(receiver_pool, tls_daemon):
    before = zfs("list", "-H", "-o", "name", "-t", "all", "-r", receiver_pool)
    with zfstest.raw_connection(tls_daemon.port, timeout=40) as sock:
        sock.sendall(b"@s1::sync".ljust(512, b"\0"))
        try:
            answer = sock.recv(512)
        except ConnectionResetError:
            answer = b""
    assert b"0:" not in answer and b"1:" not in answer
    assert zfs("list", "-H", "-o", "name", "-t", "all", "-r", receiver_pool) == before


def test_sender_without_tls_against_tls_receiver_fails_cleanly(sender_pool, tls_daemon):
    root = zfstest.make_tree(sender_pool, "local", children=())
    zfs("snapshot", root + "@s1")
    proc = zfstest.send(root, tls_daemon.port, "--timeout", "40", timeout=120)
    assert proc.returncode == 1


def test_allow_list_refuses_other_addresses_without_an_answer(sender_pool, daemon):
    daemon.stop()
    daemon.start("--allow", "127.0.0.2/32")
    with zfstest.raw_connection(daemon.port) as sock:
        try:
            sock.sendall(b":xhello".ljust(512, b"\0"))
            answer = zfstest.recv_exact(sock, 512)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""  # closed before or while our frame arrived
        assert answer == b""
    assert "refused 127.0.0.1" in daemon.log() and "not in the allow list" in daemon.log()

    daemon.stop()
    daemon.start("--allow", "10.0.0.0/8", "--allow", "127.0.0.0/8")
    root = zfstest.make_tree(sender_pool, "local", children=())
    zfs("snapshot", root + "@s1")
    assert zfstest.send(root, daemon.port).returncode == 0
