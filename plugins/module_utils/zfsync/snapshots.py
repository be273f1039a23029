# -*- coding: utf-8 -*-
# Copyright: zfsync engineers
# BSD 2-Clause License (see LICENSE)
"""zfsyncron snapshots: naming, classes, retention, the ``-w`` window.

Pure logic, no I/O: every function takes the root dataset's snapshots (as
listed by zfs, oldest first) and a clock value, and answers what to name the
next snapshot and which ones to destroy. ``cron.py`` and the ``snapshot``
module apply the answers through ``zfs.py``.

Names are ``yymmdd-HHMMSS_<class>`` in the host's **local time**, as the
original took them from date(1): an operator reading ``zfs list`` sees the
wall-clock time cron ran at. The class says how the snapshot relates to the
newest one before it:

- ``S`` (secondly): same minute,
- ``M`` (minutely): same hour,
- ``H`` (hourly):   same day,
- ``D`` (daily):    otherwise, or when there was none.

Retention keeps the newest N snapshots of a class (``-s -m -h -d``, defaults
1 4 3 2). Two deliberate differences from the original, both on the safe side:

- Only names of the exact zfsyncron pattern belong to a class. The original
  matched ``_S$`` and would destroy a hand-made ``backup_S``.
- "Newest" is creation order (the order zfs lists them in), where the
  original sorted by name. They agree except when the clock went back (the
  end of daylight saving time, a corrected clock), when name order would
  destroy the wrong ones.
"""
from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from . import protocol

SECONDLY = "S"
MINUTELY = "M"
HOURLY = "H"
DAILY = "D"
CLASSES = (SECONDLY, MINUTELY, HOURLY, DAILY)

_NAME_RE = re.compile(r"^(\d{6}-\d{6})_([SMHD])$")
_NAME_TIME_FORMAT = "%y%m%d-%H%M%S"


