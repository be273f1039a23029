"""The roles zfsync.zfsync.receiver and zfsync.zfsync.sender and the fleet
playbooks (site.yml, sync.yml) through ansible-playbook on localhost,
against real file-backed pools: first run changes, second run changes
nothing, --check changes nothing, --diff shows the cron line, absent
cleans up and keeps the data; and the cron line the sender role writes
really replicates the tree when run the way cron runs it.

The receiver runs with service_manager none (a detached daemon with a pid
file); the sender's cron file goes to a temporary cron dir, where no cron
daemon reads it."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time

import pytest

import zfstest
from ansibleplay import ANSIBLE_PLAYBOOK, Playbook
from zfstest import zfs

ROLE_PLAY = """
- name: Role under test
  hosts: localhost
  gather_facts: false
  roles:
    - role: zfsync.zfsync.{role}
"""


@pytest.fixture
def pools(zfs_impl, tmp_path):
    """The shared pool factory, with this suite's pool names (h5...)."""
    factory = zfstest.Pools(str(tmp_path), prefix="h5")
    yield factory
    factory.destroy_all()


def changed_tasks(run):
    """Names of the tasks that reported a change (or would, in check mode)."""
    names = []
    for play in run.output["plays"]:
        for task in play["tasks"]:
            result = task["hosts"].get("localhost", {})
            if result.get("changed"):
                names.append(task["task"]["name"])
    return names


def succeeded(run):
    stats = run.output["stats"]["localhost"]
    assert run.returncode == 0 and stats["failures"] == 0 and stats["unreachable"] == 0, run.describe()
    return stats


def task_result(run, suffix):
    """The result of the task whose name ends with ``suffix`` (role tasks
    are named "<role> : <task>")."""
    for play in run.output["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"].endswith(suffix):
                return task["hosts"]["localhost"]
    raise AssertionError("no task %r ran:\n%s" % (suffix, run.describe()))


