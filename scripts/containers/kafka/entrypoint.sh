#!/bin/bash
# Writes server.properties from the image's defaults and the KAFKA_* variables, formats the KRaft
# storage on first start (CLUSTER_ID, as in apache/kafka), and runs the node in the foreground.
set -euo pipefail

conf=/var/lib/kafka/server.properties
cp /opt/kafka/config/server.properties "$conf"
set_property() {
  local key="$1" value="$2"
  grep -v "^${key//./\\.}=" "$conf" >"$conf.tmp" || true
  printf '%s=%s\n' "$key" "$value" >>"$conf.tmp"
  mv "$conf.tmp" "$conf"
}
# Variables that configure the JVM or the image, not the broker.
skip=" KAFKA_VERSION KAFKA_HEAP_OPTS KAFKA_OPTS KAFKA_JVM_PERFORMANCE_OPTS KAFKA_LOG4J_OPTS KAFKA_JMX_OPTS KAFKA_GC_LOG_OPTS KAFKA_LOG4J_ROOT_LOGLEVEL KAFKA_LOG4J_LOGGERS KAFKA_TOOLS_LOG4J_LOGLEVEL "
while IFS='=' read -r -d '' name value; do
  case "$name" in KAFKA_*) ;; *) continue ;; esac
  case "$skip" in *" $name "*) continue ;; esac
  key="${name#KAFKA_}"
  key="$(echo "$key" | tr '[:upper:]' '[:lower:]' | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')"
  set_property "$key" "$value"
done < <(env -0)

data="$(sed -n 's/^log\.dirs=//p' "$conf" | cut -d, -f1)"
if [ ! -f "$data/meta.properties" ]; then
  java -Xmx256m -XX:TieredStopAtLevel=1 -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
    -cp '/opt/kafka/libs/*' kafka.tools.StorageTool format --ignore-formatted \
    -t "${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" -c "$conf" >/dev/null
fi

# shellcheck disable=SC2086
exec java ${KAFKA_HEAP_OPTS:--Xms512m -Xmx512m} \
  ${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent} \
  ${KAFKA_OPTS:-} -Djava.awt.headless=true \
  -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties -cp '/opt/kafka/libs/*' \
  kafka.Kafka "$conf"
