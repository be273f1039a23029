"""Replay the original sender's bytes from the golden captures against our
receiver on OpenZFS 2.1 in a lab VM, and compare our replies with the
original receiver's.

    .venv/bin/pytest -q tests/lab/test_golden_replay.py      (make test-lab)

One VM (`tests/lab/launch`, the cached image; never builds it), pool `tank`
on its data disk, our `zfsync_recv` on 127.0.0.1:3030 with root
`tank/recv/remote`, restarted for each scenario (verbose except for
prune_noverbose, as the original ran). The scenarios run in capture order,
each on the state the previous ones left, like the original's. Inside a
scenario every step (the sender's bytes up to the point where the original
receiver replied) is replayed in the order the original sender began them,
across its connections; after each we read as many frames as our receiver
should answer.

Our replies must equal the original's, text up to the NUL, except for the
differences listed in EXPECTED_DIFFERENCES (each one used, or the table is
stale and the test fails). Our frames are 512 bytes, zero after the NUL; the
original's padding holds stale bytes (`0:s2\\0L`, `:close\\0uffer`) and is
not compared. Finally the received tree is checked against the captures:
datasets, snapshots and their guids (the streams' toguid), nothing left in
the buffer, nothing mounted, no error flag, and the files of each newest
snapshot read through a clone.

Timings and the full comparison are kept in tests/output/lab-golden/.
"""
from __future__ import annotations

import base64
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

import pytest

LAB = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, LAB)
import golden  # noqa: E402
import labkit  # noqa: E402

PCAP_DIR = os.path.join(labkit.REPO, "tests", "data", "golden", "pcap")
OUTPUT = os.path.join(labkit.REPO, "tests", "output", "lab-golden")
STATE_DIR = os.environ.get("ZFSYNC_GOLDEN_STATE_DIR", "/tmp/zfsync-golden-lab")
GUEST = "/root/zfsync"
ROOT = "tank/recv/remote"
SENDER_ROOT = "tank/send/local"
FLAG_DIR = "/var/run/zfshad"
CLOSED = "<closed>"   # the receiver closed the connection (FIN) at this step

# Capture order (pcap timestamps); each scenario starts from what the ones
# before it left on the receiver, as the original's did.
SCENARIOS = ("full", "incr", "noop", "s3", "newmulti", "fullpath", "prune", "prune_noverbose")
QUIET = {"prune_noverbose"}   # the original receiver ran without -v only there
# What the original setup had on the receiver before a scenario.
PRECONDITIONS = {
    # "a receiver dataset /test3 that exists with an unrelated @old"
    "fullpath": "zfs create %s/test3 && head -c 65536 /dev/urandom > /%s/test3/unrelated.bin "
                "&& zfs snapshot %s/test3@old" % (ROOT, ROOT, ROOT),
}


@dataclass(frozen=True)
class Difference:
    """Where our receiver answers differently from the original, on purpose.

    At step `step` (its first frame's text, `stream <snapshots>`, or `EOF`
    when the sender closed its side) of the connection whose first frame is
    `connection`, the original's reply `original` (None: no frame there)
    is `ours` in our replay (None: no frame; `^...`: a regex, for texts that
    carry what zfs printed). CLOSED stands for the receiver closing."""
    scenario: str
    connection: str
    step: str
    original: Optional[str]
    ours: Optional[str]
    why: str


EXPECTED_DIFFERENCES = (
    # wire_noop: the original's deadlock (PROTOCOL.md, known bugs).
    Difference("noop", "@s1@s2::sync", "@s1@s2::sync", None, "0:OK",
               "up to date: ours prunes and answers 0:OK at once; the original waited for a stream that never "
               "comes (deadlock) and the sender waited for that 0:OK"),
    Difference("noop", "@s1@s2::sync", "EOF", "1:zfs_receive(incr)", None,
               "the original's receive failed only when the hung sender was killed 40 s later; ours had answered"),
    Difference("noop", "@s1@s2:/test1:sync", "@s1@s2:/test1:sync", None, "0:OK",
               "as for the root: no deadlock"),
    Difference("noop", "@s1@s2:/test1:sync", "EOF", "1:zfs_receive(incr)", None,
               "as for the root: nothing left to fail"),
    # wire_prune: the original receiver crashed pruning @s1 in verbose mode.
    Difference("prune", "@s2@s3@s4@s5@s6@s7::sync", "stream tank/send/local@s7", CLOSED, None,
               "the original crashed while pruning @s1 (verbose logging through a copy of its log stream)"),
    Difference("prune", "@s2@s3@s4@s5@s6@s7::sync", "stream tank/send/local@s7", None, "0:OK",
               "ours received @s7, pruned @s1 and answered"),
    Difference("prune", "@s6@s7:/test3:sync", "@s4@s5@s6@s7:/test2:sync", CLOSED, None,
               "the original receiver process was dead by then (crash on the other connection)"),
    Difference("prune", "@s6@s7:/test3:sync", "@s4@s5@s6@s7:/test2:sync", None, "0:s6",
               "ours is alive and answers the sync"),
    Difference("prune", "@s6@s7:/test3:sync", "EOF", None, r"^1:zfs_receive\(incr\): cannot receive",
               "the original sender died of SIGPIPE before sending /test2's stream; our zfs receive reads EOF "
               "and ours reports it (the copy stays at @s6)"),
)

