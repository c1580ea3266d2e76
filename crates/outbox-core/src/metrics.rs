//! Metric names and their descriptions.
//!
//! The relay and the inbox worker record through the [`metrics`] facade; the service installs
//! an exporter (for example `metrics-exporter-prometheus`). Labels stay low-cardinality:
//! `topic`, `event_type`, `kind`, `consumer` (a handler's name) and `outcome` (a handler's
//! outcome label) only, never ids.

/// Gauge: events waiting to be published (the real backlog, refreshed every `stats_interval`).
pub const EVENTS_PENDING: &str = "outbox_events_pending";
/// Gauge: age in seconds of the oldest pending event (0 when none).
pub const OLDEST_PENDING_AGE_SECONDS: &str = "outbox_oldest_pending_event_age_seconds";
/// Counter, label `topic`: events published and acknowledged.
pub const EVENTS_RELAYED_TOTAL: &str = "outbox_events_relayed_total";
/// Counter, label `kind` (`transient` or `permanent`): failed publish attempts and failed store
/// operations (`transient`).
pub const RELAY_ERRORS_TOTAL: &str = "outbox_relay_errors_total";
/// Gauge: events parked as dead letters.
pub const EVENTS_DEAD_LETTERED: &str = "outbox_events_dead_lettered";
/// Counter, label `topic`: events dead-lettered by this relay.
pub const EVENTS_DEAD_LETTERED_TOTAL: &str = "outbox_events_dead_lettered_total";
/// Histogram: seconds from claiming a batch to writing its outcome back.
pub const RELAY_BATCH_DURATION_SECONDS: &str = "outbox_relay_batch_duration_seconds";
/// Histogram, label `topic`: seconds from an event's `created_at` to its Kafka acknowledgement.
pub const PUBLISH_LAG_SECONDS: &str = "outbox_publish_lag_seconds";
/// Counter, label `event_type`: events added by writers in this process (counted when the insert
/// succeeds, before the caller's commit).
pub const EVENTS_ADDED_TOTAL: &str = "outbox_events_added_total";
/// Gauge: 1 while this process's relay is the active one, 0 while it is a standby or stopped.
pub const RELAY_LEADER: &str = "outbox_relay_leader";
/// Gauge: Unix time of the relay's last successful poll of the store (a stuck relay stops
/// advancing it).
pub const RELAY_LAST_POLL_TIMESTAMP_SECONDS: &str = "outbox_relay_last_poll_timestamp_seconds";

/// Gauge: seconds the oldest committed event has waited behind the commit horizon, a write
/// transaction still open somewhere in the database cluster (0 when nothing waits for one).
pub const COMMIT_HORIZON_WAIT_SECONDS: &str = "outbox_commit_horizon_wait_seconds";

/// Counter, labels `consumer` and `outcome`: messages the inbox applied (the handler ran and
/// its transaction committed), by the outcome recorded (`applied`, or the handler's own).
pub const INBOX_CONSUMED_TOTAL: &str = "outbox_inbox_messages_consumed_total";
/// Counter, label `consumer`: messages the inbox had already applied or rejected, skipped
/// without running the handler (their offsets are committed).
pub const INBOX_DUPLICATES_TOTAL: &str = "outbox_inbox_duplicates_skipped_total";
/// Counter, label `consumer`: messages recorded `rejected` (no usable event id, no handler for
/// the topic, or a permanent handler error) and skipped.
pub const INBOX_REJECTED_TOTAL: &str = "outbox_inbox_messages_rejected_total";
/// Counter, labels `consumer` and `kind` (`transient` or `permanent`): handler calls that
/// failed.
pub const INBOX_HANDLER_ERRORS_TOTAL: &str = "outbox_inbox_handler_errors_total";
/// Counter, label `operation` (`store` or `source`): failed database or broker operations of
/// the inbox worker (retried with backoff).
pub const INBOX_ERRORS_TOTAL: &str = "outbox_inbox_errors_total";
/// Histogram, label `consumer`: seconds one handler call took.
pub const INBOX_HANDLER_DURATION_SECONDS: &str = "outbox_inbox_handler_duration_seconds";
/// Histogram: messages in each batch the inbox worker took from the broker.
pub const INBOX_BATCH_SIZE: &str = "outbox_inbox_batch_size";
/// Gauge, label `topic`: messages on the broker the consumer group has not consumed yet (set
/// by a [`MessageSource`](crate::MessageSource) that can tell, such as `outbox-kafka`'s, from
/// the client's statistics; the worker itself only sees time lag, [`INBOX_LAG_SECONDS`]).
pub const INBOX_LAG_MESSAGES: &str = "outbox_inbox_lag_messages";
/// Gauge, label `topic`: seconds between the broker timestamp of the last message the inbox
/// finished on a topic and the moment it finished (how far behind the consumer runs, in time).
pub const INBOX_LAG_SECONDS: &str = "outbox_inbox_lag_seconds";

