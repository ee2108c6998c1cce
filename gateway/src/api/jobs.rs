//! `/v1/jobs`: submit, read, list and cancel jobs.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use corral_protocol::JobId;
use serde::Deserialize;

use super::auth::Caller;
use super::document::{JobDocument, JobSummary};
use super::request::{validate, JobRequest};
use super::AppState;
use crate::dispatch::Command;
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::hub::{FinalWait, Update};
use crate::store::{now_ms, CancelOutcome, InsertOutcome, JobRecord, JobState, NewJob, Tenant};

/// Query of `POST /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitQuery {
    /// Answer when the job is done.
    #[serde(default)]
    wait: bool,
    /// Longest wait, in seconds.
    timeout: Option<f64>,
}

/// `POST /v1/jobs`.
pub async fn create(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    ApiQuery(query): ApiQuery<SubmitQuery>,
    ApiJson(req): ApiJson<JobRequest>,
) -> Result<Response, ApiError> {
    let wait = wait_time(&query, &state)?;
    let languages = state.dispatcher.languages();
    let valid = validate(req, &tenant, &languages, &state.config)?;
    let job = NewJob {
        spec: valid.spec,
        version: valid.version,
        callback_url: valid.callback_url,
        idempotency_key: valid.idempotency_key,
        created_ms: now_ms(),
    };
    let job = Arc::new(job);
    let insert = Arc::clone(&job);
    let outcome = state.db.call(move |s| s.insert_job(&insert)).await?;
    // The call's closure is gone: this is the only reference left.
    let job = Arc::try_unwrap(job).unwrap_or_else(|job| (*job).clone());
    let record = match outcome {
        InsertOutcome::Existing(existing) => match wait {
            Some(timeout) => wait_for(&state, &tenant.name, existing.spec.id, timeout).await?,
            None => *existing,
        },
        InsertOutcome::Inserted => queue(&state, &tenant, job, wait).await?,
    };
    let status = if record.state.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let location = format!("/v1/jobs/{}", record.spec.id);
    Ok((
        status,
        [(header::LOCATION, location)],
        Json(JobDocument::from(&record)),
    )
        .into_response())
}

/// Hands a job just inserted to the dispatcher; the job as stored, once final when `wait`.
async fn queue(
    state: &AppState,
    tenant: &Tenant,
    job: NewJob,
    wait: Option<Duration>,
) -> Result<JobRecord, ApiError> {
    let id = job.spec.id;
    state
        .metrics
        .jobs_submitted
        .with_label_values(&[&tenant.name, &job.spec.language])
        .inc();
    // Listening before the dispatcher hears of the job: no update can be missed.
    let sub = wait.map(|timeout| (state.hub.wait_final(id), timeout));
    let queued = state.dispatcher.send(Command::Queued {
        id,
        tenant: tenant.name.clone(),
        max_concurrent: tenant.quota.max_concurrent,
    });
    if !queued {
        // Stored and durable: it runs after a restart.
        tracing::error!(job = %id, "dispatcher stopped; job stays queued");
    }
    let record = queued_record(job);
    match sub {
        Some((sub, timeout)) => follow(state, &tenant.name, sub, record, timeout).await,
        None => Ok(record),
    }
}

fn wait_time(query: &SubmitQuery, state: &AppState) -> Result<Option<Duration>, ApiError> {
    if !query.wait {
        return Ok(None);
    }
    let max = state.config.max_wait;
    let Some(secs) = query.timeout else {
        return Ok(Some(state.config.default_wait));
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= max.as_secs_f64()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!(
                "timeout must be more than 0 and at most {} seconds",
                max.as_secs()
            ),
        ));
    }
    Ok(Some(Duration::from_secs_f64(secs)))
}

/// A job just inserted, as the store holds it.
fn queued_record(job: NewJob) -> JobRecord {
    JobRecord {
        spec: job.spec,
        version: job.version,
        state: JobState::Queued,
        result: None,
        callback_url: job.callback_url,
        attempts: 0,
        created_ms: job.created_ms,
        started_ms: None,
        finished_ms: None,
    }
}

/// Waits until the job reaches a final state or `timeout` passes; the job as it is then.
async fn wait_for(
    state: &AppState,
    tenant: &str,
    id: JobId,
    timeout: Duration,
) -> Result<JobRecord, ApiError> {
    let sub = state.hub.wait_final(id);
    let record = load(state, tenant, id).await?;
    if record.state.is_final() {
        return Ok(record);
    }
    follow(state, tenant, sub, record, timeout).await
}

/// Waits on `sub` for the job's final update or `timeout`. `record` is the job as stored when
/// `sub` began: with the recorded result the dispatcher publishes, it is the stored job; any
/// other way out (a cancel, a lost node, the timeout) reads the job back.
async fn follow(
    state: &AppState,
    tenant: &str,
    mut sub: FinalWait,
    record: JobRecord,
    timeout: Duration,
) -> Result<JobRecord, ApiError> {
    if let Ok(Some(Update::Finished(finished))) = tokio::time::timeout(timeout, sub.recv()).await {
        return Ok(finished.apply(record));
    }
    drop(sub);
    load(state, tenant, record.spec.id).await
}

async fn load(state: &AppState, tenant: &str, id: JobId) -> Result<JobRecord, ApiError> {
    let tenant = tenant.to_string();
    state
        .db
        .call(move |s| s.get_job(&tenant, id))
        .await?
        .ok_or_else(|| ApiError::not_found("job"))
}

/// A job id from the path; anything unparsable is simply not found.
pub fn parse_id(text: &str) -> Result<JobId, ApiError> {
    text.parse().map_err(|_| ApiError::not_found("job"))
}

/// `GET /v1/jobs/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Json<JobDocument>, ApiError> {
    let id = parse_id(&id)?;
    let record = load(&state, &tenant.name, id).await?;
    Ok(Json(JobDocument::from(&record)))
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size.
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/jobs`: newest first.
pub async fn list(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let max = state.config.max_page;
    let limit = query.limit.unwrap_or(max.min(20));
    if limit == 0 || limit > max {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be 1 to {max}"),
        ));
    }
    let before = match query.cursor {
        Some(c) => Some(c.parse::<JobId>().map_err(|_| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", "invalid cursor")
        })?),
        None => None,
    };
    let name = tenant.name.clone();
    let jobs = state
        .db
        .call(move |s| s.list_jobs(&name, before, limit))
        .await?;
    let next = (jobs.len() == limit as usize)
        .then(|| jobs.last().map(|j| j.spec.id.to_string()))
        .flatten();
    let jobs: Vec<JobSummary> = jobs.iter().map(JobSummary::from).collect();
    Ok(Json(
        serde_json::json!({ "jobs": jobs, "next_cursor": next }),
    ))
}

/// `DELETE /v1/jobs/{id}`: a queued job never runs; a running one is stopped.
pub async fn cancel(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let name = tenant.name.clone();
    let outcome = state
        .db
        .call(move |s| s.cancel_job(&name, id, now_ms()))
        .await?;
    let status = match outcome {
        CancelOutcome::NotFound => return Err(ApiError::not_found("job")),
        CancelOutcome::Finished => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "job_finished",
                "the job has already finished",
            ))
        }
        CancelOutcome::Cancelled => {
            state.hub.publish(id, Update::State(JobState::Cancelled));
            StatusCode::OK
        }
        CancelOutcome::Running => {
            state.dispatcher.send(Command::Cancel(id));
            StatusCode::ACCEPTED
        }
    };
    let record = load(&state, &tenant.name, id).await?;
    Ok((status, Json(JobDocument::from(&record))).into_response())
}
