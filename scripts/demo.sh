#!/usr/bin/env bash
# The File Service demo: starts PostgreSQL and Kafka, builds and runs the File Service (migrating
# its own database), uploads the sample essays in services/file-service/samples (valid .txt,
# .docx and .pdf, one too short, one unsupported), deletes one file, and prints the events read
# back from the four Kafka topics with their keys. Then stops the service with SIGTERM.
#
# Every request of a run carries the same X-Correlation-ID, and only events with it are printed,
# so earlier runs do not clutter the output.
#
#   scripts/demo.sh --compose   the uploads only, against the compose stack (compose.yaml: the
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
echo "demo: building the File Service"
cargo build -q -p file-service
BIN="$ROOT/target/debug/file-service"

DB_NAME=file_service_demo
PGPASSWORD=outbox psql -h 127.0.0.1 -U outbox -d outbox -qAt \
  -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1 ||
  PGPASSWORD=outbox psql -h 127.0.0.1 -U outbox -d outbox -qc "CREATE DATABASE $DB_NAME"

PORT="${FILE_SERVICE_HTTP_PORT:-7001}"
LOG="$ROOT/.services/file-service-demo.log"
export DATABASE_URL="postgres://outbox:outbox@127.0.0.1:5432/$DB_NAME"
export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092
export FILE_SERVICE_HTTP_PORT="$PORT"
export FILE_SERVICE_MIGRATE_ON_START=true
export FILE_SERVICE_CREATE_TOPICS=true
export LOG_FORMAT=json
"$BIN" serve >"$LOG" 2>&1 &
SERVICE=$!
trap 'kill $SERVICE 2>/dev/null || true' EXIT

for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  kill -0 $SERVICE 2>/dev/null || { tail -n 30 "$LOG"; echo "demo: the service exited" >&2; exit 1; }
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null || { tail -n 30 "$LOG"; exit 1; }
echo "demo: the File Service answers on port $PORT (log: $LOG)"
fi

CORRELATION="$(python3 -c 'import uuid; print(uuid.uuid4())')"
BATCH="demo-batch-$(date +%s)"
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
echo
echo "demo: stopping the File Service with SIGTERM"
kill -TERM $SERVICE
wait $SERVICE && echo "demo: stopped cleanly (relay flushed, nothing in flight)"
trap - EXIT
