"""The lab launcher's parts that need no VM: names, the FreeBSD guest's
image wrapping and its cloud-init seed, the QEMU boot arguments of each
guest kind, the inventory. Real qemu-img and genisoimage, no ZFS."""

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lab"))
import labkit  # noqa: E402

launch = labkit.load_launch()


def test_vm_names():
    assert launch._vm_names("node", 1) == ["node"]
    assert launch._vm_names("node", 3) == ["node-1", "node-2", "node-3"]
    assert launch._vm_names(["receiver", "sender"], 1) == ["receiver", "sender"]
    with pytest.raises(launch.LabError, match="twice"):
        launch._vm_names(["a", "a"], 1)
    with pytest.raises(launch.LabError, match="count"):
        launch._vm_names(["a", "b"], 2)


def test_up_refuses_bad_names_before_booting(tmp_path):
    with pytest.raises(launch.LabError, match="bad VM name"):
        launch.up(str(tmp_path), ["receiver", "../x"], image=str(tmp_path))
    assert not (tmp_path / "receiver").exists()


@pytest.fixture
def freebsd_disk(tmp_path):
    disk = tmp_path / "FreeBSD-14.3-RELEASE-amd64-BASIC-CLOUDINIT-zfs.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True, timeout=60)
    return disk


def test_freebsd_image_wraps_the_disk(tmp_path, freebsd_disk):
    image = launch.freebsd_image(str(tmp_path / "state"), str(freebsd_disk))
    assert launch.guest_kind(image) == "freebsd"
    assert os.readlink(os.path.join(image, "disk.img")) == str(freebsd_disk)
    assert open(os.path.join(image, "disk.format")).read().strip() == "qcow2"
    assert open(os.path.join(image, "id_ed25519.pub")).read().startswith("ssh-ed25519 ")
    assert launch._check_image(image) == image
    # The key is the lab's own and stays across calls (VMs of a state dir share it).
    key = open(os.path.join(image, "id_ed25519.pub")).read()
    launch.freebsd_image(str(tmp_path / "state"), str(freebsd_disk))
    assert open(os.path.join(image, "id_ed25519.pub")).read() == key


def test_freebsd_image_refuses_what_is_not_a_disk(tmp_path):
    with pytest.raises(launch.LabError, match="no such file"):
        launch.freebsd_image(str(tmp_path), str(tmp_path / "missing.qcow2"))
    text = tmp_path / "notes.qcow2"
    text.write_text("not an image")
    # qemu-img reads any file as raw: a raw "disk" is accepted, by format.
    assert launch.guest_kind(launch.freebsd_image(str(tmp_path / "s"), str(text))) == "freebsd"


def test_freebsd_boot_args_use_firmware_and_a_cidata_seed(tmp_path, freebsd_disk):
    image = launch.freebsd_image(str(tmp_path / "state"), str(freebsd_disk))
    vm_dir = tmp_path / "state" / "receiver"
    vm_dir.mkdir()
    args = launch.boot_args(image, "receiver", str(vm_dir), str(vm_dir / "root.qcow2"))
    assert "-kernel" not in args and "-append" not in args
    assert args == ["-drive", "file=%s,media=cdrom,readonly=on" % (vm_dir / "seed.iso")]
    listing = subprocess.run(["isoinfo", "-i", str(vm_dir / "seed.iso"), "-d"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    assert "Volume id: cidata" in listing
    user_data = subprocess.run(["isoinfo", "-i", str(vm_dir / "seed.iso"), "-R", "-x", "/user-data"],
                               capture_output=True, text=True, timeout=60, check=True).stdout
    pubkey = open(os.path.join(image, "id_ed25519.pub")).read().strip()
    assert user_data.startswith("#!/bin/sh\n")
    assert "'%s'" % pubkey in user_data
    assert "sysrc hostname=receiver sshd_enable=YES" in user_data
    assert "PermitRootLogin prohibit-password" in user_data
    # The script must be valid sh (it runs once, at first boot, unattended).
    subprocess.run(["sh", "-n"], input=user_data, text=True, check=True, timeout=10)


def test_debian_boot_args_use_the_image_kernel(tmp_path):
    image = tmp_path / "img"
    image.mkdir()
    (image / "cmdline").write_text("root=/dev/vda rw console=ttyS0\n")
    args = launch.boot_args(str(image), "sender", str(tmp_path), str(tmp_path / "root.qcow2"))
    assert args[args.index("-append") + 1] == "root=/dev/vda rw console=ttyS0 systemd.hostname=sender"
    assert args[args.index("-kernel") + 1] == str(image / "vmlinuz")


def test_inventory_names_each_guests_python_and_disk(tmp_path):
    state = {"vms": {
        "receiver": {"status": "up", "ssh_port": 2201, "key": "/k", "forwards": {"3030": 40001},
                     "guest": "freebsd", "data_disk": "/dev/vtbd1"},
        "sender": {"status": "up", "ssh_port": 2202, "key": "/k", "forwards": {}},
        "dead": {"status": "booting", "ssh_port": 2203, "key": "/k", "forwards": {}}}}
    launch.write_inventory(str(tmp_path), state)
    text = (tmp_path / "inventory.yml").read_text()
    receiver, sender = text.split("        sender:")
    assert "ansible_python_interpreter: /usr/local/bin/python3" in receiver
    assert "lab_data_disk: /dev/vtbd1" in receiver
    assert "lab_forwards: {3030: 40001}" in receiver
    assert "ansible_python_interpreter: /usr/bin/python3" in sender
    assert "lab_data_disk: /dev/vdb" in sender
    assert "dead" not in text


def test_a_guest_that_never_answers_is_torn_down(tmp_path, freebsd_disk):
    """An unbootable FreeBSD disk (an empty qcow2): `up` gives up after the
    boot timeout, kills its qemu and removes the VM's files."""
    state = tmp_path / "state"
    with pytest.raises(launch.LabError, match="ssh not ready within 8 s"):
        launch.up(str(state), "receiver", boot_timeout=8, freebsd_disk=str(freebsd_disk), mem=256, cpus=1)
    assert not (state / "receiver").exists()
    assert not (state / "state.json").exists()      # no VM left: no state
    assert (state / "receiver.console.log").exists()
    leftovers = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True, timeout=10, check=False)
    assert leftovers.stdout.strip() == ""
