"""Parsing what zfs(8) prints, from outputs captured on OpenZFS 2.1.11 (lab
VM) and zfs-fuse 0.7 (this host); no zfs needed."""
from zfsync.zfs import Zfs

# `zfs send -p -I @a tank/src@c | zfs receive -v -F -u tank/dst`, both ZFSs.
INCREMENTAL = """receiving incremental stream of tank/src@b into tank/dst@b
received 312B stream in 1 seconds (312B/sec)
receiving incremental stream of tank/src@c into tank/dst@c
received 312B stream in 1 seconds (312B/sec)
"""
FULL = """receiving full stream of bench/vsrc@a into bench/vdst@a
received 43.9K stream in 1 seconds (43.9K/sec)
"""


def test_an_incremental_stream_names_every_snapshot_in_order():
    assert Zfs.received_snapshots(INCREMENTAL, "tank/dst") == ["b", "c"]


def test_a_full_stream_names_its_snapshot():
    assert Zfs.received_snapshots(FULL, "bench/vdst") == ["a"]


def test_lines_about_another_dataset_do_not_count():
    # A prefix of the target is not the target.
    assert Zfs.received_snapshots(INCREMENTAL, "tank/ds") is None
    assert Zfs.received_snapshots(INCREMENTAL.replace("tank/dst@c", "tank/dst/child@c"), "tank/dst") == ["b"]


def test_nothing_reported_means_unknown_not_empty():
    assert Zfs.received_snapshots("", "tank/dst") is None
    assert Zfs.received_snapshots("received 312B stream in 1 seconds (312B/sec)\n", "tank/dst") is None


def test_names_with_spaces_and_windows_line_ends():
    out = "receiving full stream of p/a b@s 1 into p/x y@s 1\r\n"
    assert Zfs.received_snapshots(out, "p/x y") == ["s 1"]


def test_properties_a_receive_could_not_set():
    # OpenZFS 2.1.11, a receiver user without the canmount and compression
    # permissions (tests/lab/test_least_privilege.py): zfs exits 0.
    stderr = ("cannot receive canmount property on tank/zfsync/replica/a: permission denied\n"
              "cannot receive compression property on tank/zfsync/replica/a: permission denied\n")
    assert Zfs.refused_properties(stderr) == {"canmount": "permission denied", "compression": "permission denied"}


def test_other_complaints_are_not_refused_properties():
    assert Zfs.refused_properties("cannot receive incremental stream: permission denied\n") == {}
    assert Zfs.refused_properties("") == {}
