"""The kernel the lab boots a Debian armhf image with under TCG: the LPAE build of the image's own kernel.

Why. Debian's armmp kernel (the one the images ship and a Raspberry Pi boots) fences every access to user memory by
switching ARM memory domains (CONFIG_CPU_SW_DOMAIN_PAN), and QEMU's TCG empties its whole TLB on every write of the
domain register. Emulated, every path lookup crawls: measured in a lab node, `systemctl is-enabled corosync` took
4.3 s and `systemctl list-unit-files` ran past D-Bus's 25 s timeout (so pcsd's host check reported corosync "not
installed" and `pcs cluster setup` failed); with the armmp-lpae build of the same kernel version, 0.13 s and 4.1 s.
The LPAE flavour has no domains (and Linux 6.1 has no PAN for LPAE); it is the same sources and version, so the
userland under test is unchanged. A Pi 2 or 3 would not boot it, so the images keep armmp.

What changes, and where: only the lab's throw-away overlay gets the LPAE kernel's modules; QEMU boots the LPAE kernel
with the image's own initramfs plus the same modules of the LPAE build. The image is never written, and
`pibuild smoke` boots the image's own kernel.

The kernel package comes from the mirror the image's apt sources name, verified by apt against Debian's archive
keyring, and is cached per package version in $XDG_CACHE_HOME/pibuild/emulation-kernel.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
from pathlib import Path

from builder import cache, tools
from builder.errors import PibuildError
from builder.releases import ARCHES

CACHE_KIND = "emulation-kernel"
ARCHIVE_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# initramfs compression, by the first bytes: how to unpack it (initramfs-tools' COMPRESS differs by release);
# None: a plain newc cpio archive.
DECOMPRESS = {
    b"\x28\xb5\x2f\xfd": ["zstd", "-dcq"],
    b"\x1f\x8b": ["gzip", "-dc"],
    b"\xfd7zXZ\x00": ["xz", "-dc"],
    b"070701": None,
}


@dataclasses.dataclass(frozen=True)
class KernelPackage:
    name: str           # linux-image-6.1.0-50-armmp-lpae
    version: str        # 6.1.176-1
    abi: str            # 6.1.0-50-armmp-lpae (uname -r)


def flavour_for(arch: str, kernel: str, accel: str) -> str | None:
    """The flavour to boot instead of the image's kernel `vmlinuz-<abi>`, or None to boot the image's own."""
    wanted = ARCHES[arch].emulation_flavour if arch in ARCHES else None
    if accel != "tcg" or wanted is None:
        return None
    replaced = wanted.split("-")[0]                  # armmp-lpae replaces armmp
    return wanted if kernel.endswith(f"-{replaced}") else None


def installed_version(root: Path, package: str) -> str | None:
    """The version dpkg records for `package` in the root file system."""
    status = (root / "var/lib/dpkg/status").read_text(errors="replace")
    for stanza in status.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.MULTILINE))
        if fields.get("Package") == package and "installed" in fields.get("Status", "").split():
            return fields.get("Version")
    return None


def apt_sources(root: Path) -> list[str]:
    """The image's one-line `deb` sources, their options replaced by Debian's archive keyring on this host."""
    files = [root / "etc/apt/sources.list", *sorted((root / "etc/apt/sources.list.d").glob("*.list"))]
    lines = []
    for f in files:
        if not f.is_file():
            continue
        for line in f.read_text(errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 4 and words[0] == "deb":
                lines.append(f"deb [signed-by={ARCHIVE_KEYRING}] {' '.join(words[1:])}")
    return lines


def package_for(root: Path, kernel: str, flavour: str) -> KernelPackage:
    """The `flavour` build of the image's kernel `vmlinuz-<abi>`, at the version the image has installed."""
    abi = kernel.removeprefix("vmlinuz-")
    version = installed_version(root, f"linux-image-{abi}")
    if version is None:
        raise PibuildError(f"the image boots {kernel} but dpkg does not list linux-image-{abi} as installed")
    lpae_abi = abi.rsplit("-", 1)[0] + f"-{flavour}"
    return KernelPackage(f"linux-image-{lpae_abi}", version, lpae_abi)


def fetch(package: KernelPackage, sources: list[str]) -> Path:
    """The unpacked package (its /boot and /lib/modules, depmod run), from the cache or downloaded with apt."""
    key = cache.digest(package.name, package.version)
    entry = cache.lookup(CACHE_KIND, key)
    if entry is not None:
        return entry
    if not sources:
        raise PibuildError(f"the image names no Debian mirror in /etc/apt/sources.list, so {package.name} "
                           "cannot be fetched for the lab")
    tools.require("apt-get", "dpkg-deb", "depmod")
    if not ARCHIVE_KEYRING.is_file():
        raise PibuildError(f"{ARCHIVE_KEYRING} is missing: install debian-archive-keyring")
    with cache.locked(CACHE_KIND, key):
        entry = cache.lookup(CACHE_KIND, key)
        if entry is not None:
            return entry
        with cache.new_entry(CACHE_KIND, key, {"package": package.name, "version": package.version}) as tmp:
            deb = _download(package, sources, tmp)
            tools.run(["dpkg-deb", "-x", str(deb), str(tmp / "root")])
            deb.unlink()
            tools.run(["depmod", "-b", str(tmp / "root"), package.abi])
        return cache.lookup(CACHE_KIND, key)


