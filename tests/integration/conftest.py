"""Fixtures for tests against real ZFS: the ZFS service, pools, daemons."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zfstest  # noqa: E402


@pytest.fixture(scope="session")
def zfs_impl():
    """"openzfs" or "zfs-fuse"; starts zfs-fuse when the kernel has no ZFS."""
    return zfstest.ensure_zfs()


@pytest.fixture
def pools(zfs_impl, tmp_path):
    factory = zfstest.Pools(str(tmp_path))
    yield factory
    factory.destroy_all()


@pytest.fixture
def sender_pool(pools):
    return pools.create("s")


@pytest.fixture
def receiver_pool(pools):
    return pools.create("r")


@pytest.fixture
def daemon(receiver_pool, tmp_path):
    """A running zfsync_recv for RECEIVER_POOL/recv/remote."""
    zfstest.zfs("create", receiver_pool + "/recv")
    workdir = tmp_path / "recv"
    workdir.mkdir()
    started = zfstest.Daemon(receiver_pool + "/recv/remote", zfstest.free_port(), str(workdir)).start()
    yield started
    if started.alive:
        started.stop()
