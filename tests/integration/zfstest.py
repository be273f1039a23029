"""Real-ZFS test support: the ZFS service (kernel OpenZFS or zfs-fuse),
file-backed pools, a receiver daemon process, tree and content comparison.

Nothing here fakes zfs(8): every helper runs the real one."""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, "bin")
ENGINE_PATH = os.path.join(REPO, "plugins", "module_utils")
if ENGINE_PATH not in sys.path:
    sys.path.insert(0, ENGINE_PATH)

_counter = itertools.count()
ZFS_FUSE_PID = "/run/zfsync-tests-zfs-fuse.pid"


def run(argv: List[str], check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, LC_ALL="C")
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          env=env, universal_newlines=True, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError("%s failed (%d): %s%s" % (" ".join(argv), proc.returncode, proc.stdout, proc.stderr))
    return proc


def zfs(*args: str, check: bool = True) -> str:
    return run(["zfs"] + list(args), check=check).stdout


def kernel_has_zfs() -> bool:
    return os.path.isdir("/sys/module/zfs")


def zfs_fuse_running() -> bool:
    return run(["pgrep", "-x", "zfs-fuse"], check=False).returncode == 0


def ensure_zfs() -> str:
    """Kernel OpenZFS when loaded, otherwise start zfs-fuse. Fails (never
    skips) when neither can be had: an integration suite that silently
    skipped would count as passing without testing anything."""
    if shutil.which("zfs") is None or shutil.which("zpool") is None:
        raise RuntimeError("zfs/zpool not found: install zfs-fuse (apt-get install zfs-fuse) or OpenZFS")
    if kernel_has_zfs():
        return "openzfs"
    if not zfs_fuse_running():
        if shutil.which("zfs-fuse") is None:
            raise RuntimeError("no kernel ZFS and no zfs-fuse daemon: apt-get install zfs-fuse")
        # A pid file left by a zfs-fuse that died makes it refuse to start.
        if os.path.exists(ZFS_FUSE_PID):
            os.unlink(ZFS_FUSE_PID)
        run(["zfs-fuse", "-p", ZFS_FUSE_PID])
    deadline = time.monotonic() + 30
    while run(["zpool", "list"], check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("zfs-fuse did not come up within 30 s")
        time.sleep(0.2)
    return "zfs-fuse"


def destroy_retrying(args: List[str], attempts: int = 20) -> None:
    for _attempt in range(attempts):
        proc = run(args, check=False)
        if proc.returncode == 0 or "no such pool" in proc.stderr or "does not exist" in proc.stderr:
            return
        time.sleep(0.3)
    run(args)


class Pools:
    """File-backed pools with unique names, destroyed at teardown."""

    def __init__(self, directory: str, prefix: str = "zt"):
        self.directory = directory
        self.prefix = prefix  # lets concurrent suites tell their pools apart
        self.created: List[str] = []

    def create(self, tag: str = "p", size: str = "192M") -> str:
        name = "%s%s%d%d" % (self.prefix, tag, os.getpid() % 100000, next(_counter))
        path = os.path.join(self.directory, name + ".img")
        with open(path, "wb") as handle:
            handle.truncate(_size_bytes(size))
        run(["zpool", "create", "-m", "/" + name, name, path])
        self.created.append(name)
        return name

    def destroy_all(self) -> None:
        """zfs-fuse may call a pool busy for a while after its last user
        went away: retry for a minute, then export it, and only warn if it
        still stays (a leaked pool has a unique name and harms no test)."""
        import warnings

        for name in reversed(self.created):
            try:
                destroy_retrying(["zpool", "destroy", "-f", name], attempts=200)
            except AssertionError as error:
                if run(["zpool", "export", "-f", name], check=False).returncode != 0:
                    warnings.warn("test pool %s left behind: %s" % (name, error))
        self.created.clear()


def _size_bytes(size: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Daemon:
    """A real zfsync_recv process."""

    root: str
    port: int
    workdir: str
    proc: Optional[subprocess.Popen] = None
    extra: tuple = ()

    @property
    def log_file(self) -> str:
        return os.path.join(self.workdir, "zfshad.log")

    @property
    def flag_dir(self) -> str:
        return os.path.join(self.workdir, "flags")

    def start(self, *extra: str) -> "Daemon":
        self.extra = extra
        argv = [sys.executable, os.path.join(BIN, "zfsync_recv"), "-v", "-p", str(self.port), "-o", self.log_file,
                "-d", self.flag_dir, "-i", "127.0.0.1"] + list(self.extra) + [self.root]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("zfsync_recv did not stop within %s s after signal %d" % (timeout, sig))
        self.proc = None
        return code

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        with open(self.log_file) as handle:
            return handle.read()


def wait_for_port(port: int, proc: Optional[subprocess.Popen] = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError("daemon exited with %s: %s" % (proc.returncode, out))
        with contextlib.closing(socket.socket()) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError("nothing listens on port %d after %s s" % (port, timeout))


def send(root: str, port: int, *args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    argv = [sys.executable, os.path.join(BIN, "zfsync_send"), "-p", str(port)] + list(args) + [root, "127.0.0.1"]
    return run(argv, check=check, timeout=timeout)


def tree(root: str) -> Dict[str, List[str]]:
    """{suffix: [snapshots oldest first]} of root and its descendants."""
    names = zfs("list", "-H", "-o", "name", "-t", "filesystem,volume", "-r", root).split()
    snaps = zfs("list", "-H", "-o", "name", "-t", "snapshot", "-s", "createtxg", "-r", root).split("\n")
    result = {name[len(root):]: [] for name in names}
    for line in snaps:
        if "@" in line:
            dataset, snap = line.split("@", 1)
            result[dataset[len(root):]].append(snap)
    return result


def make_tree(pool: str, root: str, children=("/a", "/a/b", "/a/b/c", "/d"), data_kib: int = 64) -> str:
    """Create ``pool/root`` and its children with some random data."""
    base = "%s/%s" % (pool, root)
    zfs("create", "-p", base)
    for child in children:
        zfs("create", "-p", base + child)
    for suffix in ("",) + tuple(children):
        write_file(base + suffix, "data.bin", data_kib)
    return base


def mountpoint(dataset: str) -> str:
    return zfs("get", "-H", "-o", "value", "mountpoint", dataset).strip()


def write_file(dataset: str, name: str, kib: int) -> None:
    path = os.path.join(mountpoint(dataset), name)
    with open(path, "wb") as handle:
        handle.write(os.urandom(kib * 1024))


def snapshot_checksums(snapshot: str, workdir: str) -> Dict[str, str]:
    """sha256 of every file in a snapshot, read through a temporary clone
    (receiver copies are never mounted)."""
    pool = snapshot.split("/")[0]
    clone = "%s/verify%d" % (pool, next(_counter))
    where = os.path.join(workdir, clone.replace("/", "_"))
    os.makedirs(where, exist_ok=True)
    zfs("clone", "-o", "mountpoint=" + where, snapshot, clone)
    try:
        deadline = time.monotonic() + 20
        while zfs("get", "-H", "-o", "value", "mounted", clone).strip() != "yes":
            if time.monotonic() > deadline:
                zfs("mount", clone)
            time.sleep(0.1)
        sums = {}
        for directory, _dirs, files in os.walk(where):
            for name in files:
                path = os.path.join(directory, name)
                with open(path, "rb") as handle:
                    sums[os.path.relpath(path, where)] = hashlib.sha256(handle.read()).hexdigest()
        return sums
    finally:
        destroy_retrying(["zfs", "destroy", "-f", clone])


def assert_same_tree(sender_root: str, receiver_root: str, workdir: str, contents: bool = True) -> None:
    sent, received = tree(sender_root), tree(receiver_root)
    assert received == sent, "receiver tree %r differs from sender tree %r" % (received, sent)
    if contents:
        for suffix, snaps in sent.items():
            if snaps:
                newest = snaps[-1]
                assert snapshot_checksums("%s%s@%s" % (receiver_root, suffix, newest), workdir) == \
                    snapshot_checksums("%s%s@%s" % (sender_root, suffix, newest), workdir), suffix


@contextlib.contextmanager
def raw_connection(port: int, timeout: float = 10) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        yield sock
    finally:
        sock.close()


def connect_from(source: str, port: int, timeout: float = 10) -> socket.socket:
    """A connection to 127.0.0.1:port from the local address source (any
    of 127.0.0.0/8), for allow-list, per-client and sub-root tests."""
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def recv_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def exchange(sock: socket.socket, text: str, size: int = 512) -> str:
    """Send one frame, read one reply frame of the same size."""
    from zfsync import protocol

    sock.sendall(protocol.encode_frame(text, size))
    reply = recv_exact(sock, size)
    assert len(reply) == size, "reply of %d bytes, expected a %d-byte frame: %r" % (len(reply), size, reply[:40])
    return protocol.decode_frame(reply)


class Proxy:
    """A TCP relay on 127.0.0.1 between a sender and a receiver: throttles
    the sender->receiver direction, counts bytes, and can cut every
    connection, to put faults at a chosen point of a real stream."""

    def __init__(self, target_port: int, rate: float = 0.0):
        import threading

        self.target_port = target_port
        self.rate = rate  # bytes/s sender->receiver, 0 for unthrottled
        self.forwarded = 0
        self._lock = threading.Lock()
        self._sockets: List[socket.socket] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self._closed:
            try:
                client = self._listener.accept()[0]
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()  # as a refused connection looks to the sender
                continue
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = source.recv(16384 if not (upstream and self.rate) else max(1, int(self.rate // 20)))
                if not data:
                    break
                sink.sendall(data)
                if upstream:
                    with self._lock:
                        self.forwarded += len(data)
                    if self.rate:
                        time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every relayed connection at once (RST both ways)."""
        import struct

        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            # shutdown() first: close() alone neither wakes a thread blocked
            # in recv() on the socket nor sends anything while it is blocked.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def wait_forwarded(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.forwarded < count:
            if time.monotonic() > deadline:
                raise AssertionError("only %d of %d bytes relayed in %s s" % (self.forwarded, count, timeout))
            time.sleep(0.02)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()
