"""What site.yml leaves on the sender: the engine and the zfsyncron cron
job, with the receiver VM and the TLS files in its command."""

from conftest import SENDER_ROOT, run

testinfra_hosts = ["ansible://sender"]


def cron_file(host):
    directory = "/usr/local/etc/cron.d" if host.system_info.type == "freebsd" else "/etc/cron.d"
    return host.file("%s/zfsync-%s" % (directory, SENDER_ROOT.replace("/", "_")))


def test_cron_job_installed(host):
    cron = cron_file(host)
    assert cron.exists
    assert cron.user == "root"
    assert cron.mode == 0o644
    text = cron.content_string
    assert "/usr/local/bin/zfsyncron" in text
    assert SENDER_ROOT in text
    assert "10.0.2.2" in text
    assert "--tls-cert" in text


def test_engine_installed(host):
    for program in ("zfsyncron", "zfsync_send"):
        assert run(host, "/usr/local/bin/%s --version" % program).startswith(program + " ")
