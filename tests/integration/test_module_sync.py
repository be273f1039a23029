"""zfsync.zfsync.sync through ansible-playbook on localhost: a real sender
pool, a real zfsync_recv from bin/, real TCP. What a user's play sees:
per-dataset results, changed only when something went out, a check mode
that sends nothing and predicts, failures that name the dataset and the
receiver's reason."""
from __future__ import annotations

import re
import socket
import threading

import pytest

import zfstest
from ansibleplay import Playbook
from zfstest import zfs

PLAYBOOK = """
- name: Sync under test
  hosts: localhost
  gather_facts: false
  tasks:
    - name: sync
      zfsync.zfsync.sync:
        dataset: "{{ zfsync_dataset }}"
        receiver: 127.0.0.1
        port: "{{ zfsync_port }}"
        threads: 2
        snapshot: "{{ zfsync_snapshot | default(omit) }}"
        fail_on_error: "{{ zfsync_fail_on_error | default(true) }}"
        log_file: "{{ zfsync_log_file | default(omit) }}"
        connect_timeout: 10
        timeout: 60
      register: zfsync_result

    - name: query
      ansible.builtin.set_fact:
        zfsync_sent: "{{ zfsync_result | community.general.json_query('datasets[?action!=`uptodate`].suffix') }}"
        zfsync_root_to: "{{ zfsync_result | community.general.json_query('datasets[?suffix==``].to | [0]') }}"
"""

CRON_NAME = re.compile(r"^\d{6}-\d{6}_[SMHD]$")


@pytest.fixture
def play(tmp_path):
    workdir = tmp_path / "play"
    workdir.mkdir()
    return Playbook(str(workdir), PLAYBOOK)


@pytest.fixture
def source(sender_pool):
    """POOL/src with /a and /a/b, all with @s1."""
    root = zfstest.make_tree(sender_pool, "src", children=("/a", "/a/b"), data_kib=32)
    zfs("snapshot", "-r", root + "@s1")
    return root


def sync(play, root, port, *options, **variables):
    extra = dict(zfsync_dataset=root, zfsync_port=port)
    extra.update(("zfsync_" + key, value) for key, value in variables.items())
    return play.run(*options, extra_vars=extra)


def by_suffix(result):
    return {entry["suffix"]: entry for entry in result["datasets"]}


def test_first_sync_changes_and_reports_every_dataset(play, source, daemon, tmp_path):
    result = sync(play, source, daemon.port).ok("sync")

    assert result["changed"] is True
    datasets = by_suffix(result)
    assert sorted(datasets) == ["", "/a", "/a/b"]
    for suffix, entry in datasets.items():
        assert entry["dataset"] == source + suffix
        assert entry["action"] == "new" and entry["to"] == "s1" and entry["from"] is None, entry
        assert entry["error"] is None and entry["seconds"] >= 0
        assert entry["bytes"] is None or entry["bytes"] > 0
    assert result["totals"]["datasets"] == 3 and result["totals"]["new"] == 3 and result["totals"]["failed"] == 0
    assert result["peer"]["type"] == "zfsync" and result["peer"]["version"] == result["version"]
    assert result["ok"] is True and result["planned"] is False and result["snapshot_created"] is None
    zfstest.assert_same_tree(source, daemon.root, str(tmp_path))


def test_second_sync_without_new_snapshots_reports_no_change(play, source, daemon):
    sync(play, source, daemon.port).ok("sync")

    result = sync(play, source, daemon.port).ok("sync")

    assert result["changed"] is False
    assert [e["action"] for e in result["datasets"]] == ["uptodate"] * 3
    assert result["totals"]["uptodate"] == 3 and result["totals"]["bytes"] == 0