/// Registers descriptions and units for every metric above with the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        EVENTS_PENDING,
        Unit::Count,
        "Events waiting to be published."
    );
    describe_gauge!(
        OLDEST_PENDING_AGE_SECONDS,
        Unit::Seconds,
        "Age of the oldest event waiting to be published."
    );
    describe_counter!(
        EVENTS_RELAYED_TOTAL,
        Unit::Count,
        "Events published to Kafka and acknowledged in the outbox."
    );
    describe_counter!(
        RELAY_ERRORS_TOTAL,
        Unit::Count,
        "Failed publish attempts and store operations, by kind (transient, permanent)."
    );
    describe_gauge!(
        EVENTS_DEAD_LETTERED,
        Unit::Count,
        "Events parked as dead letters."
    );
    describe_counter!(
        EVENTS_DEAD_LETTERED_TOTAL,
        Unit::Count,
        "Events dead-lettered by this relay."
    );
    describe_histogram!(
        RELAY_BATCH_DURATION_SECONDS,
        Unit::Seconds,
        "Time to claim, publish and acknowledge one batch."
    );
    describe_histogram!(
        PUBLISH_LAG_SECONDS,
        Unit::Seconds,
        "Time from an event's creation to its Kafka acknowledgement."
    );
    describe_gauge!(
        COMMIT_HORIZON_WAIT_SECONDS,
        Unit::Seconds,
        "How long the oldest committed event has waited for an older transaction to end."
    );
    describe_counter!(
        EVENTS_ADDED_TOTAL,
        Unit::Count,
        "Events added to the outbox by writers."
    );
    describe_counter!(
        INBOX_CONSUMED_TOTAL,
        Unit::Count,
        "Messages applied through the inbox, by consumer and outcome."
    );
    describe_counter!(
        INBOX_DUPLICATES_TOTAL,
        Unit::Count,
        "Messages the inbox had already seen, skipped."
    );
    describe_counter!(
        INBOX_REJECTED_TOTAL,
        Unit::Count,
        "Messages recorded as rejected and skipped."
    );
    describe_counter!(
        INBOX_HANDLER_ERRORS_TOTAL,
        Unit::Count,
        "Failed handler calls, by consumer and kind (transient, permanent)."
    );
    describe_counter!(
        INBOX_ERRORS_TOTAL,
        Unit::Count,
        "Failed database (store) or broker (source) operations of the inbox worker."
    );
    describe_histogram!(
        INBOX_HANDLER_DURATION_SECONDS,
        Unit::Seconds,
        "Time one inbox handler call took."
    );
    describe_histogram!(
        INBOX_BATCH_SIZE,
        Unit::Count,
        "Messages in each batch the inbox worker took from the broker."
    );
    describe_gauge!(
        INBOX_LAG_MESSAGES,
        Unit::Count,
        "Messages on the broker the consumer group has not consumed yet."
    );
    describe_gauge!(
        INBOX_LAG_SECONDS,
        Unit::Seconds,
        "Time from the broker timestamp of the last message applied to now."
    );
    describe_gauge!(RELAY_LEADER, "1 while this relay is the active one.");
    describe_gauge!(
        RELAY_LAST_POLL_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time of the relay's last successful poll of the outbox."
    );
}
