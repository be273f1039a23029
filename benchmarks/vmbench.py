#!/usr/bin/env python3
"""The benchmark's hands inside the lab VM (run as root by bench.py over ssh).

Every subcommand prints one JSON document on stdout and nothing else there;
progress goes to stderr. Wall times are taken here, around the contender's
command, so ssh and the host's load of starting ssh are not in them.

  setup   pool, the tree of small datasets (@s1), the big dataset (@b1)
  tree    one run of scenarios 1-3 for one contender: reset the target,
          full sync (@s1), small change + @s2 and sync, @s3 and sync
  big     one run of scenario 4 for one contender: reset, full sync of @b1
  peers   which peers the image has; --install installs the missing ones
  probe   fixed costs: one zfs(8) start, python start, a TCP round trip
  info    versions of everything that runs
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

BASE = "/opt/bench"
ENGINE_BIN = os.path.join(BASE, "engine", "bin")
PKI = os.path.join(BASE, "pki")
WORK = "/var/tmp/bench"
SHIM_DIR = os.path.join(BASE, "shim")
SHIM_LOG = os.path.join(WORK, "zfs-calls.log")

POOL = "bench"
SRC = "bench/src/tree"  # its targets: bench/dst/<contender>-r<run>/tree
BIG_SRC, BIG_DST = "bench/src/big", "bench/dst/big"
PORT_PLAIN, PORT_TLS = 3030, 3031
# zfs-autobackup selects datasets by this property; one name per tree.
AUTOBACKUP = {SRC: "benchtree", BIG_SRC: "benchbig"}

STEP_TIMEOUT = 3600.0
ZFS_TIMEOUT = 600.0
TICK = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    print("[vmbench %s] %s" % (time.strftime("%H:%M:%S"), message), file=sys.stderr, flush=True)


def zfs(*args: str, timeout: float = ZFS_TIMEOUT, check: bool = True) -> str:
    proc = subprocess.run(["zfs"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout, env=dict(os.environ, LC_ALL="C"))
    if check and proc.returncode != 0:
        raise RuntimeError("zfs %s: %s" % (" ".join(args), proc.stderr.strip()))
    return proc.stdout


def exists(name: str) -> bool:
    return subprocess.run(["zfs", "list", "-H", "-o", "name", name], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=ZFS_TIMEOUT).returncode == 0


def filesystems(root: str) -> List[str]:
    return zfs("list", "-H", "-o", "name", "-t", "filesystem", "-r", root).split()


# -- setup ---------------------------------------------------------------------

def tree_names(count: int) -> List[str]:
    """Relative names of ``count`` datasets below the root: groups gNN, each
    with up to 9 children dNNN, so the tree has depth (children may arrive
    before their parents in a parallel sync, as in real trees)."""
    names: List[str] = []
    group = None
    children = 0
    while len(names) < count:
        if group is None or children == 9:
            group = "g%02d" % (len(names) // 10)
            names.append(group)
            children = 0
        else:
            names.append("%s/d%03d" % (group, len(names)))
            children += 1
    return names


def write_random(path: str, size: int, pattern: Optional[bytes] = None) -> None:
    """Incompressible bytes. A large file repeats one random block of 32 MiB:
    every 128 KiB record is still random (nothing for ZFS or a stream
    compressor with a window below 32 MiB to compress), and generating 2 GiB
    from the kernel's RNG under TCG would take minutes."""
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            chunk = pattern if pattern is not None else os.urandom(min(left, 1 << 20))
            handle.write(chunk[:left])
            left -= min(left, len(chunk))


def install_shim() -> str:
    """A zfs(8) in front of the real one, for the profile pass: it records
    start, end, status and arguments of every call (bash's EPOCHREALTIME:
    no extra process per call)."""
    real = subprocess.run(["sh", "-c", "command -v zfs"], stdout=subprocess.PIPE, text=True,
                          check=True).stdout.strip()
    os.makedirs(SHIM_DIR, exist_ok=True)
    shim = os.path.join(SHIM_DIR, "zfs")
    with open(shim, "w") as handle:
        handle.write("#!/bin/bash\n"
                     "# bench profile shim: times each zfs(8) call (see vmbench.py)\n"
                     "s=$EPOCHREALTIME\n"
                     "%s \"$@\"\n"
                     "rc=$?\n"
                     "printf '%%s %%s %%d %%s %%s\\n' \"$s\" \"$EPOCHREALTIME\" \"$rc\" \"${ZFS_SHIM_SIDE:-tool}\" \"$*\" "
                     ">> \"${ZFS_SHIM_LOG:-%s}\"\n"
                     "exit $rc\n" % (real, SHIM_LOG))
    os.chmod(shim, 0o755)
    return real


