#!/bin/sh
# djship: what an init system would run at boot to start the supervisor of /srv/example/board/.djship (and with it
# PostgreSQL, the app servers and the load balancer, in that order). This host has no init system djship can
# register with (systemd is not the init system): run this from your own boot mechanism, e.g. a `@reboot` line in root's crontab.
# Rendered by djship from djship.toml; edits are overwritten by the next `djship up`.
# The umask of the log files the supervisor creates in the foreground (0640); its programs set their own.
umask 027
exec /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 /usr/bin/python3 -m supervisor.supervisord -n -c /srv/example/board/.djship/supervisor/boot.conf
