"""zfsync.zfsync.receiver through ansible-playbook on localhost, against a
real file-backed pool, with ``service_manager: none`` (a detached daemon with
a pid file): what a user's play sees.

Needs the controller venv (tools/venv.sh) for ansible-playbook and the
ansible.posix.json callback, and ZFS (the ``pools`` fixture starts zfs-fuse
when the kernel has none)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

import zfstest

REPO = zfstest.REPO
VENV_BIN = os.path.join(os.environ.get("ZFSYNC_VENV", os.path.join(REPO, ".venv")), "bin")
PLAYBOOK = """
- name: Receiver under test
  hosts: localhost
  gather_facts: false
  tasks:
    - name: receiver
      zfsync.zfsync.receiver:
        dataset: "{{ zfsync_dataset }}"
        port: "{{ zfsync_port | int }}"
        threads: 2
        service_manager: none
        prefix: "{{ zfsync_workdir }}/prefix"
        pid_file: "{{ zfsync_workdir }}/zfsync_recv.pid"
        log_file: "{{ zfsync_workdir }}/zfshad.log"
        flag_dir: "{{ zfsync_workdir }}/flags"
        client_roots: "{{ zfsync_client_roots | default(omit) }}"
        max_connections: "{{ zfsync_max_connections | default(omit) }}"
        max_per_client: "{{ zfsync_max_per_client | default(omit) }}"
        first_request_timeout: "{{ zfsync_first_request_timeout | default(omit) }}"
        state: "{{ zfsync_state | default('present') }}"
"""


@pytest.fixture(scope="session")
def collections_path(tmp_path_factory):
    """The collection as users get it: built and installed (--no-deps) once
    per session, which also freezes it while the checkout is being edited."""
    if not os.path.exists(os.path.join(VENV_BIN, "ansible-playbook")):
        pytest.fail("no controller venv at %s: run tools/venv.sh" % os.path.dirname(VENV_BIN))
    base = tmp_path_factory.mktemp("collection")
    galaxy = os.path.join(VENV_BIN, "ansible-galaxy")
    ansible([galaxy, "collection", "build", "--output-path", str(base / "dist"), REPO])
    artifact = [str(p) for p in (base / "dist").iterdir() if p.name.endswith(".tar.gz")][0]
    ansible([galaxy, "collection", "install", "--no-deps", "--force", "-p", str(base / "tree"), artifact])
    return str(base / "tree")


def ansible(argv, check=True, **env):
    """Run an Ansible command line; Ansible insists on a UTF-8 locale."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          env=dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8", **env), timeout=300, check=False)
    if check and proc.returncode != 0:
        raise AssertionError("%s failed (%d): %s%s" % (" ".join(argv), proc.returncode, proc.stdout, proc.stderr))
    return proc


class ReceiverPlay:
    """Runs the playbook above and returns the receiver task's result."""

    def __init__(self, pool: str, workdir: str, collections: str):
        self.collections = collections
        self.pool = pool
        self.dataset = pool + "/recv"
        self.workdir = workdir
        self.port = zfstest.free_port()
        self.playbook = os.path.join(workdir, "receiver.yml")
        self.inventory = os.path.join(workdir, "inventory.yml")
        with open(self.playbook, "w") as handle:
            handle.write(PLAYBOOK)
        self.config = os.path.join(workdir, "ansible.cfg")
        with open(self.config, "w") as handle:
            handle.write("[defaults]\nretry_files_enabled = false\n")
        with open(self.inventory, "w") as handle:
            # Interpreter discovery picks a broken pyenv shim here: name it.
            handle.write("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
                         "      ansible_python_interpreter: /usr/bin/python3\n")

    @property
    def prefix(self) -> str:
        return os.path.join(self.workdir, "prefix")

    @property
    def pid_file(self) -> str:
        return os.path.join(self.workdir, "zfsync_recv.pid")

    @property
    def launcher(self) -> str:
        return os.path.join(self.prefix, "bin", "zfsync_recv")

    def run(self, *options: str, **variables) -> dict:
        extra = dict(zfsync_dataset=self.dataset, zfsync_port=self.port, zfsync_workdir=self.workdir)
        extra.update(("zfsync_" + k, v) for k, v in variables.items())
        argv = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", self.inventory, self.playbook,
                "-e", json.dumps(extra)] + list(options)
        proc = ansible(argv, check=False, ANSIBLE_COLLECTIONS_PATH=self.collections,
                       ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_CONFIG=self.config,
                       ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=os.path.join(self.workdir, "tmp"))
        try:
            output = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError("ansible-playbook printed no JSON (exit %d):\n%s\n%s"
                                 % (proc.returncode, proc.stdout, proc.stderr))
        task = [t for t in output["plays"][0]["tasks"] if t["task"]["name"] == "receiver"][0]
        result = task["hosts"]["localhost"]
        assert proc.returncode == 0 and not result.get("failed"), json.dumps(result, indent=2) + proc.stderr
        return result

    def daemon_pid(self):
        try:
            with open(self.pid_file) as handle:
                pid = int(handle.read().strip())
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                argv = handle.read().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if self.launcher.encode() in argv else None

    def stop_leftover_daemon(self) -> None:
        pid = self.daemon_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while self.daemon_pid() == pid and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.daemon_pid() == pid:
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def play(pools, tmp_path, collections_path):
    pool = pools.create("rm")
    workdir = tmp_path / "play"
    workdir.mkdir()
    receiver = ReceiverPlay(pool, str(workdir), collections_path)
    yield receiver
    receiver.stop_leftover_daemon()  # before the pool goes


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


