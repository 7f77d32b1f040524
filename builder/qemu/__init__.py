"""The VM layer: boot a pibuild image in qemu-system without changing it, and drive its serial console.

By concern: inspection (what the image holds: boot files, node), overlay (the qcow2 overlay and its root file
system over FUSE), console (pexpect), vm (the QEMU command line and process). The names below are its face.

Used by `pibuild smoke` (one node, an isolated user-mode network) and the lab (several nodes on tap devices).

- The image is never written. QEMU boots a qcow2 overlay backed by it (a backing file is only ever opened
  read-only) and every write of the guest lands in the overlay, which is deleted afterwards.
- Two boot modes, chosen from the files in the image's FAT boot partition:
    virt   Debian's kernel and initrd (`vmlinuz-<ver>`, `initrd.img-<ver>`, as config.txt names them) on `-M virt`:
           the debian base. armhf only sees virtio-mmio devices (its non-LPAE kernel has no PCI), so both arches
           use `virtio-blk-device` / `virtio-net-device` (releases.ARCHES).
    raspi  Raspberry Pi OS's kernel7.img/kernel8.img and its bcm27xx device tree on `-M raspi2b` (armhf) or
           `-M raspi3b` (arm64), the disk as the SD card, a `usb-net` NIC. `Vm(board=True)` (`smoke --board`)
           boots a Debian image this way too: its own vmlinuz and initrd, the upstream device tree of its node's
           model, QEMU's board for that model (releases.MODELS, QEMU_BOARDS), the console on the UART the model's
           header has; the SD card is the next power of two above the image's size, so the first boot grows the
           root partition, and a .link file in the overlay gives the USB NIC the node's interface name.
  The kernel, initrd and device tree are copied out of the FAT with mtools (these machines have no vfat module).
- The console login. The images have no password anyone knows (the login user may have none at all), so before the
  boot a systemd drop-in that makes the serial getty log root in automatically is written into the OVERLAY's root
  file system: qemu-storage-daemon exports the qcow2 overlay as a raw file over FUSE, an offset loop device
  mounts its ext4, and the writes go to the overlay only. Why this way:
    - qemu-nbd needs the nbd kernel module, which these machines do not have;
    - the kernel command line has nothing that fits: `systemd.run=` boots INTO its command instead of
      multi-user.target (and powers off afterwards), `systemd.debug_shell` opens tty9 only before systemd 254,
      credentials for getty autologin arrived only in systemd 256 (bookworm has 252, bullseye 247);
    - an extra initramfs archive would depend on the initramfs generator's script ORDER files.
  The drop-in path works for every release and both boot modes, and the guest still runs its real serial getty,
  so "the login prompt appears" is tested as a person at the console would see it.
"""

from builder.qemu.console import Console, ConsoleError, ConsoleTimeout
from builder.qemu.inspection import Boot, Node
from builder.qemu.vm import MACHINES, Detached, Vm, accel_for, guest_cmdline, mac_for
from builder.releases import ARCHES

__all__ = ["ARCHES", "MACHINES", "Boot", "Console", "ConsoleError", "ConsoleTimeout", "Detached", "Node", "Vm",
           "accel_for", "guest_cmdline", "mac_for"]
