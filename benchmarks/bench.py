#!/usr/bin/env python3
"""zfsync against the raw zfs pipe and the tools users would pick instead,
inside one lab VM on OpenZFS (issue 6). Host side: builds or reuses the lab
image, boots one VM, copies the engine and benchmarks/vmbench.py into it,
runs a profile pass of scenarios 1-3 with every zfs(8) call timed, then
every contender through every scenario --runs times (the order of the
contenders rotates from run to run), and prints one report: a table per scenario with
medians and ratios to the raw pipe, the issue's targets, and where the
per-dataset time goes. The VM is always torn down (unless --keep-vm).

  benchmarks/bench.py                       # the issue's sizes, 3 runs
  benchmarks/bench.py --datasets 20 --big-size 256M --runs 1 --contenders raw,zfsync-4
  benchmarks/bench.py --render results/2026-11-27.json   # the report again, no VM

Stdlib only; run as root on the Debian 12 host (like tests/lab/*).
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "lab"))
import benchlib  # noqa: E402
import labkit  # noqa: E402  (tests/lab: the launcher as a module)

VM = "bench"
# The in-VM side: what vmbench.py imports and runs.
VM_FILES = ("benchlib.py", "vmbench.py", "zfsync_rusage.py")
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


def say(message: str) -> None:
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), message), file=sys.stderr, flush=True)


# -- files for the VM ------------------------------------------------------------

def make_pki(directory: str) -> None:
    """A CA, a receiver certificate for 127.0.0.1 and a sender certificate,
    as tests/integration/test_engine_security.py makes them."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl"] + list(args), cwd=directory, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench-ca",
            "-keyout", "ca.key", "-out", "ca.pem")
    for name, san in (("receiver", "IP:127.0.0.1,DNS:localhost"), ("sender", "DNS:sender")):
        with open(os.path.join(directory, name + ".ext"), "w") as handle:
            handle.write("subjectAltName=%s\n" % san)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + name, "-keyout", name + ".key",
                "-out", name + ".csr")
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", name + ".ext", "-out", name + ".pem")