# Connections of a capture that are not replayed, and why.
NOT_REPLAYED = {
    ("prune", "(no bytes)"): "a connection attempt the dead original receiver refused (RST); nothing was sent",
}


# -- comparison (pure) -------------------------------------------------------------


def original_events(conn: golden.Connection, step_index: int, closed_before: bool) -> List[str]:
    step = conn.steps[step_index]
    events = [golden.frame_text(f) for f in step.replies()]
    if step.receiver_closed and not closed_before and not step.eof:
        events.append(CLOSED)
    return events


def apply_differences(scenario: str, conn: golden.Connection, step: golden.Step, events: List[str],
                      used: set) -> List[str]:
    """Our expected replies at a step: the original's, changed as the table says."""
    expected = list(events)
    for index, diff in enumerate(EXPECTED_DIFFERENCES):
        if (diff.scenario, diff.connection, diff.step) != (scenario, conn.label, step.label()):
            continue
        used.add(index)
        if diff.original is not None:
            assert diff.original in expected, "table entry %r: the original has no %r there" % (diff, diff.original)
            position = expected.index(diff.original)
            if diff.ours is None:
                del expected[position]
            else:
                expected[position] = diff.ours
        else:
            expected.append(diff.ours)
    return expected


def matches(expected: str, got: str) -> bool:
    return bool(re.match(expected, got)) if expected.startswith("^") else expected == got


@dataclass
class Outcome:
    report: List[str]
    problems: List[str]


def plan_for(scenario: str, conns: List[golden.Connection], used: set) -> Dict[str, list]:
    """What the replayer reads after each step: our expected frames, and
    whether our receiver should close there."""
    plan: Dict[str, list] = {}
    for conn in conns:
        closed, steps = False, []
        for s, step in enumerate(conn.steps):
            expected = apply_differences(scenario, conn, step, original_events(conn, s, closed), used)
            closed = closed or step.receiver_closed
            steps.append({"frames": len([e for e in expected if e != CLOSED]), "close": CLOSED in expected,
                          "expected": expected})
        plan[str(conn.client_port)] = steps
    return plan


def compare(scenario: str, conns: List[golden.Connection], plan: Dict[str, list], results: Dict[str, list]) -> Outcome:
    report, problems = [], []
    for conn in conns:
        port = str(conn.client_port)
        if not conn.steps:
            why = NOT_REPLAYED.get((scenario, conn.label))
            report.append("connection %s %s: not replayed: %s" % (port, conn.label, why))
            if why is None:
                problems.append("%s: connection %s has no steps and no NOT_REPLAYED entry" % (scenario, port))
            continue
        report.append("connection %s %s" % (port, conn.label))
        we_closed = False
        for s, (step, record) in enumerate(zip(conn.steps, results[port])):
            ours = [golden.frame_text(base64.b64decode(f)) for f in record["frames"]]
            raw = [base64.b64decode(f) for f in record["frames"]]
            for frame in raw:
                if len(frame) != golden.FRAME_SIZE or frame.partition(b"\0")[2].strip(b"\0"):
                    problems.append("%s %s step %r: our frame is not %d bytes zero-padded: %r" % (
                        scenario, conn.label, step.label(), golden.FRAME_SIZE, frame[:64]))
            if record["eof"] and not we_closed and not step.eof:
                ours.append(CLOSED)
            we_closed = we_closed or record["eof"]
            expected = plan[port][s]["expected"]
            original = original_events(conn, s, any(st.receiver_closed for st in conn.steps[:s]))
            if step.eof:
                # After the sender's FIN only our frames count; we must see our
                # receiver close (read until EOF, bounded), not hang.
                expected = [e for e in expected if e != CLOSED]
                if not record["eof"]:
                    problems.append("%s %s: our receiver did not close after the sender's EOF: %s" % (
                        scenario, conn.label, record["error"]))
            ok = len(ours) == len(expected) and all(matches(e, g) for e, g in zip(expected, ours))
            error = record["error"]
            if error and not (we_closed or any(st.receiver_closed for st in conn.steps[:s])):
                ok = False
            residue = [f.partition(b"\0")[2].rstrip(b"\0") for f in conn.steps[s].replies()]
            note = " (original padding %r)" % [r for r in residue if r] if any(residue) else ""
            verdict = "same" if ok and expected == original else ("expected difference" if ok else "UNEXPECTED")
            report.append("  step %-52s original %-28s ours %-40s %s %.1fs%s%s" % (
                repr(step.label()[:50]), original, ours, verdict, record["seconds"], note,
                " [%s]" % error if error else ""))
            if not ok:
                problems.append("%s %s step %r: original %r, expected %r, ours %r%s" % (
                    scenario, conn.label, step.label(), original, expected, ours,
                    " (%s)" % error if error else ""))
    return Outcome(report, problems)


