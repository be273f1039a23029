"""zfsync.zfsync.receiver_info through ansible-playbook on localhost, on a
real receiver pool served by a real zfsync_recv from bin/: the facts a
monitoring play reads (daemon, replicas and their ages, error flags, the
buffer), and that json_query can select from them."""
from __future__ import annotations

import os
import time

import pytest

import zfstest
from ansibleplay import Playbook
from zfstest import zfs

PLAYBOOK = """
- name: Receiver facts under test
  hosts: localhost
  gather_facts: false
  tasks:
    - name: info
      zfsync.zfsync.receiver_info:
        dataset: "{{ zfsync_dataset }}"
        flag_dir: "{{ zfsync_flag_dir }}"
        pid_file: "{{ zfsync_pid_file | default(omit) }}"
        port: "{{ zfsync_port | default(omit) }}"
        probe: "{{ zfsync_probe | default(false) }}"
      register: zfsync_info

    - name: query
      ansible.builtin.set_fact:
        zfsync_synced: "{{ zfsync_info | community.general.json_query('datasets[?newest_snapshot==`s1`].suffix') }}"
        zfsync_flagged: "{{ zfsync_info | community.general.json_query('error_flags[?command==`sync`].suffix') }}"
        zfsync_waiting: "{{ zfsync_info | community.general.json_query('buffer[].target') }}"
"""


@pytest.fixture
def play(tmp_path):
    workdir = tmp_path / "play"
    workdir.mkdir()
    return Playbook(str(workdir), PLAYBOOK)


@pytest.fixture
def synced(sender_pool, daemon):
    """POOL/src with /a and /a/b at @s1, replicated by zfsync_send."""
    root = zfstest.make_tree(sender_pool, "src", children=("/a", "/a/b"), data_kib=16)
    zfs("snapshot", "-r", root + "@s1")
    proc = zfstest.send(root, daemon.port)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


def info(play, daemon, *options, **variables):
    extra = dict(zfsync_dataset=daemon.root, zfsync_flag_dir=daemon.flag_dir)
    extra.update(("zfsync_" + key, value) for key, value in variables.items())
    return play.run(*options, extra_vars=extra)


