"""The local sandbox: two file-backed pools, a receiver daemon on 127.0.0.1,
a dataset tree with data, snapshots taken and synced twice (full, then
incremental), both trees printed side by side.

    python3 tools/demo.py up      # build (or reuse) and sync
    python3 tools/demo.py clean   # stop the receiver, destroy the pools

Everything lives in .sandbox/ of the checkout and in the two pools
zfsyncdemo_src / zfsyncdemo_dst; nothing else on the host is touched.
"""
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANDBOX = os.path.join(REPO, ".sandbox")
BIN = os.path.join(REPO, "bin")
SRC_POOL, DST_POOL = "zfsyncdemo_src", "zfsyncdemo_dst"
SENDER_ROOT = SRC_POOL + "/data"
RECEIVER_ROOT = DST_POOL + "/backup/data"
PORT = int(os.environ.get("ZFSYNC_DEMO_PORT", "30303"))
PID_FILE = os.path.join(SANDBOX, "zfsync_recv.pid")
CHILDREN = ("/home", "/home/alice", "/home/bob", "/db", "/logs")


def sh(*argv, check=True):
    proc = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=600, env=dict(os.environ, LC_ALL="C"), check=False)
    if check and proc.returncode != 0:
        sys.exit("demo: %s failed: %s%s" % (" ".join(argv), proc.stdout, proc.stderr))
    return proc


def pool_exists(name):
    return sh("zpool", "list", "-H", "-o", "name", name, check=False).returncode == 0


def make_pool(name):
    if pool_exists(name):
        return
    image = os.path.join(SANDBOX, name + ".img")
    with open(image, "wb") as handle:
        handle.truncate(256 << 20)
    sh("zpool", "create", "-m", "/" + name, name, image)


def write(dataset, name, kib):
    mountpoint = sh("zfs", "get", "-H", "-o", "value", "mountpoint", dataset).stdout.strip()
    with open(os.path.join(mountpoint, name), "wb") as handle:
        handle.write(os.urandom(kib * 1024))


def receiver_pid():
    try:
        with open(PID_FILE) as handle:
            pid = int(handle.read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start_receiver():
    if receiver_pid():
        return
    sh("zfs", "create", "-p", DST_POOL + "/backup")
    sh("zfs", "set", "readonly=on", DST_POOL + "/backup")
    log = open(os.path.join(SANDBOX, "zfsync_recv.out"), "a")
    subprocess.Popen([sys.executable, os.path.join(BIN, "zfsync_recv"), "-v", "-p", str(PORT), "-i", "127.0.0.1",
                      "-o", os.path.join(SANDBOX, "zfshad.log"), "-d", os.path.join(SANDBOX, "flags"),
                      "--pid-file", PID_FILE, RECEIVER_ROOT],
                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    while not receiver_pid():
        if time.monotonic() > deadline:
            sys.exit("demo: the receiver did not start; see %s/zfsync_recv.out" % SANDBOX)
        time.sleep(0.1)


def sync(title):
    print("\n== %s" % title)
    proc = sh(sys.executable, os.path.join(BIN, "zfsync_send"), "-p", str(PORT), "-t", "3",
              "-o", os.path.join(SANDBOX, "zfsync_send.log"), SENDER_ROOT, "127.0.0.1", check=False)
    print(proc.stdout.strip() or proc.stderr.strip())
    if proc.returncode != 0:
        sys.exit("demo: sync failed:\n%s" % proc.stderr)


def listing(root):
    out = sh("zfs", "list", "-H", "-t", "filesystem,snapshot", "-o", "name,used", "-s", "name", "-r", root).stdout
    return [line.replace(root, "", 1).replace("\t", "  ") or "/" for line in out.splitlines()]


def side_by_side():
    left, right = listing(SENDER_ROOT), listing(RECEIVER_ROOT)
    width = max(len(l) for l in left + ["sender " + SENDER_ROOT]) + 4
    print("\n%-*s%s" % (width, "sender " + SENDER_ROOT, "receiver " + RECEIVER_ROOT))
    for index in range(max(len(left), len(right))):
        a = left[index] if index < len(left) else ""
        b = right[index] if index < len(right) else ""
        print("%-*s%s" % (width, a or "/", b or "/"))


def up():
    os.makedirs(SANDBOX, exist_ok=True)
    make_pool(SRC_POOL)
    make_pool(DST_POOL)
    if sh("zfs", "list", SENDER_ROOT, check=False).returncode != 0:
        for suffix in ("",) + CHILDREN:
            sh("zfs", "create", "-p", SENDER_ROOT + suffix)
            write(SENDER_ROOT + suffix, "seed.bin", 256)
    start_receiver()
    stamp = time.strftime("%y%m%d-%H%M%S")
    sh("zfs", "snapshot", "-r", "%s@demo-%s-a" % (SENDER_ROOT, stamp))
    sync("sync 1: every dataset the receiver lacks goes in full, in parallel")
    write(SENDER_ROOT + "/home/alice", "notes-%s.bin" % stamp, 512)
    sh("zfs", "snapshot", "-r", "%s@demo-%s-b" % (SENDER_ROOT, stamp))
    sync("sync 2: incremental, only the change travels")
    sync("sync 3: nothing new; nothing sent, nothing hangs")
    side_by_side()
    print("\nreceiver: 127.0.0.1 port %d, pid %s, log %s/zfshad.log" % (PORT, receiver_pid(), SANDBOX))
    print("remove everything with: make demo-clean")


def clean():
    pid = receiver_pid()
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 40
        while receiver_pid() and time.monotonic() < deadline:
            time.sleep(0.1)
    for pool in (SRC_POOL, DST_POOL):
        if pool_exists(pool):
            for _attempt in range(20):
                if sh("zpool", "destroy", "-f", pool, check=False).returncode == 0:
                    break
                time.sleep(0.5)
    if os.path.isdir(SANDBOX):
        for name in os.listdir(SANDBOX):
            path = os.path.join(SANDBOX, name)
            if os.path.isfile(path):
                os.unlink(path)
    print("demo: sandbox removed")


if __name__ == "__main__":
    {"up": up, "clean": clean}.get(sys.argv[1] if len(sys.argv) > 1 else "up", up)()
