# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""The one place that runs zfs(8).

Every other part of the engine reaches ZFS through ``Zfs``. It probes once
what the installed ZFS supports (zfs-fuse has no ``send -c``, ``list -p``,
``receive -u``/``-o``/``-s``; OpenZFS on Linux and FreeBSD have them all),
so the same engine runs on each.
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Dict, FrozenSet, IO, Iterable, List, Optional, Sequence, Tuple, Union

# Bounds for zfs(8) commands that do not move a stream. Listing a big tree
# can take a while on a loaded pool; nothing here should take minutes.
COMMAND_TIMEOUT = 300.0
# zfs-fuse reports "dataset is busy" for a few seconds after a dataset was
# created or mounted; OpenZFS does so while a mount is being torn down.
BUSY_RETRY_SECONDS = 15.0

_C_LOCALE = {"LC_ALL": "C", "LANG": "C", "LANGUAGE": "C"}
# What zfs list prints, in the C locale, for a name that is not there.
_ABSENT = re.compile(r"^cannot open '([^']+)': dataset does not exist$")
# ``send [-nvPe] -t <receive_resume_token>`` in OpenZFS's usage text.
RESUME_SEND_USAGE = re.compile(r"^\s*send \S*.*-t <receive_resume_token>", re.M)
# What ``zfs receive -v`` prints for each snapshot of a stream (OpenZFS and
# zfs-fuse alike): "receiving incremental stream of SRC@b into DST@b".
_RECEIVING = re.compile(r"^receiving (?:full|incremental) stream of .+? into (.+)$")
# A property a receive could not set (no delegated permission, say): zfs
# only warns and exits 0. "cannot receive canmount property on X: permission denied"
_PROPERTY_REFUSED = re.compile(r"^cannot receive (\S+) property on (.+?): (.+)$")


class ZfsError(RuntimeError):
    """A zfs(8) command failed: says which command and what zfs printed."""

    def __init__(self, argv: Sequence[str], returncode: Optional[int], stderr: str):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        detail = self.stderr or ("exit status %s" % returncode)
        super().__init__("%s: %s" % (" ".join(self.argv), detail))

    @property
    def busy(self) -> bool:
        return "busy" in self.stderr

    @property
    def missing(self) -> bool:
        return "does not exist" in self.stderr or "could not find any snapshots" in self.stderr


@dataclass(frozen=True)
class Capabilities:
    """What the installed zfs(8) accepts, probed from its usage text."""

    send_flags: FrozenSet[str]
    receive_flags: FrozenSet[str]
    list_parsable: bool
    send_resume: bool = False  # send -t <receive_resume_token>

    @property
    def send_compressed(self) -> bool:
        return "c" in self.send_flags

    @property
    def send_parsable(self) -> bool:
        return "P" in self.send_flags

    @property
    def receive_unmounted(self) -> bool:
        return "u" in self.receive_flags

    @property
    def receive_properties(self) -> bool:
        return "o" in self.receive_flags

    @property
    def receive_resumable(self) -> bool:
        """``receive -s`` (keep a cut stream's partial state) with
        ``receive -A`` (abort it): OpenZFS has both, zfs-fuse neither."""
        return "s" in self.receive_flags


def _usage_flags(usage: str, subcommand: str) -> FrozenSet[str]:
    """Single-letter options named in the usage lines of one subcommand:
    ``send [-DLPbcehnpsvw] [-i|-I snapshot]`` -> {D, L, ..., i, I}."""
    flags = set()
    for line in usage.splitlines():
        line = line.strip()
        if not line.startswith(subcommand + " "):
            continue
        for group in re.findall(r"\[([^\]]*)\]", line):
            for token in re.split(r"[\s|]+", group.strip()):
                if re.match(r"^-[A-Za-z]+$", token) and (len(token) == 2 or token == group.strip()):
                    flags.update(token[1:])
    return frozenset(flags)