def stop_daemon(pid_file):
    """Teardown, also when a test failed half-way: the daemon by its pid file."""
    try:
        with open(pid_file) as handle:
            pid = int(handle.read().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def cron_job_command(cron_file):
    """The job's command and environment, as cron would run it: the
    variable lines of the file, the command after the five time fields and
    the user, with cron's ``\\%`` unescaped."""
    env, command = {}, None
    with open(cron_file) as handle:
        for line in handle.read().splitlines():
            if not line or line.startswith("#"):
                continue
            if "=" in line.split(" ", 1)[0]:
                key, value = line.split("=", 1)
                env[key] = value
            else:
                command = line.split(" ", 6)[6].replace("\\%", "%")
    assert command is not None, "no job line in %s" % cron_file
    return command, env


# -- the receiver role -----------------------------------------------------------------

@pytest.fixture
def receiver_setup(receiver_pool, tmp_path):
    workdir = tmp_path / "receiver"
    workdir.mkdir()
    variables = dict(
        zfsync_receiver_dataset=receiver_pool + "/backup/hosts",
        zfsync_receiver_port=zfstest.free_port(),
        zfsync_receiver_service_manager="none",
        zfsync_receiver_prefix=str(workdir / "prefix"),
        zfsync_receiver_pid_file=str(workdir / "zfsync_recv.pid"),
        zfsync_receiver_log_file=str(workdir / "zfshad.log"),
        zfsync_receiver_flag_dir=str(workdir / "flags"),
        zfsync_receiver_threads=2,
    )
    play = Playbook(str(workdir), ROLE_PLAY.format(role="receiver"))
    yield play, variables
    stop_daemon(variables["zfsync_receiver_pid_file"])


def test_receiver_role_check_mode_predicts_and_creates_nothing(receiver_setup, receiver_pool):
    play, variables = receiver_setup

    run = play.run("--check", extra_vars=variables)

    succeeded(run)
    assert changed_tasks(run), "check mode predicted no change on a bare host"
    assert zfs("list", "-H", "-o", "name", "-r", receiver_pool).split() == [receiver_pool]
    assert not os.path.exists(variables["zfsync_receiver_prefix"])
    assert not os.path.exists(variables["zfsync_receiver_pid_file"])


def test_receiver_role_sets_up_a_receiver_once_and_then_changes_nothing(
        receiver_setup, receiver_pool, sender_pool, tmp_path):
    play, variables = receiver_setup
    parent = receiver_pool + "/backup"

    first = play.run(extra_vars=variables)
    succeeded(first)
    assert any(name.endswith("Deploy the zfsync receiver daemon") for name in changed_tasks(first))
    value, source = zfs("get", "-H", "-o", "value,source", "readonly", parent).split()
    # zfs-fuse always mounts read-write and shows that as source "temporary".
    assert value == "on" or source == "temporary", (value, source)
    zfstest.wait_for_port(variables["zfsync_receiver_port"])

    second = play.run(extra_vars=variables)
    assert changed_tasks(second) == [] and succeeded(second)["changed"] == 0
    check = play.run("--check", "--diff", extra_vars=variables)
    assert changed_tasks(check) == [] and succeeded(check)["changed"] == 0

    # The daemon the role deployed, under its read-only parent, takes a tree.
    source_root = zfstest.make_tree(sender_pool, "src", children=("/a",), data_kib=16)
    zfs("snapshot", "-r", source_root + "@s1")
    sent = zfstest.send(source_root, variables["zfsync_receiver_port"])
    assert sent.returncode == 0, sent.stdout + sent.stderr
    zfstest.assert_same_tree(source_root, variables["zfsync_receiver_dataset"], str(tmp_path))

    absent = play.run(extra_vars=dict(variables, zfsync_receiver_state="absent"))
    succeeded(absent)
    assert not os.path.exists(variables["zfsync_receiver_pid_file"])
    assert zfstest.tree(variables["zfsync_receiver_dataset"]) == {"": ["s1"], "/a": ["s1"]}


# -- the sender role -----------------------------------------------------------------

@pytest.fixture
def sender_setup(sender_pool, daemon, tmp_path):
    """The sender role's variables for POOL/src -> the test daemon, its cron
    file in a temporary cron dir; cron itself is not installed for it."""
    workdir = tmp_path / "sender"
    workdir.mkdir()
    source_root = zfstest.make_tree(sender_pool, "src", children=("/a", "/a/b"), data_kib=16)
    variables = dict(
        zfsync_sender_dataset=source_root,
        zfsync_sender_receivers=[dict(host="127.0.0.1", port=daemon.port)],
        zfsync_sender_prefix=str(workdir / "prefix"),
        zfsync_sender_cron_dir=str(workdir / "cron.d"),
        zfsync_sender_log_file=str(workdir / "zfsyncron.log"),
        zfsync_sender_install_cron=False,
    )
    return Playbook(str(workdir), ROLE_PLAY.format(role="sender")), variables


def cron_file_of(variables):
    name = "zfsync-" + variables["zfsync_sender_dataset"].replace("/", "_")
    return os.path.join(variables["zfsync_sender_cron_dir"], name)


def test_sender_role_check_mode_predicts_and_writes_nothing(sender_setup):
    play, variables = sender_setup

    run = play.run("--check", "--diff", extra_vars=variables)

    succeeded(run)
    result = task_result(run, "Install the engine and the zfsyncron cron job")
    assert result["changed"] is True
    cron_diff = [d for d in result["diff"] if d["after_header"] == cron_file_of(variables)]
    assert cron_diff and cron_diff[0]["before"] == "" and result["job"]["line"] in cron_diff[0]["after"]
    assert not os.path.exists(variables["zfsync_sender_cron_dir"])
    assert not os.path.exists(variables["zfsync_sender_prefix"])


def test_sender_role_writes_the_cron_file_once_and_diff_shows_the_line(sender_setup, daemon):
    play, variables = sender_setup
    root = variables["zfsync_sender_dataset"]

    first = play.run("--diff", extra_vars=variables)
    succeeded(first)
    result = task_result(first, "Install the engine and the zfsyncron cron job")
    assert result["changed"] is True
    expected_line = ("* * * * * root %s/bin/zfsyncron -s 1 -m 4 -h 3 -d 2 -t 2 -w 1 -o %s %s 127.0.0.1:%d"
                     % (variables["zfsync_sender_prefix"], variables["zfsync_sender_log_file"], root, daemon.port))
    assert result["job"]["line"] == expected_line
    cron_diff = [d for d in result["diff"] if d["after_header"] == cron_file_of(variables)]
    assert expected_line in cron_diff[0]["after"].splitlines()
    with open(cron_file_of(variables)) as handle:
        assert handle.read().splitlines()[-1] == expected_line

    second = play.run(extra_vars=variables)
    assert changed_tasks(second) == [] and succeeded(second)["changed"] == 0
    check = play.run("--check", "--diff", extra_vars=variables)
    assert changed_tasks(check) == [] and succeeded(check)["changed"] == 0


def test_the_cron_line_snapshots_and_replicates_the_tree(sender_setup, daemon, tmp_path):
    play, variables = sender_setup
    root = variables["zfsync_sender_dataset"]
    succeeded(play.run(extra_vars=variables))
    command, env = cron_job_command(cron_file_of(variables))

    # As cron runs it: sh -c, the file's variables, an otherwise empty environment.
    proc = subprocess.run([env.get("SHELL", "/bin/sh"), "-c", command], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=300, check=False)

    assert proc.returncode == 0, "%s\n%s" % (command, proc.stdout)
    snapshots = zfstest.tree(root)[""]
    assert len(snapshots) == 1, snapshots
    zfstest.assert_same_tree(root, daemon.root, str(tmp_path))
    with open(variables["zfsync_sender_log_file"]) as handle:
        assert "zfsyncron done, exit 0" in handle.read()


def test_sender_role_absent_removes_the_cron_file_and_keeps_data_and_engine(sender_setup):
    play, variables = sender_setup
    root = variables["zfsync_sender_dataset"]
    succeeded(play.run(extra_vars=variables))
    zfs("snapshot", "-r", root + "@keep")
    before = zfstest.tree(root)

    absent = play.run("--diff", extra_vars=dict(variables, zfsync_sender_state="absent"))

    succeeded(absent)
    assert not os.path.exists(cron_file_of(variables))
    assert zfstest.tree(root) == before
    assert os.path.exists(os.path.join(variables["zfsync_sender_prefix"], "bin", "zfsyncron"))
    again = play.run(extra_vars=dict(variables, zfsync_sender_state="absent"))
    assert changed_tasks(again) == [] and succeeded(again)["changed"] == 0


def test_sender_role_without_receivers_fails_with_a_clear_message(sender_setup):
    play, variables = sender_setup

    run = play.run(extra_vars=dict(variables, zfsync_sender_receivers=[]))

    assert run.returncode != 0
    failed = task_result(run, "Stop when there is no receiver to send to")
    assert "zfsync_sender_receivers is empty" in failed["msg"]
    assert not os.path.exists(variables["zfsync_sender_cron_dir"])


# -- the fleet playbooks on one host ------------------------------------------------------

FLEET_INVENTORY = """
all:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: /usr/bin/python3
  children:
    zfsync_receivers:
      hosts:
        localhost:
    zfsync_senders:
      hosts:
        localhost:
"""


@pytest.fixture
def fleet(receiver_pool, sender_pool, tmp_path):
    """localhost in both groups: a receiver for POOL/backup/hosts and a
    sender of POOL/src to it, with the variables an inventory would hold."""
    workdir = tmp_path / "fleet"
    workdir.mkdir()
    port = zfstest.free_port()
    source_root = zfstest.make_tree(sender_pool, "src", children=("/a",), data_kib=16)
    variables = dict(
        zfsync_receiver_dataset=receiver_pool + "/backup/hosts", zfsync_receiver_port=port,
        zfsync_receiver_service_manager="none", zfsync_receiver_prefix=str(workdir / "prefix"),
        zfsync_receiver_pid_file=str(workdir / "zfsync_recv.pid"),
        zfsync_receiver_log_file=str(workdir / "zfshad.log"), zfsync_receiver_flag_dir=str(workdir / "flags"),
        zfsync_sender_dataset=source_root, zfsync_sender_receivers=[dict(host="127.0.0.1", port=port)],
        zfsync_sender_prefix=str(workdir / "prefix"), zfsync_sender_cron_dir=str(workdir / "cron.d"),
        zfsync_sender_log_file=str(workdir / "zfsyncron.log"), zfsync_sender_install_cron=False)
    yield workdir, variables
    stop_daemon(variables["zfsync_receiver_pid_file"])


def repo_playbook(workdir, name):
    with open(os.path.join(zfstest.REPO, "playbooks", name)) as handle:
        play = Playbook(str(workdir), handle.read(), name=name)
    with open(play.inventory, "w") as handle:
        handle.write(FLEET_INVENTORY)
    return play


def test_site_and_sync_playbooks_replicate_on_one_host(fleet, tmp_path):
    workdir, variables = fleet
    site = repo_playbook(workdir, "site.yml")

    assert changed_tasks(site.run(extra_vars=variables))
    second = site.run(extra_vars=variables)
    assert changed_tasks(second) == [] and succeeded(second)["changed"] == 0

    sync = repo_playbook(workdir, "sync.yml")
    first_sync = sync.run(extra_vars=dict(variables, zfsync_sync_snapshot="before-upgrade"))
    succeeded(first_sync)
    assert task_result(first_sync, "Sync to each receiver")["changed"] is True
    root = variables["zfsync_sender_dataset"]
    zfstest.assert_same_tree(root, variables["zfsync_receiver_dataset"], str(tmp_path))
    assert zfstest.tree(root)[""] == ["before-upgrade"]

    again = sync.run(extra_vars=dict(variables, zfsync_sync_snapshot="before-upgrade"))
    assert changed_tasks(again) == [] and succeeded(again)["changed"] == 0


def test_sync_playbook_lists_what_failed(fleet):
    workdir, variables = fleet
    root = variables["zfsync_sender_dataset"]
    zfs("snapshot", "-r", root + "@s1")
    closed_port = zfstest.free_port()
    sync = repo_playbook(workdir, "sync.yml")

    run = sync.run(extra_vars=dict(variables, zfsync_sender_receivers=[dict(host="127.0.0.1", port=closed_port)]))

    assert run.returncode != 0
    problems = task_result(run, "Collect the failed syncs and their datasets")["ansible_facts"]["zfsync_sync_problems"]
    assert [(p["receiver"], p["port"]) for p in problems] == [("127.0.0.1", closed_port)]
    assert problems[0]["errors"], problems
    failed = task_result(run, "Fail with the datasets that did not sync")
    assert failed.get("failed") is True and str(closed_port) in failed["msg"]


def test_the_demo_playbook_is_valid():
    """`make demo` runs playbooks/demo.yml; here it is only syntax-checked,
    since it owns fixed pool names (the demo itself runs in `make demo`)."""
    argv = [ANSIBLE_PLAYBOOK, "--syntax-check", "-i", os.path.join(zfstest.REPO, "playbooks", "inventory", "localhost.yml"),
            os.path.join(zfstest.REPO, "playbooks", "demo.yml")]
    env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(zfstest.REPO, "collections"))
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 0, " ".join(shlex.quote(a) for a in argv) + "\n" + proc.stdout