# -- the VM ----------------------------------------------------------------------


class GoldenLab:
    def __init__(self, vm: labkit.LabVM, timings: labkit.Timings):
        self.vm = vm
        self.timings = timings
        self.report: List[str] = []

    def sh(self, command: str, timeout: float = 300, check: bool = True):
        return self.vm.run(command, timeout=timeout, check=check)

    def start_receiver(self, scenario: str) -> None:
        self.stop_receiver()
        verbose = "" if scenario in QUIET else "-v "
        self.sh("mkdir -p /var/log/zfsync && cd %s && (setsid python3 bin/zfsync_recv %s-p 3030 "
                "-o /var/log/zfsync/%s.log -d %s -i 127.0.0.1 %s > /var/log/zfsync/%s.out 2>&1 < /dev/null & "
                "echo $! > /run/golden-recv.pid)" % (GUEST, verbose, scenario, FLAG_DIR, ROOT, scenario))
        self.sh("for i in $(seq 600); do ss -Hltn 'sport = :3030' | grep -q . && exit 0; "
                "kill -0 $(cat /run/golden-recv.pid) || break; sleep 0.1; done; "
                "cat /var/log/zfsync/%s.out; exit 1" % scenario, timeout=120)

    def stop_receiver(self) -> None:
        self.sh("test -f /run/golden-recv.pid || exit 0; pid=$(cat /run/golden-recv.pid); kill $pid 2>/dev/null; "
                "for i in $(seq 600); do kill -0 $pid 2>/dev/null || exit 0; sleep 0.1; done; kill -9 $pid",
                timeout=120)

    def replay(self, scenario: str, plan: Dict[str, list]) -> Dict[str, list]:
        self.vm.run("cat > /root/plan-%s.json" % scenario, input=json.dumps(plan))
        res = self.sh("cd %s && python3 tests/lab/golden.py replay tests/data/golden/pcap/wire_%s.pcap "
                      "--plan /root/plan-%s.json --port 3030" % (GUEST, scenario, scenario), timeout=1800)
        return json.loads(res.stdout)


@pytest.fixture(scope="module")
def lab():
    timings = labkit.Timings()
    os.makedirs(OUTPUT, exist_ok=True)
    with labkit.lab_vm(STATE_DIR, "golden", timings=timings) as vm:
        golden_lab = GoldenLab(vm, timings)
        try:
            with timings.phase("prepare"):
                vm.push(labkit.REPO, list(labkit.ENGINE_PATHS) + ["tests/lab/golden.py", "tests/data/golden/pcap"],
                        GUEST)
                vm.run("zpool create -f tank /dev/vdb && zfs version | head -2")
            yield golden_lab
        finally:
            labkit.keep_logs(vm, timings, "cd /var/log/zfsync && tail -n +1 *",
                             os.path.join(OUTPUT, "receiver-logs.txt"), before=golden_lab.stop_receiver)
    summary = "golden replay timings:\n" + timings.report()
    with open(os.path.join(OUTPUT, "report.txt"), "w") as handle:
        handle.write("\n".join(golden_lab.report) + "\n\n" + summary + "\n")
    print("\n" + summary + "\nreport: %s/report.txt" % OUTPUT, file=sys.__stderr__)


def load(scenario: str) -> List[golden.Connection]:
    with open(os.path.join(PCAP_DIR, "wire_%s.pcap" % scenario), "rb") as handle:
        return golden.connections(handle.read())


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_replay_matches_the_original_receiver(lab, scenario):
    conns = load(scenario)
    plan = plan_for(scenario, conns, set())
    with lab.timings.phase("replay %s" % scenario):
        if scenario in PRECONDITIONS:
            lab.sh(PRECONDITIONS[scenario])
        lab.start_receiver(scenario)
        results = lab.replay(scenario, {port: [{"frames": s["frames"], "close": s["close"]} for s in steps]
                                        for port, steps in plan.items()})
    outcome = compare(scenario, conns, plan, results)
    lab.report += ["== %s" % scenario] + outcome.report
    assert not outcome.problems, "\n".join(outcome.report + ["UNEXPECTED:"] + outcome.problems)


