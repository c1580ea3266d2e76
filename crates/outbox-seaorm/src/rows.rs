//! Row mapping: claimed rows and dead-letter models into [`OutboxEvent`]s, the `headers`
//! column into header pairs, and error messages cut to what a row stores.

use chrono::Utc;
use outbox_core::{DeadLetter, EventId, OutboxEvent};
use sea_orm::sqlx::{self, Row, postgres::PgRow};

use crate::entity;

/// Longest `last_error` stored; longer messages are cut.
const MAX_ERROR_LEN: usize = 2000;

/// A claimed row (see `sql/claim.sql`) as an event. A row whose headers cannot become message
/// headers is returned with its `defect` set, not refused.
pub(crate) fn row_to_event(row: &PgRow) -> Result<OutboxEvent, sqlx::Error> {
    let headers_json: serde_json::Value = row.try_get("headers")?;
    let (headers, defect) = match headers_from_json(&headers_json) {
        Ok(headers) => (headers, None),
        Err(defect) => (Vec::new(), Some(defect)),
    };
    Ok(OutboxEvent {
        id: row.try_get("id")?,
        event_id: EventId::from_uuid(row.try_get("event_id")?),
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        event_type: row.try_get("event_type")?,
        topic: row.try_get("topic")?,
        key: row.try_get("event_key")?,
        payload: row.try_get("payload")?,
        headers,
        created_at: row.try_get("created_at")?,
        attempts: row.try_get("attempts")?,
        defect,
    })
}

/// Turns the `headers` column into header pairs. Strings are taken as they are, numbers and
/// booleans as their JSON text; anything else makes the row defective (it cannot become a
/// message as written).
fn headers_from_json(value: &serde_json::Value) -> Result<Vec<(String, String)>, String> {
    let object = value
        .as_object()
        .ok_or_else(|| format!("headers column is not a JSON object: {value}"))?;
    object
        .iter()
        .map(|(name, value)| match value {
            serde_json::Value::String(s) => Ok((name.clone(), s.clone())),
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
                Ok((name.clone(), value.to_string()))
            }
            other => Err(format!(
                "header `{name}` is not a string, number or boolean: {other}"
            )),
        })
        .collect()
}

/// A dead-lettered row as a [`DeadLetter`]; `None` when it is not dead-lettered.
pub(crate) fn model_to_dead_letter(model: entity::Model) -> Option<DeadLetter> {
    let (headers, defect) = match headers_from_json(&model.headers) {
        Ok(headers) => (headers, None),
        Err(defect) => (Vec::new(), Some(defect)),
    };
    Some(DeadLetter {
        dead_lettered_at: model.dead_lettered_at?.with_timezone(&Utc),
        last_error: model.last_error,
        event: OutboxEvent {
            id: model.id,
            event_id: EventId::from_uuid(model.event_id),
            aggregate_type: model.aggregate_type,
            aggregate_id: model.aggregate_id,
            event_type: model.event_type,
            topic: model.topic,
            key: model.event_key,
            payload: model.payload,
            headers,
            created_at: model.created_at.with_timezone(&Utc),
            attempts: model.attempts,
            defect,
        },
    })
}

/// `message`, cut on a character boundary to at most [`MAX_ERROR_LEN`] bytes and `...`.
pub(crate) fn truncate(message: &str) -> String {
    if message.len() <= MAX_ERROR_LEN {
        return message.to_owned();
    }
    let mut end = MAX_ERROR_LEN;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_must_be_an_object_of_scalars() {
        let ok = headers_from_json(&serde_json::json!({"a": "x", "n": 3, "b": true})).unwrap();
        assert_eq!(
            ok,
            vec![
                ("a".to_owned(), "x".to_owned()),
                ("b".to_owned(), "true".to_owned()),
                ("n".to_owned(), "3".to_owned())
            ]
        );
        assert!(headers_from_json(&serde_json::json!([1])).is_err());
        assert!(headers_from_json(&serde_json::json!({"a": null})).is_err());
        assert!(headers_from_json(&serde_json::json!({"a": {"b": 1}})).is_err());
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let three_bytes = "€".repeat(MAX_ERROR_LEN);
        let cut = truncate(&three_bytes);
        assert!(cut.is_char_boundary(cut.len() - 3));
        assert!(cut.len() <= MAX_ERROR_LEN + 3);
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_ERROR_LEN + 3);
        assert!(cut.ends_with("..."));
        assert_eq!(truncate("short"), "short");
    }
}
