//! `ProcessingPipelineState` (`CC/pipeline_models.py`): the per-phase state stored in
//! `batches.pipeline_configuration` and served by `GET .../pipeline-state`.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

/// A phase's status (the ten `PipelineExecutionStatus` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PhaseStatus {
    /// Asked for by the user.
    #[default]
    RequestedByUser,
    /// Waiting for earlier phases.
    PendingDependencies,
    /// Sent to the phase's service.
    DispatchInitiated,
    /// Running.
    InProgress,
    /// Done, every essay succeeded.
    CompletedSuccessfully,
    /// Done, some essays failed.
    CompletedWithPartialSuccess,
    /// Failed.
    Failed,
    /// Skipped because an earlier phase failed.
    SkippedDueToDependencyFailure,
    /// Not asked for.
    SkippedByUserConfig,
    /// Cancelled.
    Cancelled,
}

/// Essay counts of one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct EssayCounts {
    /// Essays in the phase.
    pub total: i64,
    /// Dispatched or running.
    pub pending_dispatch_or_processing: i64,
    /// Succeeded.
    pub successful: i64,
    /// Failed.
    pub failed: i64,
}

/// One phase's state (`PipelineStateDetail`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PhaseDetail {
    /// Its status.
    pub status: PhaseStatus,
    /// Its essay counts.
    pub essay_counts: EssayCounts,
    /// When it started.
    pub started_at: Option<String>,
    /// When it ended.
    pub completed_at: Option<String>,
    /// Why it failed.
    pub error_info: Option<serde_json::Map<String, serde_json::Value>>,
    /// How far it is.
    pub progress_percentage: Option<f64>,
}

impl PhaseDetail {
    fn with_status(status: PhaseStatus) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }
}

/// The whole batch's pipeline state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineState {
    /// The batch.
    pub batch_id: String,
    /// The pipelines the user asked for.
    pub requested_pipelines: Vec<String>,
    /// Spellcheck.
    #[serde(default = "some_default")]
    pub spellcheck: Option<PhaseDetail>,
    /// NLP.
    #[serde(default = "some_default")]
    pub nlp: Option<PhaseDetail>,
    /// AI feedback.
    #[serde(default = "some_default")]
    pub ai_feedback: Option<PhaseDetail>,
    /// Comparative judgement.
    #[serde(default = "some_default")]
    pub cj_assessment: Option<PhaseDetail>,
    /// When it was last saved (RFC 3339, UTC, microseconds).
    pub last_updated: DateTime<Utc>,
}

fn some_default() -> Option<PhaseDetail> {
    Some(PhaseDetail::default())
}

impl PipelineState {
    /// The state registration writes: spellcheck requested and waiting for content, the other
    /// three phases skipped (`batch_processing_service_impl.py:70-121`).
    pub fn at_registration(batch_id: &str, now: DateTime<Utc>) -> Self {
        Self {
            batch_id: batch_id.to_owned(),
            requested_pipelines: vec!["spellcheck".to_owned()],
            spellcheck: Some(PhaseDetail::with_status(PhaseStatus::PendingDependencies)),
            nlp: Some(PhaseDetail::with_status(PhaseStatus::SkippedByUserConfig)),
            ai_feedback: Some(PhaseDetail::with_status(PhaseStatus::SkippedByUserConfig)),
            cj_assessment: Some(PhaseDetail::with_status(PhaseStatus::SkippedByUserConfig)),
            last_updated: now.trunc_subsecs(6),
        }
    }

    /// The state as JSON, timestamps as Python's `model_dump(mode="json")` writes them.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "last_updated".into(),
                crate::events::timestamp(self.last_updated).into(),
            );
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_state_has_the_contract_shape() {
        let state = PipelineState::at_registration("B", Utc::now());
        let json = state.to_json();
        assert_eq!(json["batch_id"], "B");
        assert_eq!(
            json["requested_pipelines"],
            serde_json::json!(["spellcheck"])
        );
        assert_eq!(json["spellcheck"]["status"], "pending_dependencies");
        for phase in ["nlp", "ai_feedback", "cj_assessment"] {
            assert_eq!(json[phase]["status"], "skipped_by_user_config");
        }
        assert_eq!(
            json["spellcheck"]["essay_counts"],
            serde_json::json!({"total": 0, "pending_dispatch_or_processing": 0, "successful": 0, "failed": 0})
        );
        for field in [
            "started_at",
            "completed_at",
            "error_info",
            "progress_percentage",
        ] {
            assert!(json["nlp"].get(field).unwrap().is_null(), "{field}");
        }
        assert!(json["last_updated"].as_str().unwrap().ends_with('Z'));
        let back: PipelineState = serde_json::from_value(json).unwrap();
        assert_eq!(back, state);
    }

    #[test]
    fn missing_phases_take_defaults_and_bad_statuses_do_not_parse() {
        let parsed: PipelineState = serde_json::from_value(serde_json::json!({
            "batch_id": "B", "requested_pipelines": [], "last_updated": "2026-01-01T10:00:00Z",
            "spellcheck": {"status": "in_progress"}
        }))
        .unwrap();
        assert_eq!(parsed.spellcheck.unwrap().status, PhaseStatus::InProgress);
        assert_eq!(parsed.nlp.unwrap().status, PhaseStatus::RequestedByUser);
        assert!(
            serde_json::from_value::<PipelineState>(serde_json::json!({
                "batch_id": "B", "requested_pipelines": [], "last_updated": "2026-01-01T10:00:00Z",
                "spellcheck": {"status": "locked"}
            }))
            .is_err()
        );
    }
}
