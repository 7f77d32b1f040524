#!/bin/bash -e
# The account people log in with (login.user): sudo, ssh keys, optional password hash.
user="${FIRST_USER_NAME:?FIRST_USER_NAME is not set}"
if ! id "$user" >/dev/null 2>&1; then
	useradd --create-home --shell /bin/bash --groups sudo,adm,systemd-journal "$user"
fi
if [ -n "${FIRST_USER_PASS_HASH:-}" ]; then
	usermod --password "$FIRST_USER_PASS_HASH" "$user"
else
	# No password to type: sudo without one, as Raspberry Pi OS does for its first user.
	passwd --lock "$user" >/dev/null
	echo "$user ALL=(ALL) NOPASSWD: ALL" > /etc/sudoers.d/010_pibuild-nopasswd
	chmod 0440 /etc/sudoers.d/010_pibuild-nopasswd
fi
home=$(getent passwd "$user" | cut -d: -f6)
install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
printf '%s\n' "${PUBKEY_SSH_FIRST_USER:-}" | sed '/^$/d' > "$home/.ssh/authorized_keys"
chown "$user:$user" "$home/.ssh/authorized_keys"
chmod 0600 "$home/.ssh/authorized_keys"
