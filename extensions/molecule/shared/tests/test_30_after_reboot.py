"""The receiver VM reboots: the pool comes back, the daemon starts by
itself and the next sync, after new data and a new snapshot on the sender,
is incremental for every dataset and converges again. Runs last (the
verifier runs the files in name order)."""

import time

from conftest import RECEIVER_ROOT, SENDER_ROOT, receiver_checksums, run, sender_checksums, sync_now, tree

REBOOT_TIMEOUT = 600  # boot to ssh under TCG: 45-150 s measured


def test_reboot_brings_the_daemon_back(receiver):
    booted = run(receiver, "cat /proc/sys/kernel/random/boot_id 2>/dev/null || sysctl -n kern.boottime")
    # The reboot action waits (bounded) for the VM to answer ssh again. Its
    # default `shutdown -r 0` needs logind over D-Bus, which the minimal lab
    # image has not: systemctl talks to systemd directly.
    args = "reboot_timeout=%d" % REBOOT_TIMEOUT
    if receiver.system_info.type != "freebsd":
        args += " reboot_command='systemctl reboot'"
    result = receiver.ansible("ansible.builtin.reboot", args, check=False, become=False)
    assert result.get("rebooted"), result
    assert run(receiver, "cat /proc/sys/kernel/random/boot_id 2>/dev/null || sysctl -n kern.boottime") != booted
    deadline = time.monotonic() + 120
    while not receiver.socket("tcp://0.0.0.0:3030").is_listening:
        assert time.monotonic() < deadline, "the daemon did not listen within 120 s of the reboot"
        time.sleep(3)
    if receiver.system_info.type != "freebsd":
        assert receiver.service("zfsync-recv").is_running


def test_next_sync_is_incremental(sender, receiver):
    # A new name each time, so that `molecule verify` can be run again.
    before = tree(sender, SENDER_ROOT)[""][-1][0]
    snapshot = "molecule-%d" % time.time()
    run(sender, "dd if=/dev/urandom of=/%s/www/%s.bin bs=64k count=2 2>/dev/null" % (SENDER_ROOT, snapshot))
    run(sender, "zfs snapshot -r %s@%s" % (SENDER_ROOT, snapshot))
    result = sync_now(sender)
    assert result["ok"], result
    actions = {d["dataset"]: d["action"] for d in result["datasets"]}
    assert set(actions.values()) == {"incremental"}, actions
    assert {d["from_snapshot"] for d in result["datasets"]} == {before}
    assert tree(receiver, RECEIVER_ROOT) == tree(sender, SENDER_ROOT)
    assert receiver_checksums(receiver, snapshot) == sender_checksums(sender, snapshot)


def test_sync_again_sends_nothing(sender):
    result = sync_now(sender)
    assert result["ok"], result
    assert result["counts"]["uptodate"] == len(result["datasets"]) > 0, result["counts"]
