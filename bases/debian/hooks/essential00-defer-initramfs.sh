#!/bin/sh
# Every kernel and firmware package regenerates the initramfs under qemu-user (minutes each time).
# Divert update-initramfs for the install; customize99 puts it back and runs it once.
set -e
chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs
printf '#!/bin/sh\nexit 0\n' > "$1/usr/sbin/update-initramfs"
chmod 0755 "$1/usr/sbin/update-initramfs"
# No service may start inside the build chroot.
printf '#!/bin/sh\nexit 101\n' > "$1/usr/sbin/policy-rc.d"
chmod 0755 "$1/usr/sbin/policy-rc.d"
