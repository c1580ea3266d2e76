//! `POST /v1/batches/register`: the request, its validation, and the one transaction that
//! writes the batch, its slots and `BatchEssaysRegistered`.

use chrono::Utc;
use outbox::{Outbox, OutboxTransaction};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::db::batch_status;
use crate::events::{BATCH_ESSAYS_REGISTERED_TOPIC, Route, outbox_event};
use crate::pipeline::PipelineState;

/// The course codes of `CC/domain_enums.py:76-84`.
pub const COURSE_CODES: [&str; 6] = ["ENG5", "ENG6", "ENG7", "SV1", "SV2", "SV3"];

/// Longest essay id (`essay_slots.essay_id` and `batch_essays.essay_id` are varchar(36)).
pub const MAX_ESSAY_ID_CHARS: usize = 36;
/// Longest `user_id` (the batch's name, `"{course_code} - {user_id}"`, is varchar(255)).
pub const MAX_USER_ID_CHARS: usize = 240;
/// Longest `org_id`, `class_id` and `cj_default_llm_model`.
pub const MAX_TEXT_CHARS: usize = 255;
/// Longest `assignment_id` (`CC/api_models/batch_registration.py`).
pub const MAX_ASSIGNMENT_ID_CHARS: usize = 100;

/// `BatchRegistrationRequestV1`, validated. Serialised as the Python model's `model_dump()`
/// into `batches.processing_metadata`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegistrationRequest {
    /// Essays to expect.
    pub expected_essay_count: u32,
    /// The caller's essay ids, when given (one per expected essay, distinct).
    pub essay_ids: Option<Vec<String>>,
    /// One of [`COURSE_CODES`].
    pub course_code: String,
    /// `{"references": {"student_prompt_text": {"storage_id", "path"}}}`.
    pub student_prompt_ref: Option<Value>,
    /// The teacher.
    pub user_id: String,
    /// The organisation.
    pub org_id: Option<String>,
    /// The class: set means a REGULAR batch, null a GUEST one.
    pub class_id: Option<String>,
    /// The default LLM of comparative judgement.
    pub cj_default_llm_model: Option<String>,
    /// Its temperature, 0.0 to 2.0.
    pub cj_default_temperature: Option<f64>,
    /// The assignment.
    pub assignment_id: Option<String>,
}

/// One validation problem: where (`["essay_ids", 3]`) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The path of the field.
    pub loc: Vec<Value>,
    /// What is wrong.
    pub msg: String,
}

impl FieldError {
    fn new(field: &str, msg: impl Into<String>) -> Self {
        Self {
            loc: vec![Value::from(field)],
            msg: msg.into(),
        }
    }
}

/// Why a body is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Empty, `{}`, not JSON, or not an object.
    NotJson(String),
    /// Fields that break the contract's rules.
    Fields(Vec<FieldError>),
}

fn optional_string(
    body: &Map<String, Value>,
    field: &str,
    max: usize,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match body.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= max => Some(s.clone()),
        Some(Value::String(_)) => {
            errors.push(FieldError::new(field, format!("at most {max} characters")));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(field, "expected a string or null"));
            None
        }
    }
}

fn prompt_ref_is_valid(value: &Value) -> bool {
    let Some(references) = value.get("references").and_then(Value::as_object) else {
        return false;
    };
    value.as_object().is_some_and(|o| o.len() <= 8)
        && references.len() <= 8
        && references.values().all(|reference| {
            reference.as_object().is_some_and(|fields| {
                fields.len() <= 8
                    && fields
                        .values()
                        .all(|v| v.as_str().is_some_and(|s| s.len() <= 1024))
            })
        })
}