@dataclass(frozen=True)
class Retention:
    """How many snapshots of each class to keep (``-s -m -h -d``).

    0 keeps none of that class, as in the original: with ``secondly=0`` a
    run in the same minute as the previous one takes its snapshot and
    destroys it again at once."""

    secondly: int = 1
    minutely: int = 4
    hourly: int = 3
    daily: int = 2

    def __post_init__(self) -> None:
        for field_name in ("secondly", "minutely", "hourly", "daily"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError("retention %s must be a whole number >= 0, not %r" % (field_name, value))

    def keep(self, snapshot_class: str) -> int:
        return {SECONDLY: self.secondly, MINUTELY: self.minutely,
                HOURLY: self.hourly, DAILY: self.daily}[snapshot_class]


@dataclass(frozen=True)
class Snapshot:
    """One snapshot of the root dataset: its name after ``@`` and, when
    known, its creation time in epoch seconds (``zfs get -p creation``)."""

    name: str
    created: Optional[float] = None


@dataclass(frozen=True)
class CronName:
    """A parsed ``yymmdd-HHMMSS_<class>`` name; ``taken`` is naive local time."""

    taken: datetime.datetime
    snapshot_class: str


@dataclass(frozen=True)
class SnapshotPlan:
    """What a run does: create ``create`` (None: nothing is due), then
    destroy ``destroy`` (oldest first), leaving ``after``."""

    create: Optional[str]
    snapshot_class: Optional[str]
    destroy: Tuple[str, ...]
    after: Tuple[str, ...]

    @property
    def changes(self) -> bool:
        return self.create is not None or bool(self.destroy)


# -- names -------------------------------------------------------------------

def local_time(epoch: float) -> datetime.datetime:
    """Naive local wall-clock time of an epoch, whole seconds."""
    return datetime.datetime.fromtimestamp(math.floor(epoch))


def format_name(taken: datetime.datetime, snapshot_class: str) -> str:
    if snapshot_class not in CLASSES:
        raise ValueError("snapshot class must be one of %s, not %r" % ("".join(CLASSES), snapshot_class))
    return "%s_%s" % (taken.strftime(_NAME_TIME_FORMAT), snapshot_class)


def parse_name(name: str) -> Optional[CronName]:
    """The time and class of a zfsyncron name; None for any other name."""
    match = _NAME_RE.match(name)
    if not match:
        return None
    try:
        taken = datetime.datetime.strptime(match.group(1), _NAME_TIME_FORMAT)
    except ValueError:  # 991399-256199_D has the shape but is no time
        return None
    return CronName(taken, match.group(2))


def snapshot_time(snapshot: Snapshot) -> Optional[datetime.datetime]:
    """When a snapshot was taken, local time: from its name when it is a
    zfsyncron name (what the original compared), else its creation time."""
    parsed = parse_name(snapshot.name)
    if parsed is not None:
        return parsed.taken
    if snapshot.created is not None:
        return local_time(snapshot.created)
    return None


def classify(now: datetime.datetime, previous: Optional[datetime.datetime]) -> str:
    """The class of a snapshot taken at ``now`` after one taken at ``previous``."""
    if previous is None or previous.date() != now.date():
        return DAILY
    if previous.hour != now.hour:
        return HOURLY
    if previous.minute != now.minute:
        return MINUTELY
    return SECONDLY


def next_name(snapshots: Sequence[Snapshot], now: float) -> Tuple[str, str]:
    """(name, class) of a snapshot taken at epoch ``now``; ``snapshots`` are
    the root's, oldest first, and the class compares with the newest one."""
    taken = local_time(now)
    previous = snapshot_time(snapshots[-1]) if snapshots else None
    snapshot_class = classify(taken, previous)
    return format_name(taken, snapshot_class), snapshot_class


def check_fixed_name(name: str) -> None:
    """A snapshot name given by the user must be a single ZFS name component
    that can also travel in a sync frame (no ``:``, ``@``, ``/``)."""
    try:
        protocol.validate_snapshot_name(name)
    except protocol.ProtocolError as error:
        raise ValueError("snapshot name %r cannot be used: %s (allowed: letters, digits, '_', '-', '.', "
                         "space)" % (name, error))


# -- retention -----------------------------------------------------------------

def expired(names: Sequence[str], snapshot_class: str, keep: int) -> List[str]:
    """Names of ``snapshot_class`` beyond the newest ``keep`` of that class,
    oldest first. ``names`` are in creation order, oldest first."""
    of_class = [n for n in names if _class_of(n) == snapshot_class]
    return of_class[:max(len(of_class) - keep, 0)]


def expired_all(names: Sequence[str], retention: Retention) -> List[str]:
    """Every class trimmed to its count, oldest first (the Ansible module;
    zfsyncron prunes only the class it just made, see ``plan_cron_run``)."""
    doomed = set()
    for snapshot_class in CLASSES:
        doomed.update(expired(names, snapshot_class, retention.keep(snapshot_class)))
    return [n for n in names if n in doomed]


def _class_of(name: str) -> Optional[str]:
    parsed = parse_name(name)
    return parsed.snapshot_class if parsed else None


# -- windows and intervals -------------------------------------------------------

def window_met(now: float, window: int) -> bool:
    """``-w W``: a run acts only when the epoch second is a multiple of W."""
    if window < 1:
        raise ValueError("window must be at least 1 second, not %r" % window)
    return math.floor(now) % window == 0


def newest_cron_snapshot(snapshots: Sequence[Snapshot]) -> Optional[Snapshot]:
    for snapshot in reversed(snapshots):
        if parse_name(snapshot.name) is not None:
            return snapshot
    return None


def snapshot_due(snapshots: Sequence[Snapshot], now: float, min_interval: float) -> bool:
    """True unless the newest zfsyncron-named snapshot is younger than
    ``min_interval`` seconds. Its age comes from its name (the same clock
    that named it), so an injected clock and the names agree."""
    if min_interval <= 0:
        return True
    newest = newest_cron_snapshot(snapshots)
    if newest is None:
        return True
    taken = parse_name(newest.name).taken  # type: ignore[union-attr]
    age = (local_time(now) - taken).total_seconds()
    # A name from the future (the clock went back) is not "young": take one.
    return age < 0 or age >= min_interval


# -- plans ---------------------------------------------------------------------

def plan_cron_run(snapshots: Sequence[Snapshot], now: float, retention: Retention) -> SnapshotPlan:
    """zfsyncron: a new snapshot, then the newest N of its class are kept
    (the new one included) and older ones of that class destroyed. The other
    classes are left alone until a snapshot of theirs is taken."""
    name, snapshot_class = next_name(snapshots, now)
    names = [s.name for s in snapshots if s.name != name] + [name]
    destroy = expired(names, snapshot_class, retention.keep(snapshot_class))
    return _plan(name, snapshot_class, names, destroy)


def plan_snapshot(snapshots: Sequence[Snapshot], now: float, retention: Optional[Retention] = None,
                  min_interval: float = 0, name: Optional[str] = None) -> SnapshotPlan:
    """The ``snapshot`` module: a snapshot with a given ``name`` (none when
    it exists) or a zfsyncron name (none inside ``min_interval``, or when
    one of that name exists already), then, when ``retention`` is given,
    every class trimmed to its count."""
    existing = [s.name for s in snapshots]
    snapshot_class: Optional[str] = None
    create: Optional[str] = None
    if name is not None:
        check_fixed_name(name)
        create = None if name in existing else name
    elif snapshot_due(snapshots, now, min_interval):
        generated, snapshot_class = next_name(snapshots, now)
        create = None if generated in existing else generated
        if create is None:
            snapshot_class = None
    names = existing + ([create] if create else [])
    destroy = expired_all(names, retention) if retention is not None else []
    return _plan(create, snapshot_class, names, destroy)


def _plan(create: Optional[str], snapshot_class: Optional[str], names: Sequence[str],
          destroy: Sequence[str]) -> SnapshotPlan:
    doomed = set(destroy)
    return SnapshotPlan(create, snapshot_class, tuple(destroy), tuple(n for n in names if n not in doomed))
