"""Pure logic of the benchmark, shared by the host driver (bench.py) and the
in-VM runner (vmbench.py): the names of scenarios and contenders, parsing
of what the VM reports, medians, ratios and the tables. No I/O here, so
tests/unit/bench can check all of it without a VM.

Python 3.9+ and stdlib only: the same file runs on the host and in the
Debian bookworm guest (Python 3.11).
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

# Scenario ids are the numbers. 1-3 run as one sequence on the tree
# (a full sync, then two incrementals on top of it); 4 on its own dataset.
SCENARIOS: Dict[int, str] = {
    1: "full sync of the tree",
    2: "incremental, a small change in every dataset",
    3: "incremental, only a new snapshot everywhere (per-dataset overhead)",
    4: "full sync of one dataset of incompressible data (throughput)",
}
TREE_SCENARIOS = (1, 2, 3)

PEERS = ("syncoid", "zfs-autobackup", "bzfs")

# The lower bound first: every ratio is taken against it.
BASELINE = "raw"
CONTENDERS: Tuple[str, ...] = (
    "raw", "loop", "zfsync-1", "zfsync-2", "zfsync-4", "zfsync-8", "zfsync-4-tls",
    "syncoid", "zfs-autobackup", "bzfs",
)
DESCRIPTIONS: Dict[str, str] = {
    "raw": "zfs send -R [-I] | zfs receive -u [-F] (one pipe, no network)",
    "loop": "shell loop: one zfs send -p [-I] | zfs receive -u [-F] per dataset",
    "zfsync-1": "zfsync_send -t 1 -> zfsync_recv on 127.0.0.1 (TCP)",
    "zfsync-2": "zfsync_send -t 2 -> zfsync_recv on 127.0.0.1 (TCP)",
    "zfsync-4": "zfsync_send -t 4 -> zfsync_recv on 127.0.0.1 (TCP)",
    "zfsync-8": "zfsync_send -t 8 -> zfsync_recv on 127.0.0.1 (TCP)",
    "zfsync-4-tls": "zfsync_send -t 4, mutual TLS (bytes relayed by Python)",
    "syncoid": "syncoid --recursive --no-privilege-elevation --no-sync-snap (local)",
    "zfs-autobackup": "zfs-autobackup --no-snapshot --other-snapshots --no-holds --exclude-received --strip-path 2 (local)",
    "bzfs": "bzfs SRC DST --recursive (local)",
}

SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """'2G', '512M', '1048576' -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:IB|B)?\s*", text.upper())
    if not match:
        raise ValueError("not a size: %r (use e.g. 512M or 2G)" % text)
    return int(match.group(1)) * SIZE_UNITS[match.group(2)]


