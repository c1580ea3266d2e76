//! The SeaORM entity of the `event_outbox` table, for queries of your own (inspection, admin
//! tools, tests). The library writes with one prepared `INSERT` and relays with hand-written
//! statements, so adding an event costs no more than the SQL it needs.

use sea_orm::entity::prelude::*;

/// One row of `event_outbox`; see `sql/event_outbox.up.sql` for what each column is for.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "event_outbox")]
pub struct Model {
    /// Relay order (identity, assigned by the database).
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Message id, unique.
    #[sea_orm(unique)]
    pub event_id: Uuid,
    /// What kind of thing changed.
    pub aggregate_type: String,
    /// Which one changed.
    pub aggregate_id: String,
    /// The event type.
    pub event_type: String,
    /// The destination topic.
    pub topic: String,
    /// The Kafka key.
    pub event_key: String,
    /// Key-hash partition (0-255), computed by the database.
    pub partition: i16,
    /// The Kafka value.
    pub payload: Vec<u8>,
    /// Extra Kafka headers, a JSON object of strings.
    pub headers: Json,
    /// When the event was written.
    pub created_at: DateTimeWithTimeZone,
    /// Permanent failures so far.
    pub attempts: i32,
    /// Not retried before this time.
    pub next_attempt_at: Option<DateTimeWithTimeZone>,
    /// The last failure.
    pub last_error: Option<String>,
    /// When it was parked as a dead letter.
    pub dead_lettered_at: Option<DateTimeWithTimeZone>,
    /// When it was published (only under retention).
    pub published_at: Option<DateTimeWithTimeZone>,
}

/// `event_outbox` has no relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
