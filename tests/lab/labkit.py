"""Helpers for tests that run inside one lab VM (stdlib only).

`tests/lab/launch` boots and tears down the VMs; this adds what the golden
replay and the in-VM engine suite both need: loading the launcher as a
module, one VM that is torn down whatever happens (exceptions, SIGTERM,
SIGHUP, SIGINT), copying files in and out over ssh, and phase timings.
"""
from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence

LAB_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(LAB_DIR))
# What a VM needs to run the engine: the programs and the package they import.
ENGINE_PATHS = ("bin", "plugins/module_utils/zfsync")


def load_launch():
    """tests/lab/launch (a script without .py) as a module."""
    path = os.path.join(LAB_DIR, "launch")
    loader = importlib.machinery.SourceFileLoader("zfsync_lab_launch", path)
    spec = importlib.util.spec_from_loader("zfsync_lab_launch", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def say(msg: str) -> None:
    print("[lab %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


class Timings:
    """Wall-clock seconds per named phase, in the order they ran."""

    def __init__(self) -> None:
        self.phases: Dict[str, float] = {}
        self.start = time.monotonic()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        say("%s ..." % name)
        try:
            yield
        finally:
            self.phases[name] = round(time.monotonic() - t0, 1)
            say("%s: %.1f s" % (name, self.phases[name]))

    def report(self) -> str:
        rows = ["  %-28s %7.1f s" % (name, secs) for name, secs in self.phases.items()]
        rows.append("  %-28s %7.1f s" % ("total", time.monotonic() - self.start))
        return "\n".join(rows)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM/SIGHUP become SystemExit, so the VM's teardown runs (SIGINT
    already raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


class LabVM:
    """One booted lab VM: run commands, copy files in and out."""

    def __init__(self, launch, state_dir: str, name: str):
        self.launch = launch
        self.state_dir = state_dir
        self.name = name
        self.record = launch.load_state(state_dir)["vms"][name]

    def run(self, command: str, timeout: float = 300, check: bool = True,
            input: Optional[str] = None) -> subprocess.CompletedProcess:
        return self.launch.run_ssh(self.state_dir, self.name, command, timeout=timeout, check=check, input=input)

    def ssh_argv(self, command: str) -> List[str]:
        return self.launch.ssh_argv(self.record, command)

    def push(self, base: str, paths: Sequence[str], dest: str, timeout: float = 600) -> None:
        """Copy base/path for each path (files or trees) to dest/path in the VM."""
        tar = subprocess.Popen(["tar", "-C", base, "--exclude=__pycache__", "-cf", "-"] + list(paths),
                               stdout=subprocess.PIPE)
        try:
            untar = subprocess.run(self.ssh_argv("mkdir -p %s && tar -C %s -xf -" % (dest, dest)),
                                   stdin=tar.stdout, capture_output=True, timeout=timeout)
        finally:
            tar.stdout.close()
            tar.wait(timeout)
        if tar.returncode != 0 or untar.returncode != 0:
            raise RuntimeError("copy of %s into %s:%s failed: %s" % (
                ", ".join(paths), self.name, dest, untar.stderr.decode(errors="replace")))

    def fetch(self, path: str, timeout: float = 300) -> bytes:
        res = subprocess.run(self.ssh_argv("cat %s" % path), capture_output=True, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError("reading %s:%s failed: %s" % (self.name, path, res.stderr.decode(errors="replace")))
        return res.stdout


@contextlib.contextmanager
def lab_vm(state_dir: str, name: str, forwards: Sequence[int] = (), timings: Optional[Timings] = None,
           mem: int = 1536, cpus: int = 2, data_disk_size: str = "2G") -> Iterator[LabVM]:
    """Boot one VM (the lab image must be built: never builds here), yield
    it, and always tear it down, also on SIGTERM/SIGHUP/SIGINT."""
    launch = load_launch()
    timings = timings or Timings()
    os.makedirs(state_dir, exist_ok=True)
    # A run killed with SIGKILL leaves its VM: reap it before booting another.
    launch.down(state_dir)
    with _signals_raise():
        try:
            with timings.phase("boot to ssh"):
                launch.up(state_dir, name, mem=mem, cpus=cpus, data_disk_size=data_disk_size,
                          forwards=list(forwards), build=False)
            yield LabVM(launch, state_dir, name)
        finally:
            with timings.phase("teardown"):
                launch.down(state_dir)


def keep_logs(vm: LabVM, timings: Timings, command: str, path: str,
              before: Optional[Callable[[], None]] = None) -> None:
    """A fixture's teardown: write what ``command`` prints in the VM to
    ``path`` (after ``before()``, e.g. stopping the receiver). A failure is
    said, never raised: the VM must still be torn down."""
    with timings.phase("keep logs"):
        try:
            if before is not None:
                before()
            logs = vm.run(command, check=False, timeout=120).stdout
            with open(path, "w") as handle:
                handle.write(logs)
        except Exception as error:  # keep tearing down
            say("could not fetch the receiver logs: %s" % error)
