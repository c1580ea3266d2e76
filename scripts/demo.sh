#!/usr/bin/env bash
# The essay chain demo: starts PostgreSQL and Kafka, builds and runs the Batch Orchestrator and the
# File Service (each migrating its own database; the File Service asks the Batch Orchestrator for
# each batch's owner and lock state through BATCH_ORCHESTRATOR_URL). It registers a GUEST batch of
# five essays with the Batch Orchestrator, uploads the sample essays in
# services/file-service/samples to it (valid .txt, .docx and .pdf, one too short, one
# unsupported), deletes one file, and waits until the Batch Orchestrator's inbox has applied the
# File Service's events and the batch is ready for pipelines; then a REGULAR batch of one essay,
# which ends awaiting student validation. It prints the events read back from the File Service's
# four topics and the Batch Orchestrator's, and each batch's status over HTTP. Then it stops both
# services with SIGTERM.
#
# Every request of a run carries the same X-Correlation-ID, and only events of this run are
# printed, so earlier runs do not clutter the output.
#
#   scripts/demo.sh --compose   the File Service's part only (no Batch Orchestrator: batches are
#                               owned locally), against the compose stack (compose.yaml: the
#                               service on 127.0.0.1:7001, Kafka on 127.0.0.1:19092), which it
#                               leaves running
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ "${1:-}" = "--compose" ]; then
  COMPOSE=1
  PORT="${FILE_SERVICE_HTTP_PORT:-7001}"
  KAFKA_PORT="${OUTBOX_COMPOSE_KAFKA_PORT:-19092}"
  curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null ||
    { echo "demo: no File Service on 127.0.0.1:$PORT (docker compose up -d --build --wait)" >&2; exit 1; }
  echo "demo: the compose stack's File Service answers on port $PORT"
else
COMPOSE=""
KAFKA_PORT=9092
scripts/services.sh up
echo "demo: building the Batch Orchestrator and the File Service"
cargo build -q -p file-service -p batch-orchestrator
FS_BIN="$ROOT/target/debug/file-service"
BOS_BIN="$ROOT/target/debug/batch-orchestrator"

database() {
  PGPASSWORD=outbox psql -h 127.0.0.1 -U outbox -d outbox -qAt \
    -c "SELECT 1 FROM pg_database WHERE datname = '$1'" | grep -q 1 ||
    PGPASSWORD=outbox psql -h 127.0.0.1 -U outbox -d outbox -qc "CREATE DATABASE $1"
}
database file_service_demo
database batch_orchestrator_demo

# Waits until $2/healthz answers, or shows the log of the service that exited.
await_health() {
  local pid=$1 url=$2 log=$3
  for _ in $(seq 1 120); do
    curl -fsS "$url/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$log"; echo "demo: a service exited" >&2; exit 1; }
    sleep 0.5
  done
  curl -fsS "$url/healthz" >/dev/null || { tail -n 30 "$log"; exit 1; }
}

PORT="${FILE_SERVICE_HTTP_PORT:-7001}"
BOS_PORT="${BATCH_ORCHESTRATOR_SERVICE_PORT:-5000}"
BOS="http://127.0.0.1:$BOS_PORT"
LOG="$ROOT/.services/file-service-demo.log"
BOS_LOG="$ROOT/.services/batch-orchestrator-demo.log"
export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092
export LOG_FORMAT=json

DATABASE_URL="postgres://outbox:outbox@127.0.0.1:5432/batch_orchestrator_demo" \
BATCH_ORCHESTRATOR_SERVICE_PORT="$BOS_PORT" \
BATCH_ORCHESTRATOR_SERVICE_MIGRATE_ON_START=true \
BATCH_ORCHESTRATOR_SERVICE_CREATE_TOPICS=true \
  "$BOS_BIN" serve >"$BOS_LOG" 2>&1 &
BOS_PID=$!
trap 'kill $BOS_PID 2>/dev/null || true' EXIT
await_health $BOS_PID "$BOS" "$BOS_LOG"
echo "demo: the Batch Orchestrator answers on port $BOS_PORT (log: $BOS_LOG)"

DATABASE_URL="postgres://outbox:outbox@127.0.0.1:5432/file_service_demo" \
FILE_SERVICE_HTTP_PORT="$PORT" \
FILE_SERVICE_MIGRATE_ON_START=true \
FILE_SERVICE_CREATE_TOPICS=true \
BATCH_ORCHESTRATOR_URL="$BOS" \
  "$FS_BIN" serve >"$LOG" 2>&1 &
SERVICE=$!
trap 'kill $SERVICE $BOS_PID 2>/dev/null || true' EXIT
await_health $SERVICE "http://127.0.0.1:$PORT" "$LOG"
echo "demo: the File Service answers on port $PORT (log: $LOG), asking $BOS for batch owners"
fi

CORRELATION="$(python3 -c 'import uuid; print(uuid.uuid4())')"
# Registers a batch with the Batch Orchestrator and prints its id.
register() {
  curl -fsS -X POST "$BOS/v1/batches/register" -H "Content-Type: application/json" \
    -H "X-Correlation-ID: $CORRELATION" -d "$1" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["batch_id"])'
}
if [ -z "$COMPOSE" ]; then
  BATCH="$(register '{"expected_essay_count": 5, "course_code": "ENG5", "user_id": "demo-teacher"}')"
  echo "demo: registered GUEST batch $BATCH (5 essays) with the Batch Orchestrator"
else
  BATCH="demo-batch-$(date +%s)"
