#!/usr/bin/env bash
# Containers for the tests and the compose stack on a machine without Docker: podman serving the
# Docker API, and images built here from Debian's packages and the pinned Kafka jars.
#
#   scripts/containers.sh up       install and configure podman, build the images, start the
#                                  Docker-API socket; prints the environment the tests read
#   scripts/containers.sh images   install and configure podman, build the images (no socket)
#   scripts/containers.sh env      the environment the tests read, as shell exports
#   scripts/containers.sh down     stop the socket `up` started (after a sweep)
#   scripts/containers.sh sweep    remove every container testcontainers labelled
#   scripts/containers.sh compose-up     compose.yaml on podman-compose: the local images, the File
#                                        Service image from a binary built here (`cargo build`);
#                                        returns once the service answers on 127.0.0.1:7001
#   scripts/containers.sh compose-down   stop and remove the compose stack and its volumes
#
# Running any of them twice is harmless; a second `up` takes seconds (the base image's root file
# system and the Kafka jars are cached under the git-ignored .services/ folder, and images are only
# rebuilt when their inputs in scripts/containers/ change).
#
# The images (names: OUTBOX_BASE_IMAGE, OUTBOX_POSTGRES_IMAGE, OUTBOX_KAFKA_IMAGE):
#   localhost/outbox-base:bookworm  Debian 12 minbase from debootstrap, imported
#   localhost/outbox-postgres:15    Debian's PostgreSQL 15; POSTGRES_USER/PASSWORD/DB like the
#                                   official postgres image
#   localhost/outbox-kafka:4.1.1    the jars of scripts/kafka/pom.xml on Debian's Java 17, one KRaft
#                                   node configured through KAFKA_* variables like apache/kafka
#
# Facts of this kind of machine it handles: no CAP_SYS_RESOURCE (podman's default ulimits fail, so
# containers.conf sets nofile to the hard limit and nproc to 32768), hybrid cgroups v1/v2 (crun
# refuses them: runc is the runtime), Debian's CNI configuration without the CNI plugins (netavark
# is the network backend), no systemd (the API socket is `podman system service`, run in
# the background), and a podman 4.3 that reports published ports with an empty HostIp (the test
# harness binds them to 127.0.0.1 explicitly).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.services/containers"
SOCKET="$STATE/podman.sock"
BASE_IMAGE="${OUTBOX_BASE_IMAGE:-localhost/outbox-base:bookworm}"
POSTGRES_IMAGE="${OUTBOX_POSTGRES_IMAGE:-localhost/outbox-postgres:15}"
KAFKA_IMAGE="${OUTBOX_KAFKA_IMAGE:-localhost/outbox-kafka:4.1.1}"
MIRROR="${OUTBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CONF=/etc/containers/containers.conf
MARK="# written by rust-outbox scripts/containers.sh"