def bundle(pki_dir: str) -> bytes:
    """A tar.gz of what goes to /opt/bench in the VM: the engine exactly as
    in this checkout (bin/ and the zfsync package, the layout bin/* expect),
    the benchmark's VM side, the certificates."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        def add(path: str, arcname: str) -> None:
            tar.add(path, arcname=arcname, filter=lambda t: None if "__pycache__" in t.name else t)

        add(os.path.join(REPO, "bin"), "engine/bin")
        add(os.path.join(REPO, "plugins", "module_utils", "zfsync"), "engine/plugins/module_utils/zfsync")
        for name in VM_FILES:
            add(os.path.join(HERE, name), name)
        for name in ("ca.pem", "receiver.pem", "receiver.key", "sender.pem", "sender.key"):
            add(os.path.join(pki_dir, name), "pki/" + name)
        # pip in the guest trusts what the host trusts (as build-image does).
        if os.path.exists(HOST_CA):
            add(HOST_CA, "host-ca.crt")
    return data.getvalue()


# -- the VM ----------------------------------------------------------------------

class Lab:
    def __init__(self, launch, state_dir: str):
        self.launch = launch
        self.state_dir = state_dir
        self.loads: List[float] = []

    def push(self, payload: bytes) -> None:
        vm = self.launch.load_state(self.state_dir)["vms"][VM]
        argv = self.launch.ssh_argv(vm, "rm -rf /opt/bench && mkdir -p /opt/bench && tar xzf - -C /opt/bench")
        proc = subprocess.run(argv, input=payload, capture_output=True, timeout=300)
        if proc.returncode:
            raise RuntimeError("copying the engine into the VM failed: %s" % proc.stderr.decode(errors="replace"))

    def vmbench(self, args: str, timeout: float) -> dict:
        """One vmbench.py call; its stderr (progress) is echoed, its stdout is JSON."""
        self.loads.append(os.getloadavg()[0])
        res = self.launch.run_ssh(self.state_dir, VM, "python3 /opt/bench/vmbench.py " + args,
                                  timeout=timeout, check=False)
        for line in res.stderr.splitlines():
            print("    " + line, file=sys.stderr, flush=True)
        self.loads.append(os.getloadavg()[0])
        lines = [l for l in res.stdout.splitlines() if l.strip()]
        if res.returncode or not lines:
            raise RuntimeError("vmbench %s failed (exit %d): %s" % (args, res.returncode, res.stderr.strip()[-1500:]))
        return json.loads(lines[-1])


def host_info() -> Dict[str, str]:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((l.split(":", 1)[1].strip() for l in handle if l.startswith("model name")), model)
    except OSError:
        pass
    with open("/proc/meminfo") as handle:
        mem_kib = int(next(l for l in handle if l.startswith("MemTotal")).split()[1])
    return {"cpu": model, "cores": str(os.cpu_count()), "mem": "%.1f GiB" % (mem_kib / 1048576.0),
            "os": platform.platform(), "load_at_start": "%.2f %.2f %.2f" % os.getloadavg()}


def run_benchmark(opts, lab: Lab, results: dict) -> None:
    contenders, scenarios = opts.contenders, opts.scenarios
    peers = lab.vmbench("peers" + (" --install" if opts.install_peers else ""), 3600)
    if peers["missing_before"]:
        results["notes"].append("the lab image lacked %s%s" % (
            ", ".join(peers["missing_before"]),
            "; installed in the VM at benchmark time (apt: sanoid mbuffer pv lzop; pip: zfs-autobackup==3.3 "
            "bzfs==1.25.0)" if peers["installed"] else ""))
    if peers["missing"]:
        results["notes"].append("not available, so not run: %s" % ", ".join(peers["missing"]))
        say("peers missing: %s" % peers["missing"])
        for line in peers.get("log", []):
            say(line)
    results["guest"] = lab.vmbench("info", 300)
    say("guest: %s" % results["guest"])
    results["setup"] = lab.vmbench("setup --datasets %d --small-size %d --big-size %d" % (
        opts.datasets, opts.small_size, opts.big_size if 4 in scenarios else 0), 3600)
    say("setup: %s" % results["setup"])
    results["probe"] = lab.vmbench("probe", 600)
    if opts.profile and 3 in scenarios:
        # First, so that a run cut short still says where the time goes.
        for contender in [c for c in opts.profile_contenders if c in contenders]:
            say("profile pass (zfs(8) calls timed): %s" % contender)
            try:
                out = lab.vmbench("tree --contender %s --run -1 --upto 3 --profile" % contender, 4 * 3600)
                results["profiles"][contender] = profile_entry(out)
            except (RuntimeError, ValueError) as error:
                results["profiles"][contender] = {"error": str(error)}
            save(opts, results)
    tree_upto = max([s for s in scenarios if s in benchlib.TREE_SCENARIOS], default=0)
    samples = results["samples"]
    for run in range(opts.runs):
        for contender in benchlib.run_order(contenders, run):
            jobs = []
            if tree_upto:
                jobs.append(("tree", "--upto %d" % tree_upto, [s for s in (1, 2, 3) if s <= tree_upto]))
            if 4 in scenarios and contender in opts.big_contenders:
                jobs.append(("big", "", [4]))
            for kind, extra, covered in jobs:
                say("run %d/%d: %s, scenario(s) %s" % (run + 1, opts.runs, contender, covered))
                try:
                    out = lab.vmbench("%s --contender %s --run %d %s" % (kind, contender, run, extra), 4 * 3600)
                    samples.extend(out["samples"])
                    if out.get("left_by_tool"):
                        results["notes"].append("%s left %s on the source (removed)" % (
                            contender, ", ".join(out["left_by_tool"][:5])))
                except (RuntimeError, ValueError) as error:  # a crashed run is a failed sample, not a lost night
                    samples.extend({"scenario": s, "contender": contender, "run": run, "ok": False,
                                    "error": str(error)} for s in covered)
                save(opts, results)


def profile_entry(out: dict) -> dict:
    """What the report keeps of one profile sequence (vmbench tree --profile)."""
    return {"calls": out.get("profile", {}),
            "seconds": {str(s["scenario"]): s.get("seconds") for s in out["samples"]},
            "dataset_seconds": {str(s["scenario"]): s.get("dataset_seconds") for s in out["samples"]},
            "cpu": {str(s["scenario"]): s.get("cpu") for s in out["samples"]},
            "ok": all(s["ok"] for s in out["samples"])}


# -- the report ------------------------------------------------------------------

def render_profile(results: dict) -> str:
    """Scenario 3 with every zfs(8) call timed: how many calls each
    contender makes per dataset, how long they take, and for zfsync its
    own per-dataset timing against its fixed cost."""
    datasets = results.get("setup", {}).get("datasets") or results["options"]["datasets"] + 1
    probe = results.get("probe", {})
    ms = {k: benchlib.fmt(None if probe.get(k) is None else 1000 * probe[k], 1)
          for k in ("zfs_list_one", "python_start", "zfsync_send_start", "zfsync_import", "tcp_round_trip")}
    lines = ["Fixed costs in the VM (medians): one `zfs list` of one dataset %(zfs_list_one)s ms; `python3 -c pass` "
             "%(python_start)s ms; `zfsync_send --version` %(zfsync_send_start)s ms; importing the engine "
             "%(zfsync_import)s ms; one 512-byte frame and its reply over TCP on 127.0.0.1 %(tcp_round_trip)s ms."
             % ms]
    if probe.get("import_top"):
        lines.append("Slowest imports of zfsync_send (python -X importtime, cumulative): " + ", ".join(
            "%s %.0f ms" % (name, us / 1000.0) for name, us, _depth in probe["import_top"][:6]) + ".")
    lines.append("")
    rows = []
    for contender, prof in results.get("profiles", {}).items():
        if "error" in prof:
            rows.append([contender] + ["-"] * 6 + [benchlib.short_error(prof["error"])])
            continue
        calls = prof.get("calls", {}).get("3", {})
        total = calls.get("total", {"count": 0, "seconds": 0.0})
        wall = prof.get("seconds", {}).get("3")
        cpu = (prof.get("cpu", {}).get("3") or {}).get("total")
        per = [x for x in (prof.get("dataset_seconds", {}).get("3") or []) if x is not None]
        fixed = wall - sum(per) if per and wall is not None and contender == "zfsync-1" else None
        top = sorted(((k, v) for k, v in calls.items() if k != "total"), key=lambda kv: -kv[1]["seconds"])[:6]
        if contender.startswith("zfsync"):  # the contender's own command is zfsync_send
            top = [(k.replace("tool ", "send ", 1), v) for k, v in top]
        rows.append([contender, benchlib.fmt(wall), benchlib.fmt(cpu), "%d" % total["count"],
                     benchlib.fmt(total["count"] / float(datasets), 1),
                     benchlib.fmt(benchlib.median(per)) if per else "-", benchlib.fmt(fixed),
                     "; ".join("%s %d (%.1f s)" % (k, v["count"], v["seconds"]) for k, v in top)])
    if rows:
        lines.append(benchlib.render_table(
            ["contender", "wall s", "CPU s (all)", "zfs(8) calls", "calls/dataset", "s/dataset (zfsync's own)",
             "fixed s", "zfs(8) time by side and subcommand: calls (summed s)"], rows))
        lines.append("")
        lines.append("(Shim on, so a little slower than the table above. `send`/`recv` = zfsync's sender/receiver "
                     "process and their zfs(8) children, `tool` = the other contenders' commands. zfsync's counts "
                     "include its one-off capability probe (one `zfs -?`; three calls before 2026-11-27) on each "
                     "side. Calls of parallel workers and of both ends of a pipe "
                     "overlap, so summed time can exceed the wall time. s/dataset: zfsync_send's own per-dataset "
                     "time (frame sent to 0:OK read), median; fixed s (1 thread): wall minus their sum: start-up, "
                     "listing, the protocol probe, cleanbuffer.)")
    return "\n".join(lines)


def render_report(results: dict) -> str:
    opts = results["options"]
    contenders = opts["contenders"]
    samples = [benchlib.Sample.from_dict(s) for s in results["samples"] if s.get("run", 0) >= 0]
    host, guest, setup = results.get("host", {}), results.get("guest", {}), results.get("setup", {})
    datasets = setup.get("datasets") or opts["datasets"] + 1
    big = setup.get("big_bytes") or opts["big_size"]
    loads = results.get("loads") or []
    out = ["zfsync benchmark, %s (took %.1f min)" % (results["date"], results.get("elapsed", 0) / 60.0), "",
           "Host: %s, %s cores, %s RAM; 1-min load average during the run: min %s, median %s, max %s "
           "(the cores are shared with other VMs: absolute times vary, ratios to the raw pipe of the same "
           "run are the headline)." % (host.get("cpu"), host.get("cores"), host.get("mem"),
                                       benchlib.fmt(min(loads) if loads else None),
                                       benchlib.fmt(benchlib.median(loads)),
                                       benchlib.fmt(max(loads) if loads else None)),
           "Guest: QEMU TCG (no KVM), %s vCPUs, %s, kernel %s, %s, %s; ARC capped at 256 MiB; pool on a "
           "qcow2 disk (cache=unsafe); everything on one VM, zfsync over TCP on 127.0.0.1." % (
               guest.get("cpus"), guest.get("mem"), guest.get("kernel"), guest.get("zfs"), guest.get("python")),
           "Peers: syncoid %s; zfs-autobackup %s; bzfs %s." % (
               guest.get("syncoid"), guest.get("zfs-autobackup"), guest.get("bzfs")),
           "Sizes: a tree of %d datasets (the root, groups of up to 10: %d), %s + 4 KiB of random data "
           "each; scenario 4: %s of incompressible data in one dataset; %d runs per contender planned, the "
           "median of those that completed (ok/runs in the tables; a sample counts only if the target then "
           "holds every snapshot)." % (
               datasets, (datasets - 1 + 9) // 10, benchlib.format_size(opts["small_size"]),
               benchlib.format_size(big), opts["runs"]), ""]
    out.append("Summary: median wall time (ratio to the raw pipe); details per scenario below.")
    out.append("")
    out.append(benchlib.summary_table(samples, contenders, opts["scenarios"], opts.get("big_contenders")))
    out.append("")
    for scenario in opts["scenarios"]:
        chosen = opts.get("big_contenders", contenders) if scenario == 4 else contenders
        rows = benchlib.aggregate(samples, scenario, [c for c in contenders if c in chosen])
        out.append("Scenario %d: %s" % (scenario, benchlib.SCENARIOS[scenario]))
        out.append("")
        out.append(benchlib.scenario_table(rows, scenario, datasets, big))
        out.append("")
    out.append("Targets (issue 6):")
    out.append(benchlib.format_targets(benchlib.check_targets(samples, contenders)))
    out.append("")
    if results.get("profiles"):
        out.append("Scenario 3, where the time goes (one extra run with every zfs(8) call timed by a shim):")
        out.append("")
        out.append(render_profile(results))
        out.append("")
    out.append("What each contender runs:")
    out += ["- %s: %s" % (c, benchlib.DESCRIPTIONS[c]) for c in contenders]
    failures = [s for s in samples if not s.ok and s.error]
    # Our own @s2/@s3, destroyed after every sequence, are not a tool's leftovers
    # (runs before this check was fixed in vmbench.py reported them).
    notes = [n for n in dict.fromkeys(results.get("notes", [])) if not n.endswith(" left @s2, @s3 on the source (removed)")]
    if failures or notes:
        out.append("")
        out.append("Failures and notes:")
        seen = set()
        for s in failures:
            key = (s.contender, benchlib.short_error(s.error, 200))
            if key not in seen:
                seen.add(key)
                out.append("- %s, scenario %d: %s" % (s.contender, s.scenario, key[1]))
        out += ["- " + benchlib.short_error(n, 300) for n in notes]
    return "\n".join(out) + "\n"


def save(opts, results: dict) -> None:
    """The raw results as JSON after every step: an interrupted run keeps
    what it measured, and --render prints its report again."""
    if opts.json_out:
        with open(opts.json_out + ".tmp", "w") as handle:
            json.dump(results, handle, indent=1)
        os.replace(opts.json_out + ".tmp", opts.json_out)


# -- main ----------------------------------------------------------------------

def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per contender and scenario (median; default 3)")
    parser.add_argument("--datasets", type=int, default=200, help="datasets below the tree's root (default 200)")
    parser.add_argument("--small-size", type=benchlib.parse_size, default=64 << 10,
                        help="random data per small dataset (default 64K; 4 KiB more change in scenario 2)")
    parser.add_argument("--big-size", type=benchlib.parse_size, default=2 << 30,
                        help="incompressible data of scenario 4 (default 2G)")
    parser.add_argument("--scenarios", default="all", help="comma list of 1,2,3,4 (default all)")
    parser.add_argument("--contenders", default="all", help="comma list of %s (default all)"
                        % ",".join(benchlib.CONTENDERS))
    parser.add_argument("--big-contenders", default="all",
                        help="contenders of scenario 4 (one dataset: the thread count makes no difference)")
    parser.add_argument("--profile-contenders", default="raw,loop,zfsync-1,zfsync-4,syncoid,zfs-autobackup,bzfs",
                        help="contenders of the scenario-3 profile pass")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the profile pass")
    parser.add_argument("--keep-vm", action="store_true", help="leave the VM running (tear down: "
                        "tests/lab/launch down --state-dir STATE_DIR)")
    parser.add_argument("--state-dir", default="/tmp/zfsync-bench-lab")
    parser.add_argument("--mem", type=int, default=3072, help="VM memory, MiB")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--disk", default="8G", help="VM data disk (the pool)")
    parser.add_argument("--no-install-peers", dest="install_peers", action="store_false",
                        help="do not apt/pip-install peers the image lacks (they then fail as not found)")
    parser.add_argument("--image", help="a lab image dir to boot instead of the current recipe's")
    parser.add_argument("--results-dir", default=os.path.join(HERE, "results"),
                        help="where <date>.txt and <date>.json go")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--render", metavar="JSON", help="print the report of an earlier run; no VM")
    opts = parser.parse_args(argv)
    try:
        opts.scenarios = benchlib.parse_list(opts.scenarios, sorted(benchlib.SCENARIOS), int)
        opts.contenders = benchlib.parse_list(opts.contenders, benchlib.CONTENDERS)
        opts.profile_contenders = benchlib.parse_list(opts.profile_contenders, benchlib.CONTENDERS)
        opts.big_contenders = benchlib.parse_list(opts.big_contenders, benchlib.CONTENDERS)
    except ValueError as error:
        parser.error(str(error))
    if opts.runs < 1 or opts.datasets < 1:
        parser.error("--runs and --datasets must be at least 1")
    for chosen in (opts.contenders, opts.big_contenders):
        if benchlib.BASELINE not in chosen:
            chosen.insert(0, benchlib.BASELINE)  # ratios need it
    return opts


def main(argv: Optional[List[str]] = None) -> int:
    opts = parse_args(argv)
    if opts.render:
        with open(opts.render) as handle:
            sys.stdout.write(render_report(json.load(handle)))
        return 0
    stamp = datetime.datetime.now(datetime.timezone.utc)
    opts.json_out = None
    if not opts.no_save:
        os.makedirs(opts.results_dir, exist_ok=True)
        opts.json_out = os.path.join(opts.results_dir, stamp.strftime("%Y-%m-%d") + ".json")
    results = {"date": stamp.strftime("%Y-%m-%d %H:%M UTC"), "host": host_info(), "samples": [],
               "profiles": {}, "notes": [], "loads": [],
               "options": {k: getattr(opts, k) for k in ("runs", "datasets", "small_size", "big_size", "scenarios",
                                                         "contenders", "big_contenders", "mem", "cpus")}}

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    launch = labkit.load_launch()
    lab = Lab(launch, opts.state_dir)
    started = time.monotonic()
    try:
        if not opts.image:
            say("lab image (build-image builds it or reuses it)")
            opts.image = launch.image_dir(build=True, timeout=3600)
        say("booting the VM (TCG: 1-3 min)")
        launch.up(opts.state_dir, VM, count=1, mem=opts.mem, cpus=opts.cpus, data_disk_size=opts.disk,
                  image=opts.image)
        with tempfile.TemporaryDirectory() as pki:
            make_pki(pki)
            lab.push(bundle(pki))
        run_benchmark(opts, lab, results)
    except KeyboardInterrupt:
        say("interrupted; tearing down")
        return 130
    except (RuntimeError, launch.LabError) as error:
        say("failed: %s" % error)
        results["notes"].append("the run stopped early: %s" % error)
    finally:
        if opts.keep_vm:
            say("VM kept: tests/lab/launch ssh --state-dir %s %s; down with tests/lab/launch down --state-dir %s"
                % (opts.state_dir, VM, opts.state_dir))
        else:
            launch.down(opts.state_dir)
        results["elapsed"] = time.monotonic() - started
        results["loads"] = lab.loads
        save(opts, results)
    report = render_report(results)
    sys.stdout.write(report)
    if opts.json_out:
        text_out = opts.json_out[:-len(".json")] + ".txt"
        with open(text_out, "w") as handle:
            handle.write(report)
        say("saved %s and %s" % (text_out, opts.json_out))
    return 0 if results["samples"] else 1


if __name__ == "__main__":
    sys.exit(main())