def test_check_mode_sends_nothing_and_predicts_the_first_sync(play, source, daemon):
    result = sync(play, source, daemon.port, "--check").ok("sync")

    assert result["changed"] is True and result["planned"] is True
    assert [(e["suffix"], e["action"], e["to"]) for e in result["datasets"]] == \
        [("", "new", "s1"), ("/a", "new", "s1"), ("/a/b", "new", "s1")]
    assert not zfs("list", "-H", "-o", "name", daemon.root, check=False).strip()
    assert zfstest.tree(daemon.root + ".zfsyncbuffer") == {"": []}


def test_check_mode_after_the_sync_predicts_no_change(play, source, daemon):
    sync(play, source, daemon.port).ok("sync")

    result = sync(play, source, daemon.port, "--check").ok("sync")

    assert result["changed"] is False
    assert {e["action"] for e in result["datasets"]} == {"uptodate"}


def test_check_mode_with_a_new_snapshot_predicts_incrementals_and_takes_nothing(play, source, daemon):
    sync(play, source, daemon.port).ok("sync")
    before = zfstest.tree(source)

    result = sync(play, source, daemon.port, "--check", snapshot="auto").ok("sync")

    assert result["changed"] is True
    planned = result["snapshot_created"]
    assert CRON_NAME.match(planned), planned
    assert {(e["action"], e["from"], e["to"]) for e in result["datasets"]} == {("incremental", "s1", planned)}
    assert zfstest.tree(source) == before
    assert zfstest.tree(daemon.root) == {"": ["s1"], "/a": ["s1"], "/a/b": ["s1"]}


def test_snapshot_auto_takes_a_zfsyncron_snapshot_and_sends_it(play, source, daemon):
    sync(play, source, daemon.port).ok("sync")

    result = sync(play, source, daemon.port, snapshot="auto").ok("sync")

    taken = result["snapshot_created"]
    assert result["changed"] is True and CRON_NAME.match(taken), taken
    assert zfstest.tree(source) == {"": ["s1", taken], "/a": ["s1", taken], "/a/b": ["s1", taken]}
    assert zfstest.tree(daemon.root) == zfstest.tree(source)
    assert {(e["action"], e["from"], e["to"]) for e in result["datasets"]} == {("incremental", "s1", taken)}


def test_a_named_snapshot_is_taken_once_and_then_left_alone(play, source, daemon):
    first = sync(play, source, daemon.port, snapshot="before-upgrade").ok("sync")
    second = sync(play, source, daemon.port, snapshot="before-upgrade").ok("sync")

    assert first["changed"] is True and first["snapshot_created"] == "before-upgrade"
    assert second["changed"] is False and second["snapshot_created"] is None
    assert zfstest.tree(daemon.root)["/a/b"] == ["s1", "before-upgrade"]


def test_json_query_selects_from_the_results_in_a_play(play, source, daemon):
    run = sync(play, source, daemon.port)

    facts = run.ok("query")["ansible_facts"]
    assert facts["zfsync_sent"] == ["", "/a", "/a/b"]
    assert facts["zfsync_root_to"] == "s1"


def test_diff_summarizes_each_replica_before_and_after(play, source, daemon):
    sync(play, source, daemon.port).ok("sync")
    zfs("snapshot", source + "/a@s2")

    result = sync(play, source, daemon.port, "--diff").ok("sync")

    [replica] = result["diff"]
    assert replica["before"] == "/a: @s1\n" and replica["after"] == "/a: @s2\n"
    assert "127.0.0.1 port %d" % daemon.port in replica["after_header"]


