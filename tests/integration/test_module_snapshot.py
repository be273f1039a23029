"""zfsync.zfsync.snapshot through ansible-playbook on localhost against a real
file-backed pool: what a user's play sees (changed, check, diff, failures).

Self-contained pools (names starting ``h3``) until the shared fixtures in
conftest.py take over. Needs the controller venv (tools/venv.sh)."""
import itertools
import json
import os
import subprocess

import pytest

import zfstest
from zfstest import zfs

REPO = zfstest.REPO
VENV_BIN = os.path.join(os.environ.get("ZFSYNC_VENV", os.path.join(REPO, ".venv")), "bin")
_counter = itertools.count()


@pytest.fixture
def dataset(tmp_path):
    """POOL/data with /a and /a/b on a fresh pool."""
    zfstest.ensure_zfs()
    pool = "h3m%d%d" % (os.getpid() % 100000, next(_counter))
    image = tmp_path / (pool + ".img")
    with open(image, "wb") as handle:
        handle.truncate(128 << 20)
    zfstest.run(["zpool", "create", "-m", "/" + pool, pool, str(image)])
    try:
        zfs("create", "-p", pool + "/data/a/b")
        yield pool + "/data"
    finally:
        zfstest.destroy_retrying(["zpool", "destroy", "-f", pool])


@pytest.fixture
def play(tmp_path):
    if not os.path.exists(os.path.join(VENV_BIN, "ansible-playbook")):
        pytest.fail("no controller venv at %s: run tools/venv.sh" % os.path.dirname(VENV_BIN))
    return SnapshotPlay(str(tmp_path))