def cmd_setup(args) -> dict:
    timings: Dict[str, float] = {}
    t0 = time.monotonic()
    os.makedirs(WORK, exist_ok=True)
    subprocess.run(["modprobe", "zfs"], check=True, timeout=120)
    if subprocess.run(["zpool", "list", POOL], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
        subprocess.run(["zpool", "create", "-f", "-O", "atime=off", "-O", "mountpoint=/" + POOL, POOL,
                        args.disk], check=True, timeout=300)
    # A small ARC: the big dataset is read from the (virtual) disk by every
    # contender alike, not from memory by the ones that happen to run late.
    with open("/sys/module/zfs/parameters/zfs_arc_max", "w") as handle:
        handle.write(str(args.arc_max))
    for name in ("bench/src", "bench/dst"):
        if not exists(name):
            zfs("create", name)
    real_zfs = install_shim()
    timings["pool"] = time.monotonic() - t0

    t0 = time.monotonic()
    if not exists(SRC):
        zfs("create", SRC)
        for rel in tree_names(args.datasets):
            zfs("create", "%s/%s" % (SRC, rel))
        for dataset, mountpoint in (line.split("\t") for line in
                                    zfs("list", "-H", "-o", "name,mountpoint", "-r", SRC).splitlines()):
            write_random(os.path.join(mountpoint, "data"), args.small_size)
            write_random(os.path.join(mountpoint, "change"), 4096)
        zfs("snapshot", "-r", SRC + "@s1")
        zfs("set", "autobackup:%s=true" % AUTOBACKUP[SRC], SRC)
    timings["tree"] = time.monotonic() - t0

    t0 = time.monotonic()
    if args.big_size and not exists(BIG_SRC):
        zfs("create", "-o", "recordsize=128K", BIG_SRC)
        mountpoint = zfs("get", "-H", "-o", "value", "mountpoint", BIG_SRC).strip()
        write_random(os.path.join(mountpoint, "data"), args.big_size, os.urandom(32 << 20))
        zfs("snapshot", BIG_SRC + "@b1")
        zfs("set", "autobackup:%s=true" % AUTOBACKUP[BIG_SRC], BIG_SRC)
    timings["big"] = time.monotonic() - t0
    return {"timings": timings, "datasets": len(filesystems(SRC)), "zfs": real_zfs,
            "big_bytes": int(zfs("get", "-Hp", "-o", "value", "referenced", BIG_SRC + "@b1"))
            if exists(BIG_SRC) else 0}


# -- contenders ----------------------------------------------------------------

def tls_args(side: str) -> List[str]:
    return ["--tls-cert", os.path.join(PKI, side + ".pem"), "--tls-key", os.path.join(PKI, side + ".key"),
            "--tls-ca", os.path.join(PKI, "ca.pem")]


def zfsync_threads(contender: str) -> int:
    return int(contender.split("-")[1])


def contender_command(contender: str, src: str, dst: str, snap: str, base: Optional[str],
                      rusage_file: str) -> str:
    """The shell command one contender runs for one step: replicate ``src``
    up to ``@snap`` (from ``@base``, which the target has, if given)."""
    q = shlex.quote
    if contender == "raw":
        inc = " -I @%s" % base if base else ""
        return "set -o pipefail; zfs send -R%s %s | zfs receive -u%s %s" % (
            inc, q(src + "@" + snap), " -F" if base else "", q(dst))
    if contender == "loop":
        inc = "-I @%s " % base if base else ""
        return ("set -o pipefail; zfs list -H -o name -t filesystem -r {src} | while read -r ds; do "
                "zfs send -p {inc}\"$ds@{snap}\" | zfs receive -u{force} \"{dst}${{ds#{src}}}\" || exit 1; done"
                ).format(src=q(src), dst=dst, inc=inc, snap=snap, force=" -F" if base else "")
    if contender.startswith("zfsync-"):
        tls = contender.endswith("-tls")
        argv = ["python3", os.path.join(BASE, "zfsync_rusage.py"), rusage_file,
                "-p", str(PORT_TLS if tls else PORT_PLAIN), "-t", str(zfsync_threads(contender)), "--json"]
        if tls:
            argv += tls_args("sender")
        return " ".join(q(a) for a in argv + [src, "127.0.0.1"])
    if contender == "syncoid":
        # Local mode: no ssh when neither side has a host. --no-sync-snap:
        # replicate the snapshots we made (every tool gets the same ones)
        # instead of taking one of its own per run.
        return "syncoid --recursive --no-privilege-elevation --no-sync-snap %s %s" % (q(src), q(dst))
    if contender == "zfs-autobackup":
        # --no-snapshot --other-snapshots: send our snapshots rather than
        # its own; --no-holds: our cleanup destroys the snapshots between
        # runs, holds would block that; --strip-path 2: bench/src/X ->
        # TARGET/X; --exclude-received: the copies other contenders received
        # carry the autobackup property too, they are not sources.
        return ("zfs-autobackup --no-snapshot --other-snapshots --no-holds --exclude-received --strip-path 2 %s %s"
                % (AUTOBACKUP[src], q(dst.rsplit("/", 1)[0])))
    if contender == "bzfs":
        return "bzfs %s %s --recursive" % (q(src), q(dst))
    raise ValueError("unknown contender %r" % contender)


class Receiver:
    """A zfsync_recv daemon for one contender run (plain or TLS), so its CPU
    time can be read from /proc and nothing is left from another run."""

    def __init__(self, root: str, tls: bool, env: Dict[str, str]):
        self.pid_file = os.path.join(WORK, "recv.pid")
        with __import__("contextlib").suppress(FileNotFoundError):
            os.unlink(self.pid_file)
        argv = ["python3", os.path.join(ENGINE_BIN, "zfsync_recv"), "-p", str(PORT_TLS if tls else PORT_PLAIN),
                "-t", "8", "-o", os.path.join(WORK, "recv.log"), "-d", os.path.join(WORK, "flags"),
                "--pid-file", self.pid_file]
        if tls:
            argv += tls_args("receiver")
        self.log = open(os.path.join(WORK, "recv.out"), "ab")
        self.proc = subprocess.Popen(argv + [root], stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
                                     env=dict(env, ZFS_SHIM_SIDE="recv"))
        deadline = time.monotonic() + 120
        while not os.path.exists(self.pid_file):  # written once it listens
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("zfsync_recv did not start (see %s/recv.out)" % WORK)
            time.sleep(0.1)

    def cpu(self) -> Dict[str, float]:
        with open("/proc/%d/stat" % self.proc.pid) as handle:
            ticks = benchlib.parse_proc_stat(handle.read())
        return {k: v / float(TICK) for k, v in ticks.items()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_step(contender: str, command: str, env: Dict[str, str], receiver: Optional[Receiver],
             rusage_file: str, log_name: str) -> dict:
    """Run one contender command, timed; CPU of everything it started, and
    for zfsync the CPU of our two Python processes on their own."""
    with __import__("contextlib").suppress(FileNotFoundError):
        os.unlink(rusage_file)
    recv_before = receiver.cpu() if receiver else None
    cpu_before = children_cpu()
    started_epoch = time.time()
    started = time.monotonic()
    with open(os.path.join(WORK, log_name), "wb") as out:
        proc = subprocess.Popen(["bash", "-c", command], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            status = proc.wait(STEP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = None
    seconds = time.monotonic() - started
    step = {"seconds": seconds, "window": [started_epoch, time.time()], "status": status, "command": command,
            "cpu": {"total": children_cpu() - cpu_before}}
    if receiver:
        after = receiver.cpu()
        step["cpu"]["py_recv"] = after["self"] - recv_before["self"]
        step["cpu"]["total"] += (after["self"] + after["children"]) - (recv_before["self"] + recv_before["children"])
    if contender.startswith("zfsync-"):
        try:
            with open(rusage_file) as handle:
                usage = json.load(handle)
            step["cpu"]["py_send"] = usage["self"]
            step["bytes"] = benchlib.zfsync_bytes(usage.get("report") or {})
            # zfsync_send times each dataset (frame sent to 0:OK read): with
            # one thread, the wall time minus their sum is the fixed cost.
            step["dataset_seconds"] = [d.get("seconds") for d in (usage.get("report") or {}).get("datasets", [])]
        except (OSError, ValueError, KeyError):
            pass
    if status != 0:
        with open(os.path.join(WORK, log_name), errors="replace") as handle:
            tail = handle.read()[-3000:]
        step["error"] = ("timed out after %d s" % STEP_TIMEOUT if status is None
                         else "exit %s: %s" % (status, tail.strip().splitlines()[-1] if tail.strip() else ""))
        step["output"] = tail
    return step


def verify(src: str, dst: str, snap: str) -> Optional[str]:
    """None when every source dataset has ``@snap`` on the target."""
    want = {d[len(src):] for d in filesystems(src)}
    have_out = zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r", dst, check=False)
    have = {line.split("@")[0][len(dst):] for line in have_out.split() if line.endswith("@" + snap)}
    missing = sorted(want - have)
    if missing:
        return "target lacks @%s on %d of %d datasets (e.g. %r)" % (snap, len(missing), len(want), missing[0] or "/")
    return None


def reset_target(dst: str) -> None:
    for name in (dst, dst + ".zfsyncbuffer"):
        if exists(name):
            zfs("destroy", "-r", name, timeout=1800)


def clean_source(src: str, keep: List[str]) -> List[str]:
    """Destroy every snapshot and bookmark in the tree that is not ours to
    keep (our @s2/@s3 of the run, and anything a tool may have left)."""
    removed = []
    out = zfs("list", "-H", "-o", "name", "-t", "snapshot,bookmark", "-r", src)
    extra = sorted({line.split("@")[-1] for line in out.split() if "@" in line} - set(keep))
    if extra:
        zfs("destroy", "-r", "%s@%s" % (src, ",".join(extra)), check=False, timeout=1800)
        removed += ["@" + e for e in extra]
    marks = [line for line in out.split() if "#" in line]
    for mark in marks:
        zfs("destroy", mark, check=False)
    return removed + marks


def change_tree(src: str) -> None:
    """The small change of scenario 2: rewrite 4 KiB in every dataset."""
    for line in zfs("list", "-H", "-o", "mountpoint", "-r", src).splitlines():
        write_random(os.path.join(line, "change"), 4096)


def environment(profile: bool) -> Dict[str, str]:
    env = dict(os.environ, LC_ALL="C")
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    if profile:
        env["PATH"] = SHIM_DIR + ":" + env["PATH"]
        env["ZFS_SHIM_LOG"] = SHIM_LOG
    return env


def fresh_tree_target(contender: str, run: int) -> str:
    """A new, empty parent per contender run: destroying the last run's 200
    datasets would cost a txg sync each (minutes under TCG); received
    copies are small, and the VM is thrown away afterwards."""
    parent = "bench/dst/%s-%s" % (contender, "p" if run < 0 else "r%d" % run)
    if exists(parent):
        zfs("destroy", "-r", parent, timeout=1800)
    zfs("create", "-o", "canmount=off", parent)
    return parent + "/tree"


def run_sequence(args, src: str, dst: str, steps: List[tuple]) -> dict:
    """steps: (scenario, snapshot, base, prepare) in order; stops at the
    first failure (the later steps need its result)."""
    env = environment(args.profile)
    os.makedirs(WORK, exist_ok=True)
    if args.profile and os.path.exists(SHIM_LOG):
        os.unlink(SHIM_LOG)
    rusage_file = os.path.join(WORK, "send.rusage.json")
    cleaned = clean_source(src, [s[1] for s in steps if s[3] is None])
    reset_target(dst)
    receiver = None
    if args.contender.startswith("zfsync-"):
        receiver = Receiver(dst, args.contender.endswith("-tls"), env)
    samples = []
    try:
        failed = None
        for scenario, snap, base, prepare in steps:
            sample = {"scenario": scenario, "contender": args.contender, "run": args.run, "ok": False}
            if failed:
                sample["error"] = "not run: scenario %d failed" % failed
                samples.append(sample)
                continue
            if prepare:
                prepare()
            command = contender_command(args.contender, src, dst, snap, base, rusage_file)
            say("%s scenario %d (@%s)" % (args.contender, scenario, snap))
            step = run_step(args.contender, command, env, receiver, rusage_file,
                            "%s.s%d.log" % (args.contender, scenario))
            error = step.get("error") or verify(src, dst, snap)
            sample.update(ok=error is None, seconds=step["seconds"], cpu=step["cpu"], bytes=step.get("bytes"),
                          dataset_seconds=step.get("dataset_seconds"),
                          error=error, command=command, window=step["window"])
            if error:
                sample["output"] = step.get("output", "")
                failed = scenario
            say("  %.2f s %s" % (step["seconds"], error or "ok"))
            samples.append(sample)
    finally:
        if receiver:
            receiver.stop()
        ours = {"@" + step[1] for step in steps}
        leftovers = [item for item in clean_source(src, [steps[0][1]]) if item not in ours]
    result = {"samples": samples, "cleaned_before": cleaned, "left_by_tool": leftovers}
    if args.profile:
        with open(SHIM_LOG) as handle:
            calls = benchlib.parse_shim_log(handle)
        result["profile"] = {str(s["scenario"]): benchlib.summarize_calls(calls, *s["window"])
                             for s in samples if s.get("window")}
    return result


def cmd_tree(args) -> dict:
    def snap2():
        change_tree(SRC)
        zfs("snapshot", "-r", SRC + "@s2")

    def snap3():
        zfs("snapshot", "-r", SRC + "@s3")

    steps = [(1, "s1", None, None), (2, "s2", "s1", snap2), (3, "s3", "s2", snap3)][:args.upto]
    return run_sequence(args, SRC, fresh_tree_target(args.contender, args.run), steps)


def cmd_big(args) -> dict:
    return run_sequence(args, BIG_SRC, BIG_DST, [(4, "b1", None, None)])


# -- fixed costs and versions --------------------------------------------------

def timed(argv: List[str], times: int) -> Optional[float]:
    values = []
    for _run in range(times):
        t0 = time.monotonic()
        if subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120).returncode:
            return None
        values.append(time.monotonic() - t0)
    return benchlib.median(values)


def tcp_round_trip(count: int = 200) -> float:
    """Median seconds of one 512-byte frame and its reply over TCP on
    127.0.0.1: what one protocol round trip costs without zfs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    peer = server.accept()[0]
    for s in (client, peer):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frame = b"x" * 512
    values = []
    for _round in range(count):
        t0 = time.monotonic()
        client.sendall(frame)
        got = b""
        while len(got) < 512:
            got += peer.recv(512 - len(got))
        peer.sendall(frame)
        got = b""
        while len(got) < 512:
            got += client.recv(512 - len(got))
        values.append(time.monotonic() - t0)
    for s in (client, peer, server):
        s.close()
    return benchlib.median(values)


def cmd_probe(args) -> dict:
    return {
        "zfs_list_one": timed(["zfs", "list", "-H", "-o", "name", SRC], 10),
        "zfs_list_snapshots_one": timed(["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-d", "1", SRC], 10),
        "zfs_usage_probe": timed(["sh", "-c", "zfs send 2>/dev/null; true"], 5),
        "python_start": timed(["python3", "-c", "pass"], 5),
        "zfsync_send_start": timed(["python3", os.path.join(ENGINE_BIN, "zfsync_send"), "--version"], 5),
        "zfsync_import": timed(["python3", "-c", "import sys; sys.path.insert(0, %r); "
                                "import zfsync.sender, zfsync.receiver, zfsync.cli"
                                % os.path.join(BASE, "engine", "plugins", "module_utils")], 5),
        "tcp_round_trip": tcp_round_trip(),
        "import_top": import_top(),
    }


def import_top(count: int = 8) -> List[list]:
    """The slowest imports of zfsync_send (python -X importtime, cumulative
    microseconds): where the fixed start-up cost goes."""
    engine = os.path.join(BASE, "engine", "plugins", "module_utils")
    proc = subprocess.run(["python3", "-X", "importtime", "-c",
                           "import sys; sys.path.insert(0, %r); import zfsync.cli, zfsync.sender" % engine],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
    return benchlib.parse_importtime(proc.stderr)[:count]


def cmd_info(args) -> dict:
    def out(cmd: str) -> str:
        proc = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=120, env=environment(False))
        # Some tools print their version and exit 1 (zfs-autobackup 3.3).
        text = " ".join(proc.stdout.split())
        return "unavailable: " + text[-200:] if proc.returncode == 127 or not text else text

    return {
        "kernel": out("uname -r"),
        "zfs": out("zfs version | tr '\\n' ' '"),
        "python": out("python3 --version"),
        "cpus": out("nproc"),
        "cpu_model": out("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        "mem": out("free -m | awk '/Mem:/ {print $2\" MiB\"}'"),
        "syncoid": out("syncoid --version 2>&1 | head -1"),
        "zfs-autobackup": out("zfs-autobackup --version 2>&1 | head -1"),
        "bzfs": out("bzfs --version 2>&1 | head -1"),
        "mbuffer": out("command -v mbuffer"),
        "pv": out("command -v pv"),
    }


# What tests/lab/build-image bakes into the image (BENCH_PKGS, BENCH_PIP);
# installed here only when the image in use lacks them.
PEER_PACKAGES = ["sanoid", "mbuffer", "pv", "lzop"]
PEER_PIP = ["zfs-autobackup==3.3", "bzfs==1.25.0"]
PEERS = ("syncoid", "zfs-autobackup", "bzfs")


def missing_peers() -> List[str]:
    path = environment(False)["PATH"]
    return [p for p in PEERS if shutil.which(p, path=path) is None]


def cmd_peers(args) -> dict:
    """Which peers the image has; with --install, install the missing ones
    (Debian archive and PyPI through QEMU's user-mode network)."""
    before = missing_peers()
    log = []

    def run(argv: List[str], timeout: float) -> None:
        say(" ".join(argv))
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                              env=dict(environment(False), DEBIAN_FRONTEND="noninteractive"))
        log.append("$ %s\n%s" % (" ".join(argv), proc.stdout[-1500:]))

    if before and args.install:
        run(["apt-get", "update", "-q"], 900)
        packages = PEER_PACKAGES + (["python3-pip"] if set(before) - {"syncoid"} else [])
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends"] + packages, 1800)
        if set(before) - {"syncoid"}:
            run(["pip3", "install", "-q", "--no-cache-dir", "--break-system-packages",
                 "--cert", os.path.join(BASE, "host-ca.crt")] + PEER_PIP, 1800)
    return {"missing_before": before, "missing": missing_peers(), "installed": bool(before and args.install),
            "log": log}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup")
    p.add_argument("--datasets", type=int, default=200)
    p.add_argument("--small-size", type=benchlib.parse_size, default=64 << 10)
    p.add_argument("--big-size", type=benchlib.parse_size, default=2 << 30)
    p.add_argument("--arc-max", type=benchlib.parse_size, default=256 << 20)
    p.add_argument("--disk", default="/dev/vdb")
    for name in ("tree", "big"):
        p = sub.add_parser(name)
        p.add_argument("--contender", required=True, choices=benchlib.CONTENDERS)
        p.add_argument("--run", type=int, default=0)
        p.add_argument("--profile", action="store_true", help="route zfs(8) through the timing shim")
        if name == "tree":
            p.add_argument("--upto", type=int, default=3, choices=(1, 2, 3))
    sub.add_parser("probe")
    p = sub.add_parser("peers")
    p.add_argument("--install", action="store_true")
    sub.add_parser("info")
    args = parser.parse_args(argv)
    handler = {"setup": cmd_setup, "tree": cmd_tree, "big": cmd_big, "probe": cmd_probe, "info": cmd_info,
               "peers": cmd_peers}
    json.dump(handler[args.command](args), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
