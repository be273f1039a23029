"""The receiver VM reboots: the pool comes back, the daemon starts by
itself and the next sync, after new data and a new snapshot on the sender,
is incremental for every dataset and converges again. Runs last (the
verifier runs the files in name order)."""

import time

from conftest import RECEIVER_ROOT, SENDER_ROOT, lab_ssh, receiver_checksums, run, sender_checksums, sync_now, tree

REBOOT_TIMEOUT = 600  # boot to ssh under TCG: 45-150 s measured


def test_reboot_brings_the_daemon_back(receiver):
    boot_id = "cat /proc/sys/kernel/random/boot_id 2>/dev/null || sysctl -n kern.boottime"
    rc, booted = lab_ssh("receiver", boot_id, timeout=60)
    assert rc == 0 and booted.strip()
    # The reboot is started in the background so that the command returns
    # before sshd goes down (a command that dies with the VM would leave its
    # ssh waiting). systemctl talks to systemd directly: the minimal lab
    # image has no D-Bus for `shutdown`.
    rc, _out = lab_ssh("receiver", "nohup sh -c 'sleep 2; systemctl reboot 2>/dev/null || shutdown -r now' "
                       ">/dev/null 2>&1 &", timeout=60)
    assert rc == 0
    deadline = time.monotonic() + REBOOT_TIMEOUT
    while True:
        time.sleep(5)
        rc, now = lab_ssh("receiver", boot_id, timeout=30)
        if rc == 0 and now.strip() and now != booted:
            break
        assert time.monotonic() < deadline, "the receiver VM was not back within %d s" % REBOOT_TIMEOUT
    # Testinfra's multiplexed ssh master of before the reboot is dead; it
    # gives up within 30 s (ServerAlive in molecule.yml), then reconnects.
    deadline = time.monotonic() + 180
    while lab_ssh("receiver", "ss -ltn 2>/dev/null | grep -q ':3030 ' || sockstat -4 -l -p 3030 | grep -q 3030",
                  timeout=30)[0] != 0:
        assert time.monotonic() < deadline, "the daemon did not listen within 180 s of the reboot"
        time.sleep(3)
    assert receiver.socket("tcp://0.0.0.0:3030").is_listening
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