def format_size(size: int) -> str:
    for unit in ("G", "M", "K"):
        if size >= SIZE_UNITS[unit] and size % SIZE_UNITS[unit] == 0:
            return "%d %siB" % (size // SIZE_UNITS[unit], unit)
    return "%d B" % size


def parse_list(text: str, allowed: Sequence, convert=str) -> List:
    """'1,3' or 'all' -> the chosen items, in the order of ``allowed``."""
    if text.strip() == "all":
        return list(allowed)
    chosen = [convert(item.strip()) for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in allowed]
    if unknown or not chosen:
        raise ValueError("unknown %s (choose from: %s)" % (
            ", ".join(map(str, unknown)) or "empty list", ", ".join(map(str, allowed))))
    return [item for item in allowed if item in chosen]


def run_order(contenders: Sequence[str], run: int) -> List[str]:
    """Rotate the contender order from run to run, so that a change in host
    load (shared with other VMs) does not always hit the same contender."""
    if not contenders:
        return []
    shift = run % len(contenders)
    return list(contenders[shift:]) + list(contenders[:shift])


# -- what the VM reports -------------------------------------------------------

def parse_proc_stat(text: str) -> Dict[str, int]:
    """/proc/PID/stat -> clock ticks of the process itself (all its threads)
    and of its waited-for children. The command name (field 2) may hold
    spaces and parentheses: split after the last ')'."""
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime is field 14.
    utime, stime, cutime, cstime = (int(rest[i]) for i in range(11, 15))
    return {"self": utime + stime, "children": cutime + cstime}


@dataclass
class ZfsCall:
    start: float
    end: float
    status: int
    side: str
    subcommand: str


def parse_shim_log(lines: Iterable[str]) -> List[ZfsCall]:
    """Lines of the zfs(8) shim: 'START END STATUS SIDE SUBCOMMAND [ARGS...]'
    (times in seconds since the epoch). Broken lines (a call still running
    when the log was read) are skipped."""
    calls = []
    for line in lines:
        parts = line.split()
        if len(parts) < 5:
            continue
        try:
            calls.append(ZfsCall(float(parts[0]), float(parts[1]), int(parts[2]), parts[3], parts[4]))
        except ValueError:
            continue
    return calls


def summarize_calls(calls: Sequence[ZfsCall], since: float = 0.0, until: float = float("inf")
                    ) -> Dict[str, Dict[str, float]]:
    """{ 'side subcommand': {count, seconds} } for the calls that started in
    [since, until], plus a 'total' entry."""
    summary: Dict[str, Dict[str, float]] = {}
    for call in calls:
        if not since <= call.start <= until:
            continue
        for key in ("%s %s" % (call.side, call.subcommand), "total"):
            entry = summary.setdefault(key, {"count": 0, "seconds": 0.0})
            entry["count"] += 1
            entry["seconds"] += call.end - call.start
    return summary


def parse_importtime(text: str) -> List[list]:
    """``python -X importtime`` output -> [[module, cumulative us, depth]],
    slowest first, zfsync's own modules left out (they are the sum of
    what they import): which stdlib imports make the start-up slow."""
    found = []
    for line in text.splitlines():
        match = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( +)(\S+)", line)
        if match and not match.group(4).startswith("zfsync"):
            found.append([match.group(4), int(match.group(2)), (len(match.group(3)) - 1) // 2])
    return sorted(found, key=lambda item: -item[1])


def zfsync_bytes(report: dict) -> Optional[int]:
    """Stream bytes of a ``zfsync_send --json`` report (None if unknown)."""
    value = report.get("bytes") if isinstance(report, dict) else None
    return value if isinstance(value, int) else None


# -- numbers -----------------------------------------------------------------

def median(values: Iterable[Optional[float]]) -> Optional[float]:
    """Median of the values that exist; None when there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(value: Optional[float], base: Optional[float]) -> Optional[float]:
    if value is None or not base:
        return None
    return value / base


@dataclass
class Sample:
    """One timed step: a contender in a scenario, in one run."""
    scenario: int
    contender: str
    run: int
    ok: bool
    seconds: Optional[float] = None
    error: Optional[str] = None
    bytes: Optional[int] = None
    cpu: Dict[str, float] = field(default_factory=dict)  # seconds: total, py_send, py_recv

    @classmethod
    def from_dict(cls, data: dict) -> "Sample":
        known = {k: data[k] for k in ("scenario", "contender", "run", "ok", "seconds", "error", "bytes", "cpu")
                 if k in data}
        return cls(**known)


@dataclass
class Row:
    contender: str
    runs: int
    ok: int
    seconds: Optional[float]
    ratio: Optional[float]
    cpu_total: Optional[float]
    cpu_python: Optional[float]
    bytes: Optional[int]
    error: Optional[str]


def python_cpu(sample: Sample) -> Optional[float]:
    """CPU seconds of our own Python processes (sender + receiver daemon,
    without their zfs children); None for tools that are not ours."""
    if "py_send" not in sample.cpu:
        return None
    return sample.cpu.get("py_send", 0.0) + sample.cpu.get("py_recv", 0.0)


def aggregate(samples: Sequence[Sample], scenario: int, contenders: Sequence[str]) -> List[Row]:
    """One row per contender: medians over its successful runs, the ratio
    of its median wall time to the baseline's median wall time."""
    rows = []
    mine = [s for s in samples if s.scenario == scenario]
    for name in contenders:
        runs = [s for s in mine if s.contender == name]
        good = [s for s in runs if s.ok]
        failed = [s for s in runs if not s.ok]
        rows.append(Row(
            contender=name, runs=len(runs), ok=len(good),
            seconds=median(s.seconds for s in good),
            ratio=None,
            cpu_total=median(s.cpu.get("total") for s in good),
            cpu_python=median(python_cpu(s) for s in good),
            bytes=median(s.bytes for s in good),  # type: ignore[arg-type]
            error=failed[-1].error if failed else None))
    base = next((r.seconds for r in rows if r.contender == BASELINE), None)
    for row in rows:
        row.ratio = ratio(row.seconds, base)
    return rows


def per_dataset_ms(seconds: Optional[float], datasets: int) -> Optional[float]:
    if seconds is None or datasets < 1:
        return None
    return 1000.0 * seconds / datasets


def per_gib(value: Optional[float], size: Optional[float]) -> Optional[float]:
    if value is None or not size:
        return None
    return value / (size / float(1 << 30))


# -- tables ------------------------------------------------------------------

def fmt(value: Optional[float], digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else "%.*f%s" % (digits, value, suffix)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, first column left-aligned, the others right-
    aligned; a Markdown-compatible pipe table, so the README shows it too."""
    cells = [list(headers)] + [list(r) for r in rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(headers))]

    def line(row):
        out = []
        for i, cell in enumerate(row):
            out.append(str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i]))
        return "| " + " | ".join(out) + " |"

    rule = "|" + "|".join(("-" * (w + 1)) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def scenario_table(rows: Sequence[Row], scenario: int, datasets: int, big_size: int) -> str:
    """The table of one scenario. Scenario 3 adds ms per dataset; scenario
    4 adds throughput and CPU per GiB."""
    headers = ["contender", "median s", "x raw", "ok/runs", "CPU s (all)", "CPU s (our Python)"]
    if scenario in TREE_SCENARIOS:
        headers.append("ms/dataset")
    else:
        headers += ["MiB/s", "Python CPU s/GiB"]
    headers.append("note")
    body = []
    for row in rows:
        cells = [row.contender, fmt(row.seconds), fmt(row.ratio, 2, "x"), "%d/%d" % (row.ok, row.runs),
                 fmt(row.cpu_total), fmt(row.cpu_python)]
        if scenario in TREE_SCENARIOS:
            cells.append(fmt(per_dataset_ms(row.seconds, datasets), 1))
        else:
            rate = None if not row.seconds else big_size / float(1 << 20) / row.seconds
            cells += [fmt(rate, 1), fmt(per_gib(row.cpu_python, big_size), 2)]
        cells.append(short_error(row.error) if row.error else "")
        body.append(cells)
    return render_table(headers, body)


def summary_table(samples: Sequence[Sample], contenders: Sequence[str], scenarios: Sequence[int],
                  big_contenders: Optional[Sequence[str]] = None) -> str:
    """One row per contender, one column per scenario: 'median s (x raw)',
    or why it has no number; for the README."""
    by_scenario = {}
    for scenario in scenarios:
        chosen = big_contenders if scenario == 4 and big_contenders is not None else contenders
        by_scenario[scenario] = {r.contender: r for r in aggregate(samples, scenario, chosen)}
    body = []
    for name in contenders:
        cells = [name]
        for scenario in scenarios:
            row = by_scenario[scenario].get(name)
            if row is None:
                cells.append("")
            elif row.seconds is None:
                cells.append("failed" if row.runs else "-")
            else:
                cells.append("%.1f s (%s)" % (row.seconds, fmt(row.ratio, 2, "x")))
        body.append(cells)
    return render_table(["contender"] + ["scenario %d" % s for s in scenarios], body)


def short_error(error: str, limit: int = 70) -> str:
    """The first meaningful line of an error, cut to fit a table cell."""
    lines = [l.strip() for l in error.splitlines() if l.strip()]
    text = lines[0] if lines else error.strip()
    text = text.replace("|", "/")
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass
class Target:
    name: str
    met: Optional[bool]
    detail: str


def check_targets(samples: Sequence[Sample], contenders: Sequence[str]) -> List[Target]:
    """The issue's targets, each met, missed, or not measured (None)."""
    targets = []
    rows4 = {r.contender: r for r in aggregate(samples, 4, contenders)}
    z4 = rows4.get("zfsync-4") or rows4.get("zfsync-1")
    if z4 is not None and z4.ratio is not None:
        targets.append(Target("scenario 4: zfsync within 1.15x of the raw pipe", z4.ratio <= 1.15,
                              "%s at %.2fx" % (z4.contender, z4.ratio)))
    else:
        targets.append(Target("scenario 4: zfsync within 1.15x of the raw pipe", None, "not measured"))
    # The tools users would pick instead; the shell loop is a baseline,
    # reported beside them.
    peers = PEERS
    for scenario in (2, 3):
        rows = {r.contender: r for r in aggregate(samples, scenario, contenders)}
        mine = rows.get("zfsync-4")
        name = "scenario %d: zfsync-4 within 2x of raw -R -I" % scenario
        if mine is None or mine.ratio is None:
            targets.append(Target(name, None, "not measured"))
        else:
            targets.append(Target(name, mine.ratio <= 2.0, "%.2fx" % mine.ratio))
        name = "scenario %d: zfsync-4 faster than every peer" % scenario
        timed = [(p, rows[p].seconds) for p in peers if p in rows and rows[p].seconds is not None]
        if mine is None or mine.seconds is None or not timed:
            targets.append(Target(name, None, "not measured"))
        else:
            slower = [p for p, s in timed if s <= mine.seconds]
            detail = "zfsync-4 %.2f s vs %s" % (mine.seconds, ", ".join("%s %.2f s" % t for t in timed))
            untimed = [p for p in peers if p in rows and rows[p].seconds is None]
            if untimed:
                detail += "; did not run: %s" % ", ".join(untimed)
            if slower:
                detail += "; not faster than: %s" % ", ".join(slower)
            # A peer that did not run leaves the target unproven, not met.
            targets.append(Target(name, False if slower else (None if untimed else True), detail))
        loop = rows.get("loop")
        if mine is not None and mine.seconds is not None and loop is not None and loop.seconds is not None:
            targets.append(Target("scenario %d: (baseline) zfsync-4 faster than the shell loop" % scenario,
                                  mine.seconds < loop.seconds,
                                  "zfsync-4 %.2f s vs loop %.2f s" % (mine.seconds, loop.seconds)))
    return targets


def format_targets(targets: Sequence[Target]) -> str:
    word = {True: "MET", False: "MISSED", None: "NOT MEASURED"}
    return "\n".join("- %-58s %-12s %s" % (t.name, word[t.met], t.detail) for t in targets)
