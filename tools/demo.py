"""The local sandbox, through Ansible: playbooks/demo.yml on localhost builds
two file-backed pools, a dataset tree with data, a receiver daemon on
127.0.0.1 (role zfsync.zfsync.receiver, no service manager), takes snapshots
(zfsync.zfsync.snapshot) and syncs three times (zfsync.zfsync.sync: full,
incremental, nothing new); then both trees are printed side by side.

    python3 tools/demo.py up      # build (or reuse) and sync
    python3 tools/demo.py clean   # stop the receiver (receiver module, state absent), destroy the pools

Uses the controller venv (.venv/bin/ansible-playbook; tools/venv.sh builds it
when it is missing or stale) and a running ZFS (tools/deps.sh).
Everything lives in .sandbox/ of the checkout and in the two pools
zfsyncdemo_src / zfsyncdemo_dst; nothing else on the host is touched.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANDBOX = os.path.join(REPO, ".sandbox")
VENV = os.environ.get("ZFSYNC_VENV", os.path.join(REPO, ".venv"))
ANSIBLE_PLAYBOOK = os.path.join(VENV, "bin", "ansible-playbook")
PLAYBOOK = os.path.join(REPO, "playbooks", "demo.yml")
INVENTORY = os.path.join(REPO, "playbooks", "inventory", "localhost.yml")
SRC_POOL, DST_POOL = "zfsyncdemo_src", "zfsyncdemo_dst"
SENDER_ROOT = SRC_POOL + "/data"
RECEIVER_ROOT = DST_POOL + "/backup/data"
PORT = int(os.environ.get("ZFSYNC_DEMO_PORT", "30303"))
PID_FILE = os.path.join(SANDBOX, "zfsync_recv.pid")


def sh(*argv, check=True):
    proc = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=600, env=dict(os.environ, LC_ALL="C"), check=False)
    if check and proc.returncode != 0:
        sys.exit("demo: %s failed: %s%s" % (" ".join(argv), proc.stdout, proc.stderr))
    return proc


def ensure_venv():
    """tools/venv.sh is idempotent: a no-op when the venv is up to date."""
    proc = subprocess.run([os.path.join(REPO, "tools", "venv.sh")], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, check=False)
    if proc.returncode != 0 or not os.access(ANSIBLE_PLAYBOOK, os.X_OK):
        sys.exit("demo: the controller venv is not usable (tools/venv.sh exit %d):\n%s"
                 % (proc.returncode, proc.stdout[-3000:]))


def playbook(state):
    """Run playbooks/demo.yml with the venv's ansible-playbook; its output
    goes to the terminal as it comes."""
    argv = [ANSIBLE_PLAYBOOK, "-i", INVENTORY, PLAYBOOK,
            "-e", json.dumps(dict(zfsync_demo_state=state, zfsync_demo_port=PORT, zfsync_demo_dir=SANDBOX))]
    env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8", ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, "collections"), ANSIBLE_RETRY_FILES_ENABLED="false",
               ANSIBLE_DISPLAY_SKIPPED_HOSTS="false")
    print("demo: %s" % " ".join(argv), flush=True)
    return subprocess.run(argv, env=env, cwd=REPO, timeout=1800, check=False).returncode


def pool_exists(name):
    return sh("zpool", "list", "-H", "-o", "name", name, check=False).returncode == 0


def receiver_pid():
    try:
        with open(PID_FILE) as handle:
            pid = int(handle.read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def listing(root):
    out = sh("zfs", "list", "-H", "-t", "filesystem,snapshot", "-o", "name,used", "-s", "name", "-r", root).stdout
    rows = []
    for line in out.splitlines():
        name, used = line.split("\t")
        suffix = name[len(root):]
        rows.append("%s  %s" % ("/" + suffix if suffix.startswith("@") or not suffix else suffix, used))
    return rows


def side_by_side():
    left, right = listing(SENDER_ROOT), listing(RECEIVER_ROOT)
    width = max(len(l) for l in left + ["sender " + SENDER_ROOT]) + 4
    print("\n%-*s%s" % (width, "sender " + SENDER_ROOT, "receiver " + RECEIVER_ROOT))
    for index in range(max(len(left), len(right))):
        a = left[index] if index < len(left) else ""
        b = right[index] if index < len(right) else ""
        print("%-*s%s" % (width, a or "/", b or "/"))


def up():
    ensure_venv()
    os.makedirs(SANDBOX, exist_ok=True)
    status = playbook("present")
    if status != 0:
        sys.exit("demo: playbooks/demo.yml failed (exit %d); see above. `make demo-clean` removes the sandbox."
                 % status)
    side_by_side()
    print("\nreceiver: 127.0.0.1 port %d, pid %s, log %s/zfshad.log" % (PORT, receiver_pid(), SANDBOX))
    print("remove everything with: make demo-clean")


def stop_without_ansible():
    """For a sandbox whose playbook cannot run (no venv): the daemon by its pid file."""
    pid = receiver_pid()
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 40
        while receiver_pid() and time.monotonic() < deadline:
            time.sleep(0.1)


def clean():
    if os.access(ANSIBLE_PLAYBOOK, os.X_OK):
        status = playbook("absent")
        if status != 0:
            print("demo: playbooks/demo.yml (absent) failed with exit %d; stopping the daemon by its pid file"
                  % status)
            stop_without_ansible()
    else:
        stop_without_ansible()
    for pool in (SRC_POOL, DST_POOL):
        if pool_exists(pool):
            # zfs-fuse can call a pool busy right after its datasets were in use.
            for _attempt in range(20):
                if sh("zpool", "destroy", "-f", pool, check=False).returncode == 0:
                    break
                time.sleep(0.5)
            else:
                sh("zpool", "destroy", "-f", pool)
    if os.path.isdir(SANDBOX):
        for name in os.listdir(SANDBOX):
            path = os.path.join(SANDBOX, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
    print("demo: sandbox removed")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "up"
    if command not in ("up", "clean"):
        sys.exit("usage: python3 tools/demo.py [up|clean]")
    {"up": up, "clean": clean}[command]()