def wait_for(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not os.path.lexists(path):
        assert time.monotonic() < deadline, "%s did not appear within %s s" % (path, timeout)
        time.sleep(0.1)


def test_lists_the_replicas_with_their_newest_snapshot_and_its_age(play, synced, daemon):
    result = info(play, daemon).ok("info")

    assert result["changed"] is False and result["root"] == {"name": daemon.root, "exists": True}
    datasets = result["datasets"]
    assert [(d["name"], d["suffix"]) for d in datasets] == \
        [(daemon.root, ""), (daemon.root + "/a", "/a"), (daemon.root + "/a/b", "/a/b")]
    sent_at = int(zfs("get", "-H", "-p", "-o", "value", "creation", synced + "/a@s1"))
    replica = datasets[1]
    assert replica["newest_snapshot"] == "s1" and replica["snapshots"] == 1
    assert replica["created"] == sent_at
    assert replica["age_seconds"] == result["now"] - sent_at and 0 <= replica["age_seconds"] < 600
    assert all(d["error_flags"] == [] for d in datasets)
    assert result["error_flags"] == [] and result["buffer"] == []
    assert result["buffer_dataset"] == {"name": daemon.root + ".zfsyncbuffer", "exists": True}


def test_a_root_not_yet_received_is_reported_missing(play, daemon):
    result = info(play, daemon).ok("info")

    assert result["root"]["exists"] is False and result["datasets"] == []
    assert result["buffer_dataset"]["exists"] is True


def test_the_daemon_runs_when_its_pid_file_names_it_and_it_listens(play, daemon, tmp_path):
    pid_file = tmp_path / "zfsync_recv.pid"
    pid_file.write_text("%d\n" % daemon.proc.pid)

    result = info(play, daemon, pid_file=str(pid_file), port=daemon.port, probe=True).ok("info")

    facts = result["daemon"]
    assert facts["running"] is True and facts["pid"] == daemon.proc.pid
    assert any(arg.endswith("bin/zfsync_recv") for arg in facts["command"])
    assert facts["listening"] is True and "127.0.0.1" in facts["listen_addresses"]
    assert facts["type"] == "zfsync" and facts["version"] == result["version"]


def test_a_pid_file_naming_another_process_is_not_the_daemon(play, daemon, tmp_path):
    pid_file = tmp_path / "zfsync_recv.pid"
    pid_file.write_text("%d\n" % os.getpid())

    facts = info(play, daemon, pid_file=str(pid_file)).ok("info")["daemon"]

    assert facts["running"] is False and facts["pid"] is None


def test_a_stopped_daemon_is_not_running_and_not_listening(play, daemon):
    port = daemon.port
    daemon.stop()

    facts = info(play, daemon, port=port).ok("info")["daemon"]

    assert facts["running"] is False and facts["listening"] is False


def test_without_pid_file_or_port_running_is_unknown(play, daemon):
    assert info(play, daemon).ok("info")["daemon"]["running"] is None


def test_reports_the_error_flag_of_a_failed_sync_with_its_suffix_unquoted(play, synced, daemon):
    # A sync whose stream never comes: the receiver flags "/x y" as failed.
    with zfstest.raw_connection(daemon.port) as sock:
        assert zfstest.exchange(sock, "@s1:/x y:sync") == "0:NEW"
    flag = os.path.join(daemon.flag_dir, "%2Fx%20y.sync")
    wait_for(flag)

    result = info(play, daemon).ok("info")

    [entry] = result["error_flags"]
    assert entry["file"] == "%2Fx%20y.sync" and entry["path"] == flag
    assert entry["suffix"] == "/x y" and entry["command"] == "sync" and entry["dataset"] == daemon.root + "/x y"
    assert abs(entry["since"] - result["now"]) < 120


def test_reads_flags_in_the_original_layout_too(play, daemon):
    os.makedirs(os.path.join(daemon.flag_dir, "a"), exist_ok=True)
    os.symlink("ERROR", os.path.join(daemon.flag_dir, "a", "b.sync"))
    os.symlink("ERROR", os.path.join(daemon.flag_dir, "c.sync"))
    os.symlink("ERROR", os.path.join(daemon.flag_dir, ".sync"))

    flags = info(play, daemon).ok("info")["error_flags"]

    assert sorted((f["suffix"], f["command"]) for f in flags) == [("", "sync"), ("/a/b", "sync"), ("/c", "sync")]


def test_lists_buffered_copies_waiting_for_their_parent(play, sender_pool, daemon):
    # /p has no snapshot, so it is never sent, and /p/q cannot be placed.
    root = sender_pool + "/src"
    zfs("create", "-p", root + "/p/q")
    zfs("snapshot", root + "@s1")
    zfs("snapshot", root + "/p/q@s1")
    zfstest.send(root, daemon.port)

    result = info(play, daemon).ok("info")

    [entry] = result["buffer"]
    assert entry["suffix"] == "/p/q" and entry["target"] == daemon.root + "/p/q"
    assert entry["name"] == daemon.root + ".zfsyncbuffer/" + "/p/q".encode().hex().upper()
    assert entry["old"] is False and entry["newest_snapshot"] == "s1" and entry["snapshots"] == 1
    assert [(f["suffix"], f["command"]) for f in result["error_flags"]] == [("", "cleanbuffer")]
    assert result["datasets"][0]["error_flags"] == ["cleanbuffer"]


def test_json_query_selects_from_the_facts_in_a_play(play, synced, daemon):
    with zfstest.raw_connection(daemon.port) as sock:
        assert zfstest.exchange(sock, "@s1:/broken:sync") == "0:NEW"
    wait_for(os.path.join(daemon.flag_dir, "%2Fbroken.sync"))

    facts = info(play, daemon).ok("query")["ansible_facts"]

    assert facts["zfsync_synced"] == ["", "/a", "/a/b"]
    assert facts["zfsync_flagged"] == ["/broken"]
    assert facts["zfsync_waiting"] == []


def test_check_mode_reports_the_same_facts(play, synced, daemon):
    result = info(play, daemon, "--check").ok("info")

    assert result["changed"] is False and [d["suffix"] for d in result["datasets"]] == ["", "/a", "/a/b"]
