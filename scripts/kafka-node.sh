#!/usr/bin/env bash
# Runs one Apache Kafka node (combined KRaft broker and controller) from jars fetched off Maven Central.
#
#   kafka-node.sh fetch                          fetch the pinned jars (scripts/kafka/pom.xml) once
#   kafka-node.sh start DIR PORT CONTROLLER_PORT format DIR if needed, start the node, wait until it
#                                                answers a metadata request
#   kafka-node.sh stop DIR [--kill]              stop it (SIGTERM and wait; --kill sends SIGKILL)
#   kafka-node.sh status DIR                     exit 0 when the node in DIR runs
#   kafka-node.sh wait PORT [SECONDS]            wait until 127.0.0.1:PORT answers a metadata request
#   kafka-node.sh topics PORT ARGS...            run kafka-topics against 127.0.0.1:PORT
#   kafka-node.sh consume PORT TOPIC [SECONDS]   print a topic from the beginning (key, headers,
#                                                value), stopping after SECONDS idle (default 5)
#
# scripts/services.sh runs the project's shared node with it; the test harness runs private nodes
# (for tests that stop the broker) with it too, so there is one way to run Kafka.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
POM="$ROOT/scripts/kafka/pom.xml"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
LIBS="${OUTBOX_KAFKA_LIBS:-$ROOT/.services/kafka-libs/$KAFKA_VERSION}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
HEAP="${OUTBOX_KAFKA_HEAP:-768m}"

die() { echo "kafka-node: $*" >&2; exit 1; }

fetch() {
  if [ -f "$LIBS/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || die "mvn is missing (scripts/bootstrap.sh installs it)"
  echo "kafka-node: fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
  rm -rf "$LIBS.tmp"
  mvn -q -B -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$LIBS.tmp" >"$ROOT/.services/mvn-fetch.log" 2>&1 ||
    { tail -n 40 "$ROOT/.services/mvn-fetch.log" >&2; die "fetching the Kafka jars with mvn failed"; }
  rm -rf "$LIBS"
  mv "$LIBS.tmp" "$LIBS"
  touch "$LIBS/.complete"
}

java_cp() { "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -cp "$LIBS/*" \
  -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.properties" -Dkafka.logs.dir=/tmp "$@"; }

pid_of() {
  local dir="$1"
  [ -f "$dir/kafka.pid" ] || return 1
  local pid
  pid="$(cat "$dir/kafka.pid")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

answers() {
  # A real metadata request: listing topics through the admin client.
  java_cp_topics "$1" --list >/dev/null 2>&1
}

java_cp_topics() {
  local port="$1"; shift
  timeout 60 "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$LIBS/*" \
    -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.properties" -Dkafka.logs.dir=/tmp \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" "$@"
}

consume() {
  local port="$1" topic="$2" idle="${3:-5}"
  timeout 120 "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$LIBS/*" \
    -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.properties" -Dkafka.logs.dir=/tmp \
    org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "127.0.0.1:$port" \
    --topic "$topic" --from-beginning --timeout-ms "$((idle * 1000))" \
    --property print.key=true --property print.headers=true \
    --property key.separator=" | " --property headers.separator=", " 2>/dev/null || true
}

wait_ready() {
  local port="$1" seconds="${2:-90}" dir="${3:-}"
  local deadline=$((SECONDS + seconds))
  while [ $SECONDS -lt $deadline ]; do
    if [ -n "$dir" ] && ! pid_of "$dir" >/dev/null; then
      echo "kafka-node: the broker in $dir exited during start-up; last log lines:" >&2
      tail -n 40 "$dir/kafka.out" "$dir/logs/server.log" >&2 2>/dev/null || true
      return 1
    fi
    # Cheap check first: nothing listens yet, no point starting a JVM.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && answers "$port"; then
      return 0
    fi
    sleep 1
  done
  echo "kafka-node: 127.0.0.1:$port did not answer a metadata request within ${seconds}s" >&2
  [ -n "$dir" ] && tail -n 40 "$dir/kafka.out" "$dir/logs/server.log" >&2 2>/dev/null || true
  return 1
}

start() {
  local dir="$1" port="$2" cport="$3"
  fetch
  mkdir -p "$dir/logs" "$dir/data"
  dir="$(cd "$dir" && pwd)"
  if pid_of "$dir" >/dev/null; then
    wait_ready "$port" 90 "$dir"
    return 0
  fi
  sed -e "s:@PORT@:$port:g" -e "s:@CONTROLLER_PORT@:$cport:g" -e "s:@DATA_DIR@:$dir/data:g" \
    "$ROOT/scripts/kafka/server.properties.in" >"$dir/server.properties"
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cluster_id
    cluster_id="$(java_cp kafka.tools.StorageTool random-uuid)"
    java_cp kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" \
      -c "$dir/server.properties" >"$dir/format.log" 2>&1 ||
      { cat "$dir/format.log" >&2; die "formatting KRaft storage in $dir/data failed"; }
  fi
  # setsid: the node outlives the shell (and the test process) that started it.
  setsid nohup "$JAVA" -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.properties" \
    -Dkafka.logs.dir="$dir/logs" -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" \
    >"$dir/kafka.out" 2>&1 </dev/null &
  echo $! >"$dir/kafka.pid"
  wait_ready "$port" 90 "$dir"
}

stop() {
  local dir="$1" how="${2:-}"
  local pid
  pid="$(pid_of "$dir")" || { rm -f "$dir/kafka.pid"; return 0; }
  if [ "$how" = "--kill" ]; then
    kill -KILL "$pid" 2>/dev/null || true
  else
    kill -TERM "$pid" 2>/dev/null || true
  fi
  for _ in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/kafka.pid"; return 0; }
    sleep 0.1
  done
  echo "kafka-node: the broker (pid $pid) ignored SIGTERM for 60s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/kafka.pid"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  fetch) mkdir -p "$ROOT/.services"; fetch ;;
  start) [ $# -eq 3 ] || die "usage: kafka-node.sh start DIR PORT CONTROLLER_PORT"; mkdir -p "$ROOT/.services"; start "$@" ;;
  stop) [ $# -ge 1 ] || die "usage: kafka-node.sh stop DIR [--kill]"; stop "$@" ;;
  status) [ $# -eq 1 ] || die "usage: kafka-node.sh status DIR"; pid_of "$1" >/dev/null ;;
  wait) [ $# -ge 1 ] || die "usage: kafka-node.sh wait PORT [SECONDS]"; fetch; wait_ready "$1" "${2:-90}" ;;
  topics) [ $# -ge 1 ] || die "usage: kafka-node.sh topics PORT ARGS..."; fetch; java_cp_topics "$@" ;;
  consume) [ $# -ge 2 ] || die "usage: kafka-node.sh consume PORT TOPIC [SECONDS]"; fetch; consume "$@" ;;
  *) die "usage: kafka-node.sh fetch|start|stop|status|wait|topics|consume (see the header of this file)" ;;
esac
