"""Run a playbook against localhost with .venv's ansible-playbook and read
each task's result, as a user's play sees the modules.

The collection resolves in-tree (``collections/ansible_collections/zfsync/
zfsync`` links to the checkout); ``ansible.posix`` (its json callback) and
``community.general`` (``json_query``) come with the venv's ``ansible``
package."""
from __future__ import annotations

import json
import os
import subprocess
from typing import Dict, List, Optional

import zfstest

VENV_BIN = os.path.join(os.environ.get("ZFSYNC_VENV", os.path.join(zfstest.REPO, ".venv")), "bin")
ANSIBLE_PLAYBOOK = os.path.join(VENV_BIN, "ansible-playbook")
COLLECTIONS = os.path.join(zfstest.REPO, "collections")

# Interpreter discovery on these machines picks a broken pyenv shim: name it.
INVENTORY = ("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
             "      ansible_python_interpreter: /usr/bin/python3\n")


class PlayRun:
    """One ansible-playbook run: exit status and the per-task results."""

    def __init__(self, proc: subprocess.CompletedProcess):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        try:
            self.output = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError("ansible-playbook printed no JSON (exit %d):\n%s\n%s"
                                 % (proc.returncode, proc.stdout, proc.stderr))

    def task(self, name: str) -> Optional[dict]:
        """localhost's result of the task called ``name``; None if it did not run."""
        for play in self.output["plays"]:
            for task in play["tasks"]:
                if task["task"]["name"] == name:
                    return task["hosts"].get("localhost")
        return None

    def ok(self, name: str) -> dict:
        """The result of a task that must have succeeded, like every task of the play."""
        result = self.task(name)
        assert result is not None, "task %r did not run:\n%s" % (name, self.describe())
        assert self.returncode == 0 and not result.get("failed"), self.describe()
        return result

    def describe(self) -> str:
        """The failures first (the whole output is long), then the output."""
        failures = ["%s: %s" % (task["task"]["name"], result.get("msg"))
                    for play in self.output.get("plays", []) for task in play["tasks"]
                    for result in task["hosts"].values() if result.get("failed")]
        return "exit %d\nfailed: %s\n%s\n%s" % (self.returncode, "\n".join(failures) or "-",
                                                json.dumps(self.output.get("plays"), indent=1)[-6000:],
                                                self.stderr[-3000:])


class Playbook:
    """A playbook text in a work directory, with its inventory and config."""

    def __init__(self, workdir: str, text: str, name: str = "play.yml"):
        if not os.path.exists(ANSIBLE_PLAYBOOK):
            raise AssertionError("no controller venv at %s: run tools/venv.sh" % VENV_BIN)
        self.workdir = workdir
        self.path = os.path.join(workdir, name)
        self.inventory = os.path.join(workdir, "inventory.yml")
        self.config = os.path.join(workdir, "ansible.cfg")
        with open(self.path, "w") as handle:
            handle.write(text)
        with open(self.inventory, "w") as handle:
            handle.write(INVENTORY)
        with open(self.config, "w") as handle:
            handle.write("[defaults]\nretry_files_enabled = false\n")

    def run(self, *options: str, extra_vars: Optional[Dict] = None, timeout: float = 600) -> PlayRun:
        argv: List[str] = [ANSIBLE_PLAYBOOK, "-i", self.inventory, self.path]
        if extra_vars:
            argv += ["-e", json.dumps(extra_vars)]
        env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8", ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
                   ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_CONFIG=self.config, ANSIBLE_NOCOLOR="1",
                   ANSIBLE_LOCAL_TEMP=os.path.join(self.workdir, "tmp"))
        proc = subprocess.run(argv + list(options), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, env=env, timeout=timeout, check=False)
        return PlayRun(proc)