class SnapshotPlay:
    """One task of zfsync.zfsync.snapshot with the given arguments; returns its result."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.inventory = os.path.join(workdir, "inventory.yml")
        with open(self.inventory, "w") as handle:
            # Interpreter discovery picks a broken pyenv shim here: name it.
            handle.write("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
                         "      ansible_python_interpreter: /usr/bin/python3\n")

    def run(self, *options, expect_failure=False, **arguments):
        playbook = os.path.join(self.workdir, "snapshot.yml")
        with open(playbook, "w") as handle:
            json.dump([{"name": "snapshot under test", "hosts": "localhost", "gather_facts": False,
                        "tasks": [{"name": "snapshot", "zfsync.zfsync.snapshot": arguments}]}], handle)
        env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8", ANSIBLE_NOCOLOR="1",
                   ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, "collections"),
                   ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_RETRY_FILES_ENABLED="0",
                   ANSIBLE_LOCAL_TEMP=os.path.join(self.workdir, "tmp"))
        proc = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), "-i", self.inventory, playbook]
                              + list(options), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, env=env, timeout=300, check=False)
        try:
            output = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError("no JSON from ansible-playbook (exit %d):\n%s\n%s"
                                 % (proc.returncode, proc.stdout, proc.stderr))
        result = output["plays"][0]["tasks"][0]["hosts"]["localhost"]
        assert bool(result.get("failed")) is expect_failure, json.dumps(result, indent=1) + proc.stderr
        return result


def snaps(dataset):
    return zfstest.tree(dataset)[""]


def make(dataset, *names):
    for name in names:
        zfs("snapshot", "-r", "%s@%s" % (dataset, name))


def test_takes_a_recursive_zfsyncron_snapshot(play, dataset):
    result = play.run(dataset=dataset)

    assert result["changed"] is True
    assert result["snapshot_class"] == "D"
    [created] = result["created"]
    name = created.split("@", 1)[1]
    assert created == dataset + "@" + name and name.endswith("_D")
    assert zfstest.tree(dataset) == {"": [name], "/a": [name], "/a/b": [name]}
    assert result["snapshots"] == [name] and result["destroyed"] == []


def test_recursive_false_snapshots_the_dataset_only(play, dataset):
    result = play.run(dataset=dataset, recursive=False, name="only-me")

    assert result["created"] == [dataset + "@only-me"]
    assert zfstest.tree(dataset) == {"": ["only-me"], "/a": [], "/a/b": []}


def test_fixed_name_is_taken_once(play, dataset):
    first = play.run(dataset=dataset, name="before-upgrade")
    second = play.run(dataset=dataset, name="before-upgrade")

    assert first["changed"] is True and first["created"] == [dataset + "@before-upgrade"]
    assert second["changed"] is False and second["created"] == []
    assert snaps(dataset) == ["before-upgrade"]


def test_inside_min_interval_no_new_snapshot_is_taken(play, dataset):
    first = play.run(dataset=dataset, min_interval=3600)
    second = play.run(dataset=dataset, min_interval=3600)

    assert first["changed"] is True
    assert second["changed"] is False and second["created"] == [] and second["snapshot_class"] is None
    assert len(snaps(dataset)) == 1


def test_retention_trims_every_class_recursively_and_spares_other_names(play, dataset):
    make(dataset, "200101-000000_D", "manual", "200102-000000_D", "200103-000000_D",
         "200103-010000_H", "200103-010100_M", "200103-010101_S", "200103-010102_S")

    result = play.run(dataset=dataset, name="keep-me", retention=dict(daily=1, secondly=1))

    assert result["created"] == [dataset + "@keep-me"]
    assert result["destroyed"] == [dataset + "@200101-000000_D", dataset + "@200102-000000_D",
                                   dataset + "@200103-010101_S"]
    expected = ["manual", "200103-000000_D", "200103-010000_H", "200103-010100_M", "200103-010102_S", "keep-me"]
    assert zfstest.tree(dataset) == {"": expected, "/a": expected, "/a/b": expected}
    assert result["snapshots"] == expected


def test_retention_run_again_changes_nothing(play, dataset):
    make(dataset, "200101-000000_D", "200102-000000_D", "200103-000000_D")
    play.run(dataset=dataset, name="n", retention=dict(daily=2))

    again = play.run(dataset=dataset, name="n", retention=dict(daily=2))

    assert again["changed"] is False and again["destroyed"] == []


def test_check_mode_predicts_and_changes_nothing(play, dataset):
    make(dataset, "200101-000000_D", "200102-000000_D", "200103-000000_D")

    result = play.run("--check", dataset=dataset, retention=dict(daily=2))

    assert result["changed"] is True
    [created] = result["created"]
    assert created.endswith("_D")  # the newest is from 2020
    assert result["destroyed"] == [dataset + "@200101-000000_D", dataset + "@200102-000000_D"]
    assert snaps(dataset) == ["200101-000000_D", "200102-000000_D", "200103-000000_D"]


def test_diff_shows_the_snapshot_lists(play, dataset):
    make(dataset, "200101-000000_D", "200102-000000_D")

    result = play.run("--diff", dataset=dataset, name="n", retention=dict(daily=1))

    assert result["diff"]["before"] == "200101-000000_D\n200102-000000_D\n"
    assert result["diff"]["after"] == "200102-000000_D\nn\n"
    assert result["diff"]["before_header"] == "snapshots of " + dataset


def test_missing_dataset_fails_and_says_which(play, dataset):
    result = play.run(dataset=dataset + "/nope", expect_failure=True)

    assert result["msg"] == "dataset %s/nope does not exist" % dataset


def test_zfs_failure_says_what_zfs_printed(play, dataset):
    zfs("snapshot", dataset + "/a@taken")  # in the way of the recursive snapshot

    result = play.run(dataset=dataset, name="taken", expect_failure=True)

    assert result["msg"].startswith("cannot take the snapshot %s@taken: " % dataset)
    assert "exists" in result["stderr"]
    assert snaps(dataset) == []


@pytest.mark.parametrize("arguments, message", [
    (dict(name="a:b"), "cannot be used"),
    (dict(retention=dict(daily=-1)), "retention daily must be a whole number >= 0"),
    (dict(min_interval=-5), "min_interval must be 0 or more"),
    (dict(name="n", min_interval=5), "mutually exclusive"),
])
def test_bad_arguments_fail_and_change_nothing(play, dataset, arguments, message):
    result = play.run(dataset=dataset, expect_failure=True, **arguments)

    assert message in result["msg"]
    assert snaps(dataset) == []
