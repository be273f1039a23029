"""What site.yml leaves on the receiver: the daemon as a service that is
enabled and running, listening on every address, behind an allow-list and
mutual TLS."""

from conftest import RECEIVER_ROOT, run

testinfra_hosts = ["ansible://receiver"]


def test_daemon_enabled_and_running(host):
    if host.system_info.type == "freebsd":
        run(host, "service zfsync_recv enabled")     # rc.subr: exit 0 when enabled
        run(host, "service zfsync_recv status")
    else:
        service = host.service("zfsync-recv")
        assert service.is_enabled
        assert service.is_running


def test_daemon_listens_on_every_address(host):
    assert host.socket("tcp://0.0.0.0:3030").is_listening


def test_daemon_runs_with_allow_list_and_tls(host):
    lines = [line for line in run(host, "ps axww -o args=").splitlines() if "/zfsync_recv " in line]
    assert len(lines) == 1, lines
    assert "--allow 10.0.2.2/32" in lines[0]
    assert "--tls-cert" in lines[0] and "--tls-ca" in lines[0]
    assert lines[0].split()[-1] == RECEIVER_ROOT


def test_engine_installed(host):
    assert run(host, "/usr/local/bin/zfsync_recv --version").startswith("zfsync_recv ")
