# A Docker engine for CI's compose steps, and the machine put back afterwards. Sourced by
# .ci/compose-images and .ci/compose-up.
#
# This machine kind has the docker CLI but no engine and no systemd, and reaches no image
# registry: `engine_up` installs Debian's docker.io, starts dockerd in the background and gives
# the CLI Compose v2 (packaged only in Debian's next release: unpacked into the CLI's plugin
# folder, the system's apt sources untouched). dockerd rewrites iptables (FORWARD policy DROP,
# its chains, NAT) and turns on IP forwarding, and leaves all of it behind when it stops:
# `engine_up` saves the tables first and `engine_down` stops the engine and puts them back.

ENGINE_STATE="${SHOP_ENGINE_STATE:-/tmp/shop-ci-docker-engine}"
COMPOSE_PLUGIN_DIR="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"

engine_running() { [[ -f "$ENGINE_STATE/dockerd.pid" ]] && kill -0 "$(cat "$ENGINE_STATE/dockerd.pid")" 2>/dev/null; }

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}

install_compose_v2() {
  docker compose version >/dev/null 2>&1 && return 0
  local work
  work="$(mktemp -d)"
  mkdir -p "$work/lists/partial" "$work/archives"
  echo "deb http://deb.debian.org/debian trixie main" >"$work/sources.list"
  local apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::archives=$work/archives"
    -o APT::Sandbox::User=root -qq)
  apt-get "${apt_opts[@]}" update
  (cd "$work" && apt-get "${apt_opts[@]}" download docker-compose)
  dpkg-deb -x "$work"/docker-compose_*.deb "$work/root"
  mkdir -p "$COMPOSE_PLUGIN_DIR"
  install -m 0755 "$work/root/usr/libexec/docker/cli-plugins/docker-compose" "$COMPOSE_PLUGIN_DIR/docker-compose"
  rm -rf "$work"
  docker compose version
}

engine_up() {
  if engine_running; then
    return 0
  fi
  command -v dockerd >/dev/null || apt_install docker.io
  command -v iptables-save >/dev/null || apt_install iptables
  mkdir -p "$ENGINE_STATE"
  # What dockerd will change, saved once: a second engine_up after a crash must not save
  # dockerd's own rules as "the machine's".
  if [[ ! -f "$ENGINE_STATE/iptables.v4" ]]; then
    iptables-save >"$ENGINE_STATE/iptables.v4"
    ip6tables-save >"$ENGINE_STATE/iptables.v6"
    cat /proc/sys/net/ipv4/ip_forward >"$ENGINE_STATE/ip_forward"
  fi
  dockerd --pidfile "$ENGINE_STATE/dockerd.pid" >"$ENGINE_STATE/dockerd.log" 2>&1 &
  local deadline=$((SECONDS + 60))
  until docker info >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "dockerd did not answer within 60 s; its log:" >&2
      tail -n 40 "$ENGINE_STATE/dockerd.log" >&2
      return 1
    fi
    sleep 1
  done
  install_compose_v2
}

restore_tables() { # iptables|ip6tables saved-file
  local table
  # A table dockerd created (nat, say) is not in a save made before it: empty every table
  # first, so that the restore leaves exactly what was there.
  for table in filter nat mangle raw; do
    "$1" -t "$table" -F 2>/dev/null || true
    "$1" -t "$table" -X 2>/dev/null || true
  done
  for chain in INPUT FORWARD OUTPUT; do "$1" -P "$chain" ACCEPT 2>/dev/null || true; done
  "$1-restore" <"$2"
  # A table that was not there before goes again (nf_tables: `ip` or `ip6` family).
  local family=ip
  [[ "$1" == ip6tables ]] && family=ip6
  if command -v nft >/dev/null; then
    for table in filter nat mangle raw; do
      grep -q "^\*$table\$" "$2" || nft delete table "$family" "$table" 2>/dev/null || true
    done
  fi
}

engine_down() {
  [[ -d "$ENGINE_STATE" ]] || return 0
  if engine_running; then
    local pid
    pid="$(cat "$ENGINE_STATE/dockerd.pid")"
    kill "$pid"
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null; do
      if ((SECONDS >= deadline)); then kill -9 "$pid" 2>/dev/null || true; fi
      sleep 1
    done
  fi
  if [[ -f "$ENGINE_STATE/iptables.v4" ]]; then
    restore_tables iptables "$ENGINE_STATE/iptables.v4"
    restore_tables ip6tables "$ENGINE_STATE/iptables.v6"
    cat "$ENGINE_STATE/ip_forward" >/proc/sys/net/ipv4/ip_forward
  fi
  ip link delete docker0 2>/dev/null || true
  rm -rf "$ENGINE_STATE"
}

# Prints "<label>: N s" after a step: every compose step says what it cost.
timed() { # label command...
  local label="$1" start=$SECONDS
  shift
  printf '\n== %s\n' "$label"
  "$@"
  printf -- '-- %s: %d s\n' "$label" "$((SECONDS - start))"
}