/// Validates a registration body: every rule of the contract, every problem reported at once.
pub fn validate(bytes: &[u8], max_essays: u32) -> Result<RegistrationRequest, Invalid> {
    let body: Value = serde_json::from_slice(bytes)
        .map_err(|e| Invalid::NotJson(format!("Request body must be valid JSON: {e}")))?;
    let Value::Object(body) = body else {
        return Err(Invalid::NotJson(
            "Request body must be a JSON object".into(),
        ));
    };
    if body.is_empty() {
        return Err(Invalid::NotJson("Request body must be valid JSON".into()));
    }
    let mut errors = Vec::new();

    let count = match body.get("expected_essay_count") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("expected_essay_count", "Field required"));
            None
        }
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(0), _) | (None, Some(_)) => {
                errors.push(FieldError::new(
                    "expected_essay_count",
                    "Input should be greater than 0",
                ));
                None
            }
            (Some(n), _) if n > u64::from(max_essays) => {
                errors.push(FieldError::new(
                    "expected_essay_count",
                    format!("at most {max_essays} essays (BATCH_ORCHESTRATOR_SERVICE_MAX_ESSAYS)"),
                ));
                None
            }
            (Some(n), _) => u32::try_from(n).ok(),
            (None, None) => {
                errors.push(FieldError::new(
                    "expected_essay_count",
                    "Input should be a valid integer",
                ));
                None
            }
        },
    };

    let essay_ids = match body.get("essay_ids") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut ids = Vec::with_capacity(items.len());
            let mut seen = std::collections::HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let loc = vec![Value::from("essay_ids"), Value::from(i)];
                match item.as_str() {
                    Some(s) if !s.trim().is_empty() && s.chars().count() <= MAX_ESSAY_ID_CHARS => {
                        if !seen.insert(s) {
                            errors.push(FieldError {
                                loc,
                                msg: "essay ids must be distinct".into(),
                            });
                        }
                        ids.push(s.to_owned());
                    }
                    _ => errors.push(FieldError {
                        loc,
                        msg: format!(
                            "expected a non-empty string of at most {MAX_ESSAY_ID_CHARS} characters"
                        ),
                    }),
                }
            }
            if items.is_empty() {
                errors.push(FieldError::new("essay_ids", "at least 1 item"));
            } else if let Some(count) = count
                && items.len() != count as usize
            {
                errors.push(FieldError::new(
                    "essay_ids",
                    format!(
                        "has {} items but expected_essay_count is {count}",
                        items.len()
                    ),
                ));
            }
            Some(ids)
        }
        Some(_) => {
            errors.push(FieldError::new("essay_ids", "expected a list or null"));
            None
        }
    };

    let course_code = match body.get("course_code").and_then(Value::as_str) {
        Some(c) if COURSE_CODES.contains(&c) => Some(c.to_owned()),
        Some(_) => {
            errors.push(FieldError::new(
                "course_code",
                format!("Input should be one of {}", COURSE_CODES.join(", ")),
            ));
            None
        }
        None => {
            errors.push(FieldError::new(
                "course_code",
                if body.contains_key("course_code") {
                    "expected a string"
                } else {
                    "Field required"
                },
            ));
            None
        }
    };

    let student_prompt_ref = match body.get("student_prompt_ref") {
        None | Some(Value::Null) => None,
        Some(v) if prompt_ref_is_valid(v) => Some(v.clone()),
        Some(_) => {
            errors.push(FieldError::new(
                "student_prompt_ref",
                "expected {\"references\": {\"<content type>\": {\"storage_id\": str, \"path\": str}}} or null",
            ));
            None
        }
    };

    let user_id = match body.get("user_id") {
        Some(Value::String(s))
            if !s.trim().is_empty() && s.chars().count() <= MAX_USER_ID_CHARS =>
        {
            Some(s.clone())
        }
        Some(Value::String(_)) => {
            errors.push(FieldError::new(
                "user_id",
                format!("expected a non-empty string of at most {MAX_USER_ID_CHARS} characters"),
            ));
            None
        }
        Some(_) => {
            errors.push(FieldError::new("user_id", "expected a string"));
            None
        }
        None => {
            errors.push(FieldError::new("user_id", "Field required"));
            None
        }
    };
    let org_id = optional_string(&body, "org_id", MAX_TEXT_CHARS, &mut errors);
    let class_id = optional_string(&body, "class_id", MAX_TEXT_CHARS, &mut errors);
    let cj_default_llm_model =
        optional_string(&body, "cj_default_llm_model", MAX_TEXT_CHARS, &mut errors);
    let assignment_id =
        optional_string(&body, "assignment_id", MAX_ASSIGNMENT_ID_CHARS, &mut errors);
    let cj_default_temperature = match body.get("cj_default_temperature") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..=2.0).contains(&t) => Some(t),
            _ => {
                errors.push(FieldError::new(
                    "cj_default_temperature",
                    "expected a number from 0.0 to 2.0",
                ));
                None
            }
        },
    };

    match (count, course_code, user_id) {
        (Some(expected_essay_count), Some(course_code), Some(user_id)) if errors.is_empty() => {
            Ok(RegistrationRequest {
                expected_essay_count,
                essay_ids,
                course_code,
                student_prompt_ref,
                user_id,
                org_id,
                class_id,
                cj_default_llm_model,
                cj_default_temperature,
                assignment_id,
            })
        }
        _ => Err(Invalid::Fields(errors)),
    }
}