def _download(package: KernelPackage, sources: list[str], dest: Path) -> Path:
    """apt-get with a private state directory: the host's own apt configuration and lists are left alone."""
    with tempfile.TemporaryDirectory(prefix="pibuild-apt-") as tmp:
        state = Path(tmp)
        (state / "sources.list").write_text("\n".join(sources) + "\n")
        (state / "status").touch()
        for d in ("lists/partial", "archives/partial", "parts"):
            (state / d).mkdir(parents=True)
        options = ["-o", "APT::Architecture=armhf", "-o", "APT::Architectures::=armhf",
                   "-o", f"Dir::Etc::SourceList={state / 'sources.list'}",
                   "-o", f"Dir::Etc::SourceParts={state / 'parts'}",
                   "-o", f"Dir::State::Lists={state / 'lists'}", "-o", f"Dir::State::status={state / 'status'}",
                   "-o", f"Dir::Cache={state}", "-o", f"Dir::Cache::Archives={state / 'archives'}",
                   "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root", "-q"]
        tools.run(["apt-get", *options, "update"], capture=True)
        tools.run(["apt-get", *options, "download", f"{package.name}={package.version}"], capture=True, cwd=dest)
    debs = list(dest.glob(f"{package.name}_*.deb"))
    if len(debs) != 1:
        raise PibuildError(f"apt-get download {package.name}={package.version} left {len(debs)} packages")
    return debs[0]


def initramfs_cpio(initrd: Path) -> bytes:
    """An initramfs file as its uncompressed newc cpio archive."""
    data = initrd.read_bytes()
    magic = next((m for m in DECOMPRESS if data.startswith(m)), None)
    if magic is None:
        raise PibuildError(f"{initrd}: unknown initramfs compression (starts with {data[:6].hex()})")
    if DECOMPRESS[magic]:
        data = tools.run(DECOMPRESS[magic], input=data, capture=True).stdout
    return data


def initramfs(image_initrd: Path, kernel_tree: Path, abi: str, dest: Path) -> Path:
    """The image's initramfs, plus the kernel_tree build of every module it carries (and what they depend on).

    Written uncompressed: the emulated kernel would spend seconds unpacking it.
    """
    tools.require("cpio", "depmod")
    data = initramfs_cpio(image_initrd)
    modules_dir = kernel_tree / "lib/modules" / abi
    with tempfile.TemporaryDirectory(prefix="pibuild-initrd-", dir=dest.parent) as tmp:
        tree = Path(tmp)
        tools.run(["cpio", "-id", "--quiet", "--no-absolute-filenames"], input=data, cwd=tree)
        # Merged /usr from bookworm on; bullseye's initramfs has a real /lib.
        image_modules = next(p for p in (tree / "usr/lib/modules", tree / "lib/modules") if p.is_dir())
        carried = {p.relative_to(d).as_posix() for d in image_modules.iterdir() for p in d.rglob("*.ko*")}
        wanted = _with_dependencies({m for m in carried if (modules_dir / m).is_file()}, modules_dir)
        target = image_modules / abi
        for rel in sorted(wanted):
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(modules_dir / rel, target / rel)
        for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
            if (modules_dir / name).is_file():
                shutil.copy2(modules_dir / name, target / name)
        tools.run(["depmod", "-b", str(image_modules.parent.parent), abi])
        names = tools.run(["find", "."], capture=True, cwd=tree).stdout
        dest.write_bytes(tools.run(["cpio", "-o", "-H", "newc", "--quiet"], input=names, capture=True, cwd=tree).stdout)
    return dest


def _with_dependencies(modules: set[str], modules_dir: Path) -> set[str]:
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        name, _, needs = line.partition(":")
        deps[name] = needs.split()
    wanted, todo = set(modules), list(modules)
    while todo:
        for dep in deps.get(todo.pop(), []):
            if dep not in wanted:
                wanted.add(dep)
                todo.append(dep)
    return wanted


def install_modules(kernel_tree: Path, abi: str, modules_root: Path) -> None:
    """The whole module tree into the guest's /lib/modules (of the overlay), for what udev loads after the boot."""
    tools.run(["cp", "-a", str(kernel_tree / "lib/modules" / abi), str(modules_root)])