def test_every_expected_difference_names_a_step_of_the_captures():
    used: set = set()
    for scenario in SCENARIOS:
        plan_for(scenario, load(scenario), used)
    unused = [EXPECTED_DIFFERENCES[i] for i in range(len(EXPECTED_DIFFERENCES)) if i not in used]
    assert not unused, "stale table entries (no such step in the captures): %s" % unused


def captured_state():
    """From the captures: each suffix's snapshot list in its last sync frame
    (the sender's final state), and every snapshot's guid from the streams."""
    final: Dict[str, List[str]] = {}
    guids: Dict[str, int] = {}
    for scenario in SCENARIOS:
        for conn in load(scenario):
            for step in conn.steps:
                for item in step.items():
                    if item.stream:
                        for snap in item.stream.snapshots:
                            guids[snap.name[len(SENDER_ROOT):]] = snap.guid
                    elif item.text and item.text.endswith(":sync"):
                        snaps, suffix, _cmd = item.text.rsplit(":", 2)
                        final[suffix] = snaps.lstrip("@").split("@")
    return final, guids


def test_received_tree_matches_the_captures(lab):
    final, guids = captured_state()
    lab.stop_receiver()
    listing = lab.sh("zfs list -H -p -o name,guid -t snapshot -s createtxg -r %s" % ROOT).stdout
    have: Dict[str, List[str]] = {}
    wrong_guids = []
    for line in listing.splitlines():
        name, guid = line.split("\t")
        dataset, snap = name.split("@")
        suffix = dataset[len(ROOT):]
        have.setdefault(suffix, []).append(snap)
        if guids.get("%s@%s" % (suffix, snap)) != int(guid):
            wrong_guids.append((name, int(guid), guids.get("%s@%s" % (suffix, snap))))
    datasets = lab.sh("zfs list -H -o name -t filesystem -r %s" % ROOT).stdout.split()
    buffer = lab.sh("zfs list -H -o name -t all -r %s.zfsyncbuffer" % ROOT).stdout.split()
    mounted = lab.sh("zfs get -H -o name,value mounted -t filesystem -r %s" % ROOT).stdout
    flags = lab.sh("ls -A %s 2>/dev/null || true" % FLAG_DIR).stdout.split()
    lab.report += ["== received tree", "datasets: %s" % datasets, "snapshots: %s" % have,
                   "buffer: %s" % buffer, "error flags: %s" % flags]
    assert sorted(datasets) == sorted(ROOT + suffix for suffix in final)
    assert have == final
    assert not wrong_guids, "snapshot guids differ from the streams' toguid: %s" % wrong_guids
    assert buffer == [ROOT + ".zfsyncbuffer"], "left in the buffer: %s" % buffer[1:]
    assert all(line.endswith("\tno") for line in mounted.splitlines()), "mounted replicas:\n" + mounted
    assert flags == [], "error flags left: %s" % flags


# The files of each dataset's newest snapshot, as the original sender had
# them (golden README: 3 MB and 2 MB of random data in two datasets; /test2,
# new in wire_newmulti, holds 1 MB). zfs receive checks the streams'
# checksums, so names and sizes read through a clone show the data arrived.
EXPECTED_FILES = {
    "": {"root.txt": 17},
    "/test1": {"data1.bin": 3145728},
    "/test1/test1.1": {"new.txt": 7},
    "/test1/test1.1/test1.1.1": {"data2.bin": 2097152},
    "/test2": {"data3.bin": 1048576, "more.txt": 14},
    "/test3": {"data4.txt": 12},
}


def file_sizes(listing: str) -> Dict[str, int]:
    """{name: size} from `find -printf '%s %P\\n'` lines (a sha256sum line follows them)."""
    sizes = {}
    for line in listing.splitlines():
        size, _space, name = line.partition(" ")
        if size.isdigit() and not name.startswith("-"):
            sizes[name] = int(size)
    return sizes


def test_received_files_are_readable_through_clones(lab):
    final, _guids = captured_state()
    listing, found = [], {}
    for n, (suffix, snaps) in enumerate(sorted(final.items())):
        clone = "tank/verify%d" % n
        out = lab.sh("zfs clone -o mountpoint=/verify%d %s%s@%s %s && "
                     "cd /verify%d && find . -type f -printf '%%s %%P\\n' | sort -k2 && "
                     "find . -type f -exec cat {} + | sha256sum; cd / && zfs destroy %s"
                     % (n, ROOT, suffix, snaps[-1], clone, n, clone)).stdout
        listing.append("%s@%s:\n%s" % (suffix or "(root)", snaps[-1], out))
        found[suffix] = file_sizes(out)
    lab.report += ["== files of the newest snapshots"] + listing
    with open(os.path.join(OUTPUT, "files.txt"), "w") as handle:
        handle.write("\n".join(listing) + "\n")
    assert found == EXPECTED_FILES