die() { echo "containers: $*" >&2; exit 1; }
log() { echo "containers: $*" >&2; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

install() {
  local need=()
  command -v podman >/dev/null || need+=(podman)
  command -v runc >/dev/null || need+=(runc)
  command -v netavark >/dev/null || [ -x /usr/lib/podman/netavark ] || need+=(netavark aardvark-dns)
  command -v iptables >/dev/null || need+=(iptables)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v podman-compose >/dev/null || need+=(podman-compose)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

configure() {
  # nofile: the hard limit this process may raise to (the VM cannot raise it further).
  local nofile
  nofile="$(ulimit -Hn)"
  [ "$nofile" = unlimited ] && nofile=1048576
  local wanted
  wanted="$MARK
[containers]
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=32768:32768\"]
log_driver = \"k8s-file\"

[engine]
runtime = \"runc\"
cgroup_manager = \"cgroupfs\"
events_logger = \"file\"

[network]
network_backend = \"netavark\"
"
  if [ -f "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; add to it:
$wanted"
  fi
  if [ "$(cat "$CONF" 2>/dev/null)" != "$(printf '%s' "$wanted")" ]; then
    log "writing $CONF"
    $SUDO mkdir -p "$(dirname "$CONF")"
    printf '%s' "$wanted" | $SUDO tee "$CONF" >/dev/null
  fi
}

image_exists() { podman image exists "$1"; }

image_label() { podman image inspect --format "{{ index .Labels \"outbox.inputs\" }}" "$1" 2>/dev/null || true; }

# Removes a debootstrap folder, never crossing into file systems a failed run left mounted in it.
clean_rootfs() {
  local rootfs="$1" m
  [ -d "$rootfs" ] || return 0
  for m in proc sys dev/pts dev; do
    mountpoint -q "$rootfs/$m" 2>/dev/null && $SUDO umount -l "$rootfs/$m"
  done
  $SUDO rm -rf --one-file-system "$rootfs"
}

base_image() {
  if image_exists "$BASE_IMAGE"; then return 0; fi
  local tarball="$STATE/base-bookworm.tar"
  if [ ! -f "$tarball" ]; then
    log "debootstrap (minbase, bookworm) from $MIRROR; takes a minute or two"
    local rootfs="$STATE/rootfs"
    clean_rootfs "$rootfs"
    $SUDO debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$STATE/debootstrap.log" 2>&1 ||
      { tail -n 30 "$STATE/debootstrap.log" >&2; die "debootstrap failed"; }
    # Keep images small: no documentation, no apt lists.
    $SUDO rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    $SUDO tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    clean_rootfs "$rootfs"
  fi
  log "importing $BASE_IMAGE"
  podman import --change 'CMD ["/bin/bash"]' "$tarball" "$BASE_IMAGE" >/dev/null
}

# build IMAGE CONTEXT [podman build arguments...]: rebuilt only when the context's files, the
# arguments or the base image name change.
build() {
  local image="$1" ctx="$2"; shift 2
  local hash
  hash="$( (cd "$ctx" && find . -type f ! -path './libs/*' -print0 | sort -z | xargs -0 cat;
    ls "$ctx/libs" 2>/dev/null; echo "$BASE_IMAGE" "$@") | sha256sum | cut -c1-16)"
  if image_exists "$image" && [ "$(image_label "$image")" = "$hash" ]; then return 0; fi
  log "building $image"
  local logf
  logf="$STATE/build-$(basename "$ctx").log"
  podman build --pull=never --build-arg "BASE_IMAGE=$BASE_IMAGE" --label "outbox.inputs=$hash" \
    "$@" -t "$image" "$ctx" >"$logf" 2>&1 ||
    { tail -n 40 "$logf" >&2; die "building $image failed"; }
}

images() {
  install
  configure
  base_image
  build "$POSTGRES_IMAGE" "$ROOT/scripts/containers/postgres"
  # The Kafka image gets the jars fetched on the host (Maven Central is reached once, cached).
  "$ROOT/scripts/kafka-node.sh" fetch
  local version
  version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/scripts/kafka/pom.xml")"
  local ctx="$STATE/kafka-context"
  rm -rf "$ctx"
  mkdir -p "$ctx"
  cp "$ROOT"/scripts/containers/kafka/* "$ctx/"
  cp -r "$ROOT/.services/kafka-libs/$version" "$ctx/libs"
  rm -f "$ctx/libs/.complete"
  build "$KAFKA_IMAGE" "$ctx"
}

socket_pid() {
  [ -f "$STATE/service.pid" ] || return 1
  local pid
  pid="$(cat "$STATE/service.pid")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

socket_up() {
  if ! socket_pid >/dev/null; then
    rm -f "$SOCKET"
    # No time limit: the service lives until `down`. setsid: it outlives this shell.
    setsid nohup podman system service --time=0 "unix://$SOCKET" >"$STATE/service.log" 2>&1 </dev/null &
    echo $! >"$STATE/service.pid"
  fi
  local deadline=$((SECONDS + 30))
  until curl -sf --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { tail -n 20 "$STATE/service.log" >&2; die "the Docker-API socket $SOCKET does not answer"; }
    sleep 0.2
  done
  log "Docker API at unix://$SOCKET"
}

env_exports() {
  echo "export DOCKER_HOST=unix://$SOCKET"
  echo "export OUTBOX_TEST_BACKEND=containers"
  echo "export OUTBOX_POSTGRES_IMAGE=$POSTGRES_IMAGE"
  echo "export OUTBOX_KAFKA_IMAGE=$KAFKA_IMAGE"
}

sweep() {
  command -v podman >/dev/null || return 0
  local ids
  ids="$(podman ps -aq --filter label=org.testcontainers.managed-by=testcontainers)"
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    podman rm -f -t 0 $ids >/dev/null
    log "removed $(echo "$ids" | wc -l) testcontainers container(s)"
  fi
}

down() {
  local pid
  if pid="$(socket_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    log "Docker-API socket stopped"
  fi
  rm -f "$STATE/service.pid" "$SOCKET"
}

compose() {
  OUTBOX_POSTGRES_IMAGE="$POSTGRES_IMAGE" OUTBOX_KAFKA_IMAGE="$KAFKA_IMAGE" \
    OUTBOX_BASE_IMAGE="$BASE_IMAGE" FILE_SERVICE_BUILD_TARGET=prebuilt \
    podman-compose -p rust-outbox -f "$ROOT/compose.yaml" "$@"
}

healthy() { podman healthcheck run "$1" >/dev/null 2>&1; }

wait_healthy() {
  local container="$1" deadline=$((SECONDS + ${2:-180}))
  until healthy "$container"; do
    [ $SECONDS -lt $deadline ] || { podman logs --tail 40 "$container" >&2; die "$container is not healthy"; }
    sleep 1
  done
  log "$container is healthy"
}

compose_up() {
  images
  log "building the File Service on the host (cargo build -p file-service)"
  (cd "$ROOT" && cargo build -q -p file-service)
  mkdir -p "$ROOT/.services/bin"
  cp "$ROOT/target/debug/file-service" "$ROOT/.services/bin/file-service"
  compose build file-service >"$STATE/compose-build.log" 2>&1 ||
    { tail -n 40 "$STATE/compose-build.log" >&2; die "building the File Service image failed"; }
  # podman-compose 1.0 ignores `depends_on: condition: service_healthy` (and podman runs health
  # checks only on request without systemd): start the servers, wait for them, then the service.
  compose up -d postgres kafka >"$STATE/compose-up.log" 2>&1 ||
    { tail -n 40 "$STATE/compose-up.log" >&2; die "podman-compose up failed"; }
  wait_healthy rust-outbox_postgres_1
  wait_healthy rust-outbox_kafka_1
  compose up -d --no-deps file-service >>"$STATE/compose-up.log" 2>&1 ||
    { tail -n 40 "$STATE/compose-up.log" >&2; die "podman-compose up failed"; }
  wait_healthy rust-outbox_file-service_1
}

compose_down() {
  command -v podman-compose >/dev/null || return 0
  compose down -v >"$STATE/compose-down.log" 2>&1 || { tail -n 20 "$STATE/compose-down.log" >&2; die "podman-compose down failed"; }
  log "compose stack removed"
}

mkdir -p "$STATE"
case "${1:-}" in
  compose-up) compose_up ;;
  compose-down) compose_down ;;
  up) images; socket_up; env_exports ;;
  images) images ;;
  env) env_exports ;;
  down) sweep; down ;;
  sweep) sweep ;;
  *) die "usage: containers.sh up|images|env|down|sweep|compose-up|compose-down (see the header of this file)" ;;
esac