/// A registered batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The new batch's id.
    pub batch_id: String,
    /// Its essay ids, in slot order.
    pub essay_ids: Vec<String>,
}

/// Writes the batch row, its slots and `BatchEssaysRegistered` in one transaction and commits
/// it: all of them, or (on any error) none.
pub async fn register(
    outbox: &Outbox,
    topic_prefix: &str,
    request: &RegistrationRequest,
    correlation_id: Uuid,
) -> Result<Registered, outbox::Error> {
    let txn = outbox.begin().await?;
    let registered = write(&txn, topic_prefix, request, correlation_id).await?;
    txn.commit().await?;
    Ok(registered)
}

async fn write(
    txn: &OutboxTransaction,
    topic_prefix: &str,
    request: &RegistrationRequest,
    correlation_id: Uuid,
) -> Result<Registered, outbox::Error> {
    let now = Utc::now();
    let batch_id = Uuid::new_v4().to_string();
    let essay_ids = request.essay_ids.clone().unwrap_or_else(|| {
        (0..request.expected_essay_count)
            .map(|_| Uuid::new_v4().to_string())
            .collect()
    });
    let pipeline = PipelineState::at_registration(&batch_id, now).to_json();
    let metadata = serde_json::to_string(request).map_err(outbox_core::OutboxError::from)?;
    txn.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO batches (id, correlation_id, name, class_id, status, pipeline_configuration,
                              total_essays, version, processing_metadata)
         VALUES ($1, $2, $3, $4, $5, $6::json, $7, 2, $8::json)",
        [
            batch_id.clone().into(),
            correlation_id.to_string().into(),
            format!("{} - {}", request.course_code, request.user_id).into(),
            request.class_id.clone().into(),
            batch_status::AWAITING_CONTENT_VALIDATION.into(),
            pipeline.to_string().into(),
            (request.expected_essay_count as i32).into(),
            metadata.into(),
        ],
    ))
    .await?;
    let ids_json = serde_json::to_string(&essay_ids).map_err(outbox_core::OutboxError::from)?;
    txn.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO essay_slots (batch_id, essay_id)
         SELECT $1, value FROM json_array_elements_text($2::json)",
        [batch_id.clone().into(), ids_json.into()],
    ))
    .await?;
    let data = json!({
        "event": "batch.essays.registered",
        "entity_id": batch_id,
        "expected_essay_count": request.expected_essay_count,
        "essay_ids": essay_ids,
        "metadata": {
            "entity_id": batch_id,
            "entity_type": "batch",
            "parent_id": null,
            "timestamp": crate::events::timestamp(now),
            "processing_stage": null,
            "started_at": null,
            "completed_at": null,
            "event": "batch.essays.registered",
            "error_info": {},
        },
        "course_code": request.course_code,
        "student_prompt_ref": request.student_prompt_ref,
        "user_id": request.user_id,
        "org_id": request.org_id,
        "class_id": request.class_id,
    });
    let event = outbox_event(
        Route {
            topic: BATCH_ESSAYS_REGISTERED_TOPIC,
            prefix: topic_prefix,
            aggregate_type: "batch",
            aggregate_id: &batch_id,
        },
        correlation_id,
        now,
        data,
        None,
    )?;
    txn.add(event).await?;
    Ok(Registered {
        batch_id,
        essay_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Value {
        json!({"expected_essay_count": 2, "course_code": "ENG5", "user_id": "t1"})
    }

    fn fields(body: Value) -> Vec<FieldError> {
        match validate(body.to_string().as_bytes(), 1000) {
            Err(Invalid::Fields(errors)) => errors,
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn a_minimal_body_is_valid_and_unknown_fields_are_ignored() {
        let mut body = valid();
        body["whatever"] = json!(1);
        let request = validate(body.to_string().as_bytes(), 1000).unwrap();
        assert_eq!(request.expected_essay_count, 2);
        assert_eq!(request.essay_ids, None);
        assert_eq!(request.class_id, None);
    }

    #[test]
    fn empty_and_malformed_bodies_are_not_json() {
        for body in [&b""[..], b"{}", b"{", b"[1]", b"null"] {
            assert!(
                matches!(validate(body, 1000), Err(Invalid::NotJson(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn every_rule_is_checked() {
        let cases = [
            (json!({"expected_essay_count": 0}), "expected_essay_count"),
            (json!({"expected_essay_count": -3}), "expected_essay_count"),
            (json!({"expected_essay_count": 1.5}), "expected_essay_count"),
            (
                json!({"expected_essay_count": 1001}),
                "expected_essay_count",
            ),
            (
                json!({"expected_essay_count": null}),
                "expected_essay_count",
            ),
            (json!({"essay_ids": []}), "essay_ids"),
            (json!({"essay_ids": ["a"]}), "essay_ids"),
            (json!({"essay_ids": ["a", "a"]}), "essay_ids"),
            (json!({"essay_ids": ["a", 1]}), "essay_ids"),
            (json!({"essay_ids": "a,b"}), "essay_ids"),
            (json!({"course_code": "ENG9"}), "course_code"),
            (json!({"user_id": 7}), "user_id"),
            (json!({"user_id": ""}), "user_id"),
            (json!({"org_id": 7}), "org_id"),
            (json!({"class_id": ["c"]}), "class_id"),
            (
                json!({"cj_default_temperature": 2.5}),
                "cj_default_temperature",
            ),
            (
                json!({"cj_default_temperature": "hot"}),
                "cj_default_temperature",
            ),
            (json!({"assignment_id": "a".repeat(101)}), "assignment_id"),
            (
                json!({"student_prompt_ref": {"storage_id": "x"}}),
                "student_prompt_ref",
            ),
        ];
        for (patch, field) in cases {
            let mut body = valid();
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            let errors = fields(body.clone());
            assert!(
                errors.iter().any(|e| e.loc[0] == field),
                "{body}: {errors:?}"
            );
        }
        for missing in ["expected_essay_count", "course_code", "user_id"] {
            let mut body = valid();
            body.as_object_mut().unwrap().remove(missing);
            let errors = fields(body);
            assert_eq!(errors[0].loc[0], missing);
            assert_eq!(errors[0].msg, "Field required");
        }
    }

    #[test]
    fn client_essay_ids_and_a_prompt_reference_are_kept() {
        let mut body = valid();
        body["essay_ids"] = json!(["e1", "e2"]);
        body["student_prompt_ref"] =
            json!({"references": {"student_prompt_text": {"storage_id": "s", "path": "p"}}});
        body["cj_default_temperature"] = json!(0);
        let request = validate(body.to_string().as_bytes(), 1000).unwrap();
        assert_eq!(request.essay_ids, Some(vec!["e1".into(), "e2".into()]));
        assert!(request.student_prompt_ref.is_some());
        assert_eq!(request.cj_default_temperature, Some(0.0));
    }
}
