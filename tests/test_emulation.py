"""The lab's emulation kernel for armhf: which kernel replaces the image's, and from where (unit).

The whole path (apt download, initramfs, modules in the overlay, the boot) runs in the lab tier.
"""

from __future__ import annotations

import pytest

from builder import emulation

STATUS = """Package: linux-image-6.1.0-50-armmp
Status: install ok installed
Source: linux
Version: 6.1.176-1

Package: linux-image-6.1.0-47-armmp
Status: deinstall ok config-files
Version: 6.1.170-3

Package: bind9
Status: install ok installed
Version: 1:9.18.41-1~deb12u1
"""


@pytest.fixture
def root(tmp_path):
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(STATUS)
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list").write_text(
        "# a comment\ndeb http://deb.debian.org/debian bookworm main non-free-firmware\n"
        "deb-src http://deb.debian.org/debian bookworm main\n")
    (tmp_path / "etc/apt/sources.list.d/security.list").write_text(
        "deb [signed-by=/usr/share/keyrings/inside.gpg arch=armhf] http://security.debian.org/debian-security "
        "bookworm-security main\n")
    return tmp_path


@pytest.mark.parametrize("arch, kernel, accel, expected", [
    ("armhf", "vmlinuz-6.1.0-50-armmp", "tcg", "armmp-lpae"),
    ("armhf", "vmlinuz-6.1.0-50-armmp", "kvm", None),           # no TLB flush storm without TCG
    ("armhf", "vmlinuz-6.1.0-50-armmp-lpae", "tcg", None),      # already LPAE
    ("arm64", "vmlinuz-6.1.0-50-arm64", "tcg", None),           # arm64 has no domains
])
def test_only_armmp_under_tcg_is_replaced(arch, kernel, accel, expected):
    assert emulation.flavour_for(arch, kernel, accel) == expected


def test_the_lpae_build_of_the_installed_kernel_version(root):
    package = emulation.package_for(root, "vmlinuz-6.1.0-50-armmp", "armmp-lpae")
    assert package == emulation.KernelPackage("linux-image-6.1.0-50-armmp-lpae", "6.1.176-1", "6.1.0-50-armmp-lpae")


def test_a_kernel_dpkg_does_not_list_as_installed_is_an_error(root):
    with pytest.raises(emulation.PibuildError, match="linux-image-6.1.0-47-armmp"):
        emulation.package_for(root, "vmlinuz-6.1.0-47-armmp", "armmp-lpae")


def test_sources_come_from_the_image_verified_by_the_host_keyring(root):
    assert emulation.apt_sources(root) == [
        f"deb [signed-by={emulation.ARCHIVE_KEYRING}] http://deb.debian.org/debian bookworm main non-free-firmware",
        f"deb [signed-by={emulation.ARCHIVE_KEYRING}] http://security.debian.org/debian-security bookworm-security "
        "main",
    ]


def test_module_dependencies_are_followed(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko\n"
        "kernel/fs/jbd2/jbd2.ko:\nkernel/fs/mbcache.ko:\nkernel/lib/crc16.ko:\nkernel/drivers/net/dummy.ko:\n")
    assert emulation._with_dependencies({"kernel/fs/ext4/ext4.ko"}, tmp_path) == {
        "kernel/fs/ext4/ext4.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko", "kernel/lib/crc16.ko"}
