"""After side_effect (data written, snapshot molecule-1, sync.yml): the
receiver's tree is the sender's, dataset for dataset and snapshot for
snapshot (same guids), with the same file contents, and nothing is left in
the receive buffer."""

from conftest import RECEIVER_ROOT, SENDER_ROOT, receiver_checksums, run, sender_checksums, tree


def test_same_datasets_and_snapshots(sender, receiver):
    source = tree(sender, SENDER_ROOT)
    assert {"", "/www", "/db", "/db/logs"} <= set(source)
    assert all("molecule-1" in [snapshot for snapshot, guid in snaps] for snaps in source.values())
    assert tree(receiver, RECEIVER_ROOT) == source


def test_same_file_contents(sender, receiver):
    source = sender_checksums(sender, "molecule-1")
    assert "/db/table.bin" in source and "/top.bin" in source
    assert receiver_checksums(receiver, "molecule-1") == source


def test_buffer_is_empty(receiver):
    result = receiver.run("zfs list -H -o name -r %s.zfsyncbuffer" % RECEIVER_ROOT)
    if result.rc != 0:
        assert "does not exist" in result.stderr
    else:
        assert result.stdout.split() == [RECEIVER_ROOT + ".zfsyncbuffer"]


def test_no_error_flags(receiver):
    assert run(receiver, "ls -A /var/run/zfshad 2>/dev/null || true").split() == []