def dataset_property(name: str, prop: str) -> str:
    return zfstest.zfs("get", "-H", "-o", "value", prop, name).strip()


def test_first_run_installs_and_starts_the_daemon(play):
    result = play.run()
    assert result["changed"] is True
    assert result["service"]["running"] is True
    assert result["service"]["pid"] == play.daemon_pid()
    assert accepts_connections(play.port)
    assert os.access(play.launcher, os.X_OK)
    assert os.path.exists(os.path.join(play.prefix, "lib", "zfsync", "zfsync", "protocol.py"))
    buffer = play.dataset + ".zfsyncbuffer"
    assert result["buffer_dataset"] == buffer
    assert dataset_property(buffer, "canmount") == "off"
    assert dataset_property(buffer, "mountpoint") == "none"


def test_second_run_reports_no_change_and_keeps_the_daemon(play):
    first = play.run()
    second = play.run()
    assert second["changed"] is False, json.dumps(second, indent=1)
    assert second["changed_files"] == [] and second["service"]["actions"] == []
    assert second["service"]["pid"] == first["service"]["pid"] == play.daemon_pid()


def test_check_mode_predicts_the_install_and_changes_nothing(play):
    result = play.run("--check")
    assert result["changed"] is True
    assert result["service"]["actions"] == ["start"]
    assert play.launcher in result["changed_files"]
    assert not os.path.exists(play.prefix)
    assert play.daemon_pid() is None
    assert not zfstest.zfs("list", "-H", "-o", "name", "-r", play.pool).strip().count(".zfsyncbuffer")


def test_check_mode_predicts_a_restart_without_restarting(play):
    pid = play.run()["service"]["pid"]
    old_port = play.port
    play.port = zfstest.free_port()
    result = play.run("--check")
    assert result["changed"] is True and result["service"]["actions"] == ["restart"]
    assert play.daemon_pid() == pid and accepts_connections(old_port)


def test_diff_shows_the_changed_command_line_and_the_restart_happens(play):
    before = play.run()["service"]["pid"]
    old_port = play.port
    play.port = zfstest.free_port()
    result = play.run("--diff")
    service_diff = [d for d in result["diff"] if d["before_header"].startswith("service zfsync-recv")][0]
    assert "-p %d " % old_port in service_diff["before"]
    assert "-p %d " % play.port in service_diff["after"]
    assert result["service"]["actions"] == ["restart"]
    assert result["service"]["pid"] != before and play.daemon_pid() == result["service"]["pid"]
    assert accepts_connections(play.port)


def test_diff_of_a_first_install_shows_the_launchers_and_the_engine(play):
    result = play.run("--diff", "--check")
    headers = [d["after_header"] for d in result["diff"]]
    assert play.launcher in headers
    assert any(h.endswith("(engine %s)" % result["version"]) for h in headers)
    launcher_diff = [d for d in result["diff"] if d["after_header"] == play.launcher][0]
    assert launcher_diff["before"] == "" and "main_recv" in launcher_diff["after"]


def test_absent_stops_the_daemon_and_keeps_the_datasets(play):
    play.run()
    zfstest.zfs("create", "-p", play.dataset + "/kept")
    zfstest.zfs("snapshot", play.dataset + "/kept@s1")
    result = play.run(state="absent")
    assert result["changed"] is True and result["service"]["actions"] == ["stop"]
    assert play.daemon_pid() is None and not os.path.exists(play.pid_file)
    assert not os.path.exists(play.launcher)
    names = zfstest.zfs("list", "-H", "-o", "name", "-t", "all", "-r", play.pool).split()
    assert {play.dataset, play.dataset + "/kept", play.dataset + "/kept@s1", play.dataset + ".zfsyncbuffer"} <= set(names)
    assert play.run(state="absent")["changed"] is False


def send_with_installed_sender(play, pools, *options):
    """A tree data, data/child with @s1, sent by the zfsync_send the module
    installed; returns the snapshots below the receiver root afterwards."""
    sender = pools.create("sm")
    zfstest.zfs("create", "-p", sender + "/data/child")
    zfstest.zfs("snapshot", "-r", sender + "/data@s1")
    send = subprocess.run([os.path.join(play.prefix, "bin", "zfsync_send"), "-p", str(play.port)] + list(options)
                          + [sender + "/data", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=180, check=False)
    assert send.returncode == 0, send.stdout + send.stderr
    return zfstest.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", play.dataset).split()


def test_the_installed_daemon_receives_a_tree_from_the_installed_sender(play, pools):
    play.run()
    names = send_with_installed_sender(play, pools, "-t", "2")
    assert {play.dataset + "@s1", play.dataset + "/child@s1"} <= set(names)


def test_client_roots_and_connection_bounds_reach_the_running_daemon(play, pools):
    result = play.run(client_roots=["127.0.0.2=two"], max_connections=8, max_per_client=4, first_request_timeout=5)
    with open("/proc/%d/cmdline" % result["service"]["pid"], "rb") as handle:
        argv = [a.decode() for a in handle.read().split(b"\0")]
    for flag, value in (("--client-root", "127.0.0.2=two"), ("--max-connections", "8"), ("--max-per-client", "4"),
                        ("--first-request-timeout", "5")):
        assert argv[argv.index(flag) + 1] == value
    names = send_with_installed_sender(play, pools, "-i", "127.0.0.2")
    assert {play.dataset + "/two@s1", play.dataset + "/two/child@s1"} == set(names)
