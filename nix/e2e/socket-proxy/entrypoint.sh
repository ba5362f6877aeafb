#!/bin/sh
# Entrypoint of the e2e stand-in for tecnativa/docker-socket-proxy v0.4.1: the same steps as its
# docker-entrypoint.sh (bind address from DISABLE_IPV6, config rendered to /tmp, haproxy in master-worker
# mode in the foreground), run by busybox instead of Alpine's shell.
set -e
# shellcheck disable=SC3045 # busybox sh has ulimit -n
ulimit -n 10000 2>/dev/null || true
case "$(echo "$DISABLE_IPV6" | tr '[:upper:]' '[:lower:]')" in
  1|true|yes) BIND_CONFIG=":2375" ;;
  *) BIND_CONFIG="[::]:2375 v4v6" ;;
esac
sed "s/\${BIND_CONFIG}/$BIND_CONFIG/g" /usr/local/etc/haproxy/haproxy.cfg.template > /tmp/haproxy.cfg
if [ "${1#-}" != "$1" ]; then set -- haproxy "$@"; fi
if [ "$1" = haproxy ]; then shift; set -- haproxy -W -db "$@"; fi
exec "$@"
