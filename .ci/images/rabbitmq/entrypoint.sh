#!/bin/sh
set -eu
home=/var/lib/rabbitmq
chown rabbitmq:rabbitmq "$home"
if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
  printf '%s' "$RABBITMQ_ERLANG_COOKIE" >"$home/.erlang.cookie"
  chown rabbitmq:rabbitmq "$home/.erlang.cookie"
  chmod 0400 "$home/.erlang.cookie"
fi
# The default user is made when the node first initialises its database, as in the real image.
if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
  printf 'default_user = %s\ndefault_pass = %s\n' "$RABBITMQ_DEFAULT_USER" \
    "${RABBITMQ_DEFAULT_PASS:-}" >/etc/rabbitmq/conf.d/05-default-user.conf
fi
if [ "$1" = rabbitmq-server ]; then
  shift
  cd "$home"
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups -- \
    env HOME="$home" /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
exec "$@"
