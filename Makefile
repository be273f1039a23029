# zfsync: `make help` lists every entry point.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
# The oldest managed-host Python we support runs the engine's tests as well.
OLD_PYTHONS ?= 3.9

.PHONY: help deps venv demo demo-clean test test-unit test-integration test-old-python sanity lint test-molecule test-freebsd lab-image test-lab test-lab-engine test-lab-privilege test-lab-resume test-lab-resume-big clean

help: ## list the entry points
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

deps: ## system packages and a running ZFS (zfs-fuse unless the kernel has ZFS)
	tools/deps.sh

venv: ## the controller venv (.venv, CPython 3.13, ansible-core and test tools)
	tools/venv.sh

demo: deps venv ## local sandbox through Ansible: file-backed pools, a receiver on 127.0.0.1, snapshots, syncs, both trees side by side
	python3 tools/demo.py up

demo-clean: ## stop the sandbox receiver and destroy the sandbox pools
	python3 tools/demo.py clean

test: deps venv ## the whole suite: unit, real-ZFS integration, old Pythons, ansible-test, lint, Molecule on lab VMs
	$(MAKE) test-unit test-integration test-old-python sanity lint test-molecule

test-unit: venv ## pure tests (no ZFS): engine, lab launcher and pcap reader, benchmark arithmetic
	$(PYTEST) -q tests/unit/engine tests/unit/lab tests/unit/bench

test-integration: deps venv ## engine and modules against real zfs-fuse/OpenZFS pools on 127.0.0.1
	$(PYTEST) -q tests/integration

test-old-python: deps ## engine unit + integration tests on the oldest supported managed-host Python
	tools/pyvenvs.sh $(OLD_PYTHONS)
	for v in $(OLD_PYTHONS); do .venv-py$$v/bin/pytest -q -p no:cacheprovider tests/unit/engine tests/integration/test_engine_sync.py || exit 1; done

sanity: venv ## ansible-test sanity and units against the built, installed collection
	tools/ansible-test.sh

lint: venv ## ansible-lint, production profile
	tools/lint.sh

lab-image: deps ## build (or reuse) the lab VM image: Debian 12 + OpenZFS, cached in /var/cache/zfsync-lab
	tests/lab/build-image

test-lab: lab-image venv ## golden replay: the original sender's captured bytes against our receiver on OpenZFS in a lab VM (about 18 min under TCG)
	$(PYTEST) -q tests/lab/test_golden_replay.py

test-lab-engine: lab-image venv ## the engine's integration tests (test_engine_*) inside a lab VM on OpenZFS 2.1 (slow; not part of make test)
	$(PY) tests/lab/engine-suite

# 10-13 min under TCG here (boot 2 min, eight syncs), so not part of make test.
test-lab-privilege: lab-image venv ## the receiver as an unprivileged user with zfs allow delegation, on OpenZFS 2.1 in a lab VM (docs/security.md)
	$(PYTEST) -q tests/lab/test_least_privilege.py

test-lab-resume: lab-image venv ## resumable receive on OpenZFS 2.1 in a lab VM: streams cut mid-way resume (test_engine_resume.py)
	$(PY) tests/lab/engine-suite --state-dir /tmp/zfsync-resume-lab tests/integration/test_engine_resume.py -rP

test-lab-resume-big: lab-image venv ## the same with a 1 GiB stream cut and resumed (tests marked slow; not part of make test)
	$(PY) tests/lab/engine-suite --state-dir /tmp/zfsync-resume-lab tests/integration/test_engine_resume.py -m slow -rP

test-molecule: deps venv ## Molecule scenario default: site.yml, idempotence, sync.yml, testinfra on two OpenZFS VMs
	tools/molecule.sh test -s default

test-freebsd: deps venv ## Molecule scenario freebsd (needs ZFSYNC_LAB_FREEBSD_IMAGE=FreeBSD BASIC-CLOUDINIT zfs qcow2)
	tools/molecule.sh test -s freebsd

# What `make bench` runs: under TCG on this shared 2-core host the issue's
# sizes (200 datasets, 2 GiB) take many hours; a tree of 10 datasets and
# 32 MiB with every contender, 3 runs, took 105 min here at a host load of
# 2-7 (benchmarks/README.md, "Sizes under TCG"). The issue's run:
# make bench BENCH_ARGS="--datasets 200 --big-size 2G"
BENCH_ARGS ?= --runs 3 --datasets 9 --big-size 32M --contenders all \
	--big-contenders raw,zfsync-4,zfsync-4-tls,syncoid,zfs-autobackup,bzfs \
	--profile-contenders raw,zfsync-1,zfsync-4

bench: ## benchmark in a lab VM on OpenZFS: zfsync vs the raw pipe, a shell loop, syncoid, zfs-autobackup, bzfs (builds or reuses the image)
	python3 benchmarks/bench.py $(BENCH_ARGS)

clean: ## remove build and test leftovers (keeps the venvs)
	rm -rf build tests/output .pytest_cache