def test_the_log_file_is_written_by_a_sync_and_not_by_a_plan(play, source, daemon, tmp_path):
    log_file = tmp_path / "logs" / "zfsync_send.log"

    sync(play, source, daemon.port, "--check", log_file=str(log_file)).ok("sync")
    assert not log_file.exists()
    sync(play, source, daemon.port, log_file=str(log_file)).ok("sync")

    lines = log_file.read_text().splitlines()
    assert re.match(r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:\d{6} \| th:main \| ", lines[0]), lines[0]
    assert "3 datasets" in lines[-1] and "new=3" in lines[-1], lines[-1]


@pytest.fixture
def refusing_daemon(receiver_pool, tmp_path):
    """A receiver that refuses FULL: a replica without common snapshots fails."""
    zfs("create", receiver_pool + "/recv")
    workdir = tmp_path / "refusing"
    workdir.mkdir()
    started = zfstest.Daemon(receiver_pool + "/recv/remote", zfstest.free_port(), str(workdir)).start("--no-full")
    yield started
    if started.alive:
        started.stop()


def diverge(root, suffix):
    """Leave the replica of ``suffix`` with no snapshot in common."""
    zfs("snapshot", root + suffix + "@s2")
    zfs("destroy", root + suffix + "@s1")


def test_a_failing_dataset_fails_the_task_naming_it_and_the_receivers_reason(play, source, refusing_daemon):
    sync(play, source, refusing_daemon.port).ok("sync")
    diverge(source, "/a/b")

    run = sync(play, source, refusing_daemon.port)

    result = run.task("sync")
    assert run.returncode != 0 and result["failed"] is True
    assert source + "/a/b" in result["msg"] and "FULL refused" in result["msg"], result["msg"]
    assert "1 of 3 datasets failed" in result["msg"]
    failed = [e for e in result["datasets"] if e["action"] == "failed"]
    assert [e["suffix"] for e in failed] == ["/a/b"] and "FULL refused" in failed[0]["error"]
    assert result["totals"]["failed"] == 1 and result["ok"] is False
    assert any("FULL refused" in line for line in result["log"]), result["log"]
    assert run.task("query") is None


def test_check_mode_predicts_the_failure_too(play, source, refusing_daemon):
    sync(play, source, refusing_daemon.port).ok("sync")
    diverge(source, "/a/b")

    result = sync(play, source, refusing_daemon.port, "--check").task("sync")

    assert result["failed"] is True and "FULL refused" in result["msg"] and result["planned"] is True
    assert zfstest.tree(refusing_daemon.root)["/a/b"] == ["s1"]


def test_fail_on_error_false_reports_the_failure_and_goes_on(play, source, refusing_daemon):
    sync(play, source, refusing_daemon.port).ok("sync")
    diverge(source, "/a/b")

    run = sync(play, source, refusing_daemon.port, fail_on_error=False)

    result = run.ok("sync")
    assert result["ok"] is False and result["totals"]["failed"] == 1
    assert any("FULL refused" in warning for warning in result["warnings"])
    run.ok("query")


def test_an_unreachable_receiver_fails_the_task_with_the_address(play, source):
    port = zfstest.free_port()

    result = sync(play, source, port).task("sync")

    assert result["failed"] is True
    assert "127.0.0.1 port %d" % port in result["msg"] and "refused" in result["msg"].lower(), result["msg"]
    assert result["peer"]["type"] is None and result["datasets"] == []


class OriginalReceiverStandIn:
    """Answers the probe as the original zfsync_recv does (``1:Unknown cmd
    xhello``, then closes) and records every frame it gets: the check mode
    must never send it anything else."""

    def __init__(self):
        self.frames = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(60)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        from zfsync import protocol

        while True:
            try:
                conn = self.listener.accept()[0]
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                frame = zfstest.recv_exact(conn, 512)
                self.frames.append(protocol.decode_frame(frame) if frame else "")
                if self.frames[-1].endswith(":xhello"):
                    conn.sendall(protocol.encode_frame("1:Unknown cmd xhello", 512))

    def close(self):
        self.listener.close()


def test_check_mode_against_an_original_receiver_sends_only_the_probe(play, source):
    original = OriginalReceiverStandIn()
    try:
        result = sync(play, source, original.port, "--check").ok("sync")
    finally:
        original.close()

    assert original.frames == [":xhello"]
    assert result["changed"] is True and result["peer"]["type"] == "original"
    assert {e["action"] for e in result["datasets"]} == {"unknown"}
    assert result["totals"]["unknown"] == 3
    assert any("original zfsync receiver" in warning for warning in result["warnings"])
