#!/usr/bin/env python3
"""zfsync_send, exactly as bin/zfsync_send runs it, that also writes its own
CPU time to a file: usage: zfsync_rusage.py OUT.json [zfsync_send args...]

The CPU of the Python process alone (all its threads: RUSAGE_SELF) is what
the benchmark calls "our Python"; its zfs(8) children are counted apart
(RUSAGE_CHILDREN). A process that has exited can no longer be asked, hence
the wrapper. The --json report is kept for the stream byte count.
"""
import io
import json
import os
import resource
import sys

ENGINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine", "plugins", "module_utils")
sys.path.insert(0, ENGINE)

from zfsync.cli import main_send  # noqa: E402


def main() -> int:
    out_file, argv = sys.argv[1], sys.argv[2:]
    captured = io.StringIO()
    real_stdout, sys.stdout = sys.stdout, captured
    status = 1
    try:
        status = main_send(argv)
    finally:
        sys.stdout = real_stdout
        text = captured.getvalue()
        real_stdout.write(text)
        try:
            report = json.loads(text[:text.rindex("}") + 1]) if "--json" in argv and "}" in text else None
        except ValueError:
            report = None
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(out_file, "w") as handle:
            json.dump({"self": own.ru_utime + own.ru_stime, "children": children.ru_utime + children.ru_stime,
                       "status": status, "report": report}, handle)
    return status


if __name__ == "__main__":
    sys.exit(main())