class Zfs:
    """zfs(8) through argv lists, the C locale and bounded waits."""

    def __init__(self, zfs_bin: str = "zfs", timeout: float = COMMAND_TIMEOUT):
        self.zfs_bin = zfs_bin
        self.timeout = timeout
        self._capabilities: Optional[Capabilities] = None
        self._lock = threading.Lock()

    # -- running -------------------------------------------------------------

    def _argv(self, args: Sequence[str]) -> List[str]:
        return [self.zfs_bin] + list(args)

    @staticmethod
    def _env() -> Dict[str, str]:
        env = dict(os.environ)
        env.update(_C_LOCALE)
        return env

    def _execute(self, args: Sequence[str], timeout: Optional[float] = None) -> Tuple[int, str, str]:
        """Run ``zfs ARGS``: (exit status, stdout, stderr); ZfsError only
        when zfs(8) is missing or outlives the bound."""
        argv = self._argv(args)
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=self._env(),
                                  timeout=timeout or self.timeout, close_fds=True, check=False)
        except FileNotFoundError:
            raise ZfsError(argv, None, "zfs command not found (%s): is ZFS installed?" % self.zfs_bin)
        except subprocess.TimeoutExpired:
            raise ZfsError(argv, None, "timed out after %.0f s" % (timeout or self.timeout))
        return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")

    def run(self, args: Sequence[str], check: bool = True, timeout: Optional[float] = None) -> str:
        """Run ``zfs ARGS``; return stdout, raise ZfsError on failure."""
        status, out, err = self._execute(args, timeout)
        if check and status != 0:
            raise ZfsError(self._argv(args), status, err)
        return out

    def _run_retrying_busy(self, args: Sequence[str]) -> str:
        deadline = time.monotonic() + BUSY_RETRY_SECONDS
        delay = 0.2
        while True:
            try:
                return self.run(args)
            except ZfsError as error:
                if not error.busy or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    # -- capabilities --------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        with self._lock:
            if self._capabilities is None:
                self._capabilities = self._probe()
            return self._capabilities

    def _usage(self, subcommand: str) -> str:
        argv = self._argv([subcommand])
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, env=self._env(), timeout=30, check=False)
        except FileNotFoundError:
            raise ZfsError(argv, None, "zfs command not found (%s): is ZFS installed?" % self.zfs_bin)
        except subprocess.TimeoutExpired:
            raise ZfsError(argv, None, "timed out probing zfs %s" % subcommand)
        return proc.stdout.decode("utf-8", "replace")

    def _probe(self) -> Capabilities:
        """One ``zfs -?`` prints every subcommand's usage (OpenZFS, FreeBSD
        and zfs-fuse alike); asking send, receive and list one by one cost
        three zfs(8) starts, a second under TCG, on every engine start."""
        usage = self._usage("-?")
        send = _usage_flags(usage, "send")
        receive = _usage_flags(usage, "receive")
        listing = _usage_flags(usage, "list")
        if send and receive and listing:
            return Capabilities(send, receive, "p" in listing, RESUME_SEND_USAGE.search(usage) is not None)
        # A zfs(8) whose general usage leaves the flags out: ask each.
        send_usage = self._usage("send")
        send = _usage_flags(send_usage, "send")
        receive = _usage_flags(self._usage("receive"), "receive")
        argv = self._argv(["list", "-H", "-p", "-o", "name", "zfsync-capability-probe/none"])
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=self._env(), timeout=30, check=False)
        list_parsable = b"invalid option" not in proc.stderr
        return Capabilities(send, receive, list_parsable, RESUME_SEND_USAGE.search(send_usage) is not None)

    # -- reading -------------------------------------------------------------

    def exists(self, name: str) -> bool:
        argv = ["list", "-H", "-o", "name", "-t", "all", name]
        try:
            self.run(argv)
            return True
        except ZfsError as error:
            if error.missing:
                return False
            raise

    def locate(self, names: Sequence[str]) -> Tuple[Dict[str, Optional[List[str]]], Dict[str, str]]:
        """Which of ``names`` exist, with their own snapshots (oldest
        first), and the resume token of each that holds partial receive
        state, in one zfs(8) call: ({name: None when absent, else [snapshot
        names]}, {name: token}). Tokens are empty where zfs has no
        ``receive -s`` (zfs-fuse knows no such property). Absent names make
        zfs exit 1 after listing the others; any other complaint is an
        error."""
        columns = "name,receive_resume_token" if self.capabilities.receive_resumable else "name"
        args = ["list", "-H", "-o", columns, "-t", "filesystem,volume,snapshot", "-s", "createtxg", "-d", "1"]
        status, out, err = self._execute(args + list(names))
        complaints = [line for line in err.splitlines() if line.strip()]
        absent = set()
        for line in complaints:
            match = _ABSENT.match(line)
            if not match or match.group(1) not in names:
                raise ZfsError(self._argv(args + list(names)), status, err)
            absent.add(match.group(1))
        if status != 0 and not absent:
            raise ZfsError(self._argv(args + list(names)), status, err)
        rows = [line.split("\t") for line in out.splitlines()]
        lines = [row[0] for row in rows]
        tokens = {row[0]: row[1] for row in rows if len(row) > 1 and row[1] not in ("", "-") and row[0] in names}
        found: Dict[str, Optional[List[str]]] = {}
        for name in names:
            if name in absent or name not in lines:
                found[name] = None
                continue
            prefix = name + "@"
            found[name] = [line[len(prefix):] for line in lines if line.startswith(prefix)]
        return found, {name: token for name, token in tokens.items() if found.get(name) is not None}

    def partial_children(self, name: str) -> List[Tuple[str, Optional[str], bool]]:
        """The filesystem/volume children of ``name`` with their partial
        receive state: (child, resume token or None, inconsistent). An
        inconsistent child is a first (full) stream cut short: no snapshot
        yet, nothing to place. A token on a consistent child belongs to its
        hidden ``%recv`` clone: an incremental cut short. On a zfs without
        ``receive -s`` there is no such state: (child, None, False)."""
        if not self.capabilities.receive_resumable:
            return [(child, None, False) for child in self.children(name)]
        out = self.run(["list", "-H", "-o", "name,receive_resume_token,inconsistent", "-t", "filesystem,volume",
                        "-d", "1", name])
        found = []
        for line in out.splitlines():
            fields = line.split("\t")
            if len(fields) < 3 or fields[0] == name:
                continue
            found.append((fields[0], fields[1] if fields[1] not in ("", "-") else None, fields[2] == "1"))
        return found

    def resume_token(self, name: str) -> Optional[str]:
        """The token of ``name``'s partial receive state, None without."""
        if not self.capabilities.receive_resumable:
            return None
        value = self.get(name, "receive_resume_token")
        return value if value not in ("", "-") else None

    def abort_receive(self, name: str) -> None:
        """``zfs receive -A``: drop the partial state of a cut ``receive
        -s``. A first stream's dataset vanishes with it; an incremental's
        ``%recv`` clone goes and the dataset stays at its last snapshot."""
        status, _out, err = self._execute(["receive", "-A", name])
        if status != 0 and "does not have any resumable receive state" not in err:
            raise ZfsError(self._argv(["receive", "-A", name]), status, err)

    def resume_stream(self, token: str) -> Tuple[Optional[str], str]:
        """What ``zfs send -t TOKEN`` would send, found by the snapshots'
        guids: (from snapshot or None for a full stream, to snapshot), full
        names. ZfsError when zfs cannot resume it (a snapshot is gone)."""
        args = ["send", "-nvP", "-t", token]
        status, out, err = self._execute(args)
        if status != 0:
            raise ZfsError(self._argv(args), status, err)
        try:
            # Where zfs prints a dry run's lines (stdout or stderr) has
            # changed between versions: read both.
            return parse_resume_dry_run(out + "\n" + err)
        except ValueError as error:
            raise ZfsError(self._argv(args), status, str(error))

    def filesystems(self, root: str) -> List[str]:
        """``root`` and its descendant filesystems and volumes, parent before
        children (pre-order), siblings by name."""
        out = self.run(["list", "-H", "-o", "name", "-t", "filesystem,volume", "-r", root])
        names = [line for line in out.splitlines() if line]
        return sorted(names, key=lambda n: n.split("/"))

    def children(self, name: str) -> List[str]:
        out = self.run(["list", "-H", "-o", "name", "-t", "filesystem,volume", "-d", "1", name])
        return [line for line in out.splitlines() if line and line != name]

    def snapshots(self, dataset: str) -> List[str]:
        """Snapshot names (without ``dataset@``) of one dataset, oldest first."""
        out = self.run(["list", "-H", "-o", "name", "-t", "snapshot", "-s", "createtxg", "-d", "1", dataset])
        prefix = dataset + "@"
        return [line[len(prefix):] for line in out.splitlines() if line.startswith(prefix)]

    def snapshots_tree(self, root: str) -> Dict[str, List[str]]:
        """Snapshots of every dataset under ``root`` in one zfs(8) call:
        {dataset: [names oldest first]}. Datasets without any are absent."""
        out = self.run(["list", "-H", "-o", "name", "-t", "snapshot", "-s", "createtxg", "-r", root])
        tree: Dict[str, List[str]] = {}
        for line in out.splitlines():
            if "@" not in line:
                continue
            dataset, snap = line.split("@", 1)
            tree.setdefault(dataset, []).append(snap)
        return tree

    def snapshot_creation(self, dataset: str) -> Dict[str, int]:
        """{snapshot name: creation epoch seconds} of ``dataset``'s own
        snapshots, oldest first. ``get -p`` gives seconds everywhere, where
        zfs-fuse's ``list`` (no ``-p``) prints minutes only."""
        names = self.snapshots(dataset)
        if not names:
            return {}
        out = self.run(["get", "-H", "-p", "-o", "name,value", "creation"]
                       + ["%s@%s" % (dataset, n) for n in names])
        created = {}
        for line in out.splitlines():
            full, _tab, value = line.partition("\t")
            if "@" in full and value.strip().isdigit():
                created[full.split("@", 1)[1]] = int(value)
        return {n: created[n] for n in names if n in created}

    def get(self, name: str, prop: str) -> str:
        return self.run(["get", "-H", "-o", "value", prop, name]).strip()

    # -- changing ------------------------------------------------------------

    def create(self, name: str, properties: Optional[Dict[str, str]] = None, parents: bool = False) -> None:
        args = ["create"]
        if parents:
            args.append("-p")
        for key, value in (properties or {}).items():
            args += ["-o", "%s=%s" % (key, value)]
        self.run(args + [name])

    def set(self, name: str, prop: str, value: str) -> None:
        self.run(["set", "%s=%s" % (prop, value), name])

    def snapshot(self, names: Iterable[str], recursive: bool = False) -> None:
        args = ["snapshot"] + (["-r"] if recursive else []) + list(names)
        self.run(args)

    def destroy(self, name: str, recursive: bool = False) -> None:
        args = ["destroy"] + (["-r"] if recursive else []) + [name]
        self._run_retrying_busy(args)

    def destroy_snapshots(self, dataset: str, names: Sequence[str], recursive: bool = False) -> None:
        for snap in names:
            self.destroy("%s@%s" % (dataset, snap), recursive=recursive)

    def rename(self, source: str, target: str) -> None:
        self._run_retrying_busy(["rename", source, target])

    def unmount(self, name: str) -> None:
        if self.get(name, "mounted") == "yes":
            self._run_retrying_busy(["unmount", name])

    def unmount_tree(self, name: str) -> None:
        """Best effort, deepest first; only where receives leave datasets
        mounted (zfs-fuse), since a mounted dataset cannot be renamed there."""
        if self.capabilities.receive_unmounted:
            return
        out = self.run(["list", "-H", "-o", "name,mounted", "-t", "filesystem", "-r", name], check=False)
        mounted = [line.split("\t")[0] for line in out.splitlines() if line.endswith("\tyes")]
        for dataset in sorted(mounted, key=lambda n: -n.count("/")):
            try:
                self._run_retrying_busy(["unmount", dataset])
            except ZfsError:
                pass

    # -- streams -------------------------------------------------------------

    def send_argv(self, dataset: str, to: str, base: Optional[str] = None) -> List[str]:
        """``zfs send -p [-c] [-I @base] dataset@to``: a compound stream with
        properties, as the original sends."""
        args = ["send", "-p"]
        if self.capabilities.send_compressed:
            args.append("-c")
        if base is not None:
            args += ["-I", "@" + base]
        return self._argv(args + ["%s@%s" % (dataset, to)])

    def resume_send_argv(self, token: str) -> List[str]:
        """``zfs send -t TOKEN``: the rest of a cut stream (the token keeps
        the original stream's flags). The caller validated the token."""
        return self._argv(["send", "-t", token])

    def receive_argv(self, target: str, force: bool, resumable: bool = False) -> List[str]:
        """``zfs receive -v [-F] [-s] -u -o canmount=noauto target``; where
        the installed zfs lacks -u/-o the caller unmounts and sets canmount
        right after (see ``settle_received``). ``resumable``: a cut stream
        leaves partial state and a resume token (only where zfs has -s).
        ``-v`` names every snapshot that arrives (``received_snapshots``),
        which spares a listing."""
        caps = self.capabilities
        args = ["receive", "-v"]
        if force:
            args.append("-F")
        if resumable and caps.receive_resumable:
            args.append("-s")
        if caps.receive_unmounted:
            args.append("-u")
        if caps.receive_properties:
            args += ["-o", "canmount=noauto"]
        return self._argv(args + [target])

    @staticmethod
    def received_snapshots(verbose_output: str, target: str) -> Optional[List[str]]:
        """The snapshots of ``target`` that a successful ``receive -v``
        reports, in stream order; None when it reports none (the caller
        then lists them)."""
        prefix = target + "@"
        names = []
        for line in verbose_output.splitlines():
            match = _RECEIVING.match(line.strip())
            if match and match.group(1).startswith(prefix):
                names.append(match.group(1)[len(prefix):])
        return names or None

    @staticmethod
    def refused_properties(stderr: str) -> Dict[str, str]:
        """{property: zfs's reason} for every property a receive that
        exited 0 reported it could not set."""
        refused = {}
        for line in stderr.splitlines():
            match = _PROPERTY_REFUSED.match(line.strip())
            if match:
                refused[match.group(1)] = match.group(3)
        return refused

    def spawn(self, argv: Sequence[str], stdin: Union[int, IO, None] = None,
              stdout: Union[int, IO, None] = None) -> subprocess.Popen:
        """Start a zfs process that owns a socket; the caller bounds it."""
        try:
            return subprocess.Popen(list(argv), stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                    stdout=stdout if stdout is not None else subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=self._env(), close_fds=True)
        except FileNotFoundError:
            raise ZfsError(argv, None, "zfs command not found (%s): is ZFS installed?" % self.zfs_bin)

    def receive_failed_only_to_mount(self, stderr: str) -> bool:
        """zfs-fuse cannot receive unmounted: it remounts after every
        receive and reports a busy mountpoint as a failed receive although
        the data arrived. The caller checks the snapshots that arrived."""
        lines = [line for line in stderr.splitlines() if line.strip()]
        return (not self.capabilities.receive_unmounted and bool(lines)
                and all(line.startswith(("cannot mount", "Make sure the FUSE module")) for line in lines))

    def settle_received(self, name: str) -> Optional[str]:
        """Keep a received dataset from mounting over the receiver's own
        paths where ``receive -u -o canmount=noauto`` was not available.
        Returns a warning when it stayed mounted (zfs-fuse races its own
        remounts); canmount=noauto still keeps it from mounting again."""
        caps = self.capabilities
        if not caps.receive_properties:
            self.set(name, "canmount", "noauto")
        if not caps.receive_unmounted:
            try:
                self.unmount(name)
            except ZfsError as error:
                return str(error)
        return None


def parse_resume_dry_run(text: str) -> Tuple[Optional[str], str]:
    """(from, to) of ``zfs send -nvP -t``'s output: its ``full <to> <size>``
    or ``incremental <from> <to> <size>`` line (the names zfs found by the
    token's guids, which survive a rename; the token's own ``toname`` may
    be stale). ValueError when there is none."""
    for line in text.splitlines():
        fields = line.split("\t")
        if fields[0] == "full" and len(fields) >= 2:
            return None, fields[1]
        if fields[0] == "incremental" and len(fields) >= 3:
            return fields[1], fields[2]
    raise ValueError("zfs send -nvP -t printed no stream line: %r" % text[-200:])