fi
SAMPLES=services/file-service/samples
echo "demo: uploading 5 files to $BATCH (correlation $CORRELATION)"
RESPONSE="$(curl -sS -X POST "http://127.0.0.1:$PORT/v1/files/batch" \
  -H "X-User-ID: demo-teacher" -H "X-Correlation-ID: $CORRELATION" \
  -F "batch_id=$BATCH" \
  -F "files=@$SAMPLES/reading.txt" -F "files=@$SAMPLES/sleep.docx" -F "files=@$SAMPLES/climate.pdf" \
  -F "files=@$SAMPLES/too-short.txt" -F "files=@$SAMPLES/drawing.png")"
echo "$RESPONSE" | python3 -m json.tool

# Wait until nothing is pending, then remove the unsupported file.
for _ in $(seq 1 100); do
  STATE="$(curl -sS "http://127.0.0.1:$PORT/v1/files/batch/$BATCH/state" -H "X-User-ID: demo-teacher")"
  echo "$STATE" | grep -q '"pending"' || break
  sleep 0.2
done
echo "demo: batch state after processing"
echo "$STATE" | python3 -c 'import json,sys
for f in json.load(sys.stdin)["files"]:
    print("  {:<14} {:<10} {}".format(f["filename"], f["status"], f["validation_error_code"] or ""))'
PNG_ID="$(echo "$RESPONSE" | python3 -c 'import json,sys
print(next(f["file_upload_id"] for f in json.load(sys.stdin)["files"] if f["filename"] == "drawing.png"))')"
echo "demo: deleting drawing.png ($PNG_ID)"
curl -sS -X DELETE "http://127.0.0.1:$PORT/v1/files/batch/$BATCH/files/$PNG_ID" \
  -H "X-User-ID: demo-teacher" -H "X-Correlation-ID: $CORRELATION" | python3 -m json.tool

# Let the relay publish the last event, then read the four topics back.
for _ in $(seq 1 50); do
  PENDING="$(curl -sS "http://127.0.0.1:$PORT/healthz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["outbox"]["pending"])')"
  [ "$PENDING" = "0" ] && break
  sleep 0.2
done
for TOPIC in huleedu.file.batch.file.added.v1 huleedu.file.essay.content.provisioned.v1 \
             huleedu.file.essay.validation.failed.v1 huleedu.file.batch.file.removed.v1; do
  echo
  echo "=== $TOPIC"
  scripts/kafka-node.sh consume "$KAFKA_PORT" "$TOPIC" 3 | grep -F "$CORRELATION" |
    python3 -c 'import json,sys
for line in sys.stdin:
    headers, key, value = line.rstrip("\n").split(" | ", 2)
    envelope = json.loads(value)
    data = envelope["data"]
    detail = data.get("validation_error_code") or data.get("filename") or data.get("original_file_name")
    print("key={}  event_id={}  {}  {}".format(key, envelope["event_id"], data["event"], detail))'
done

[ -z "$COMPOSE" ] || exit 0

# Waits until batch $1 leaves awaiting_content_validation, and prints its status.
await_batch() {
  local status=""
  for _ in $(seq 1 150); do
    status="$(curl -fsS "$BOS/v1/batches/$1/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')"
    [ "$status" != "awaiting_content_validation" ] && break
    sleep 0.2
  done
  echo "demo: GET /v1/batches/$1/status -> $status"
}
echo
await_batch "$BATCH"

echo "demo: a REGULAR batch (with a class) of one essay"
REGULAR="$(register '{"expected_essay_count": 1, "course_code": "SV1", "user_id": "demo-teacher", "class_id": "class-7a"}')"
curl -sS -o /dev/null -X POST "http://127.0.0.1:$PORT/v1/files/batch" \
  -H "X-User-ID: demo-teacher" -H "X-Correlation-ID: $CORRELATION" \
  -F "batch_id=$REGULAR" -F "files=@$SAMPLES/reading.txt"
await_batch "$REGULAR"

# The Batch Orchestrator's events of both batches, read back from Kafka.
for _ in $(seq 1 50); do
  PENDING="$(curl -sS "$BOS/healthz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["dependencies"]["outbox"].get("pending", 0))' 2>/dev/null || echo 0)"
  [ "$PENDING" = "0" ] && break
  sleep 0.2
done
for TOPIC in huleedu.batch.essays.registered.v1 huleedu.els.essay.slot.assigned.v1 \
             huleedu.batch.content.provisioning.completed.v1 \
             huleedu.batch.student.matching.initiate.command.v1; do
  echo
  echo "=== $TOPIC"
  scripts/kafka-node.sh consume "$KAFKA_PORT" "$TOPIC" 3 | grep -F -e "$BATCH" -e "$REGULAR" |
    BATCH="$BATCH" python3 -c 'import json,os,sys
for line in sys.stdin:
    headers, key, value = line.rstrip("\n").split(" | ", 2)
    envelope = json.loads(value)
    data = envelope["data"]
    which = "GUEST" if os.environ["BATCH"] in value else "REGULAR"
    essays = data.get("essays_for_processing") or data.get("essays_to_process")
    if data.get("original_file_name"):
        detail = data["original_file_name"]
    elif essays is not None:
        detail = "%d essays" % len(essays)
    else:
        detail = "%s slots" % data.get("expected_essay_count")
    print("{:<7} key={}  event_id={}  {}".format(which, key[:8] + "...", envelope["event_id"], detail))'
done

echo
echo "demo: stopping the File Service and the Batch Orchestrator with SIGTERM"
kill -TERM $SERVICE $BOS_PID
wait $SERVICE && echo "demo: the File Service stopped cleanly (relay flushed, nothing in flight)"
wait $BOS_PID && echo "demo: the Batch Orchestrator stopped cleanly (inbox committed, relay flushed)"
trap - EXIT
