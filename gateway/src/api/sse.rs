//! `GET /v1/jobs/{id}/events`: Server-Sent Events of one job.
//!
//! Event names: `state` (`{"state": ...}`, always first: the state at subscription), `started`,
//! `compile_started`, `compile_finished` and `run_finished` (`{"index", "result"}`),
//! `run_started` (`{"index"}`), `output` (`{"index", "stream", "data", "encoding"}`), `lagged`
//! (`{"missed": n}` when the client reads too slowly), and finally `job` with the job document,
//! after which the stream ends.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use corral_protocol::{JobEvent, JobId};
use futures::stream::{self, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::auth::Caller;
use super::document::{text, JobDocument, RunDocument};
use super::jobs::parse_id;
use super::AppState;
use crate::error::ApiError;
use crate::hub::{Subscription, Update};
use crate::store::{JobRecord, JobState};

/// `GET /v1/jobs/{id}/events`.
pub async fn events(
    State(state): State<AppState>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let sub = state.hub.subscribe(id);
    let record = load(&state, tenant.name.clone(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    let mut first = vec![state_event(record.state)];
    let follow = if record.state.is_final() {
        first.push(job_event(&record));
        None
    } else {
        Some(Follow {
            sub,
            state,
            tenant: tenant.name,
            id,
        })
    };
    let rest = stream::unfold(follow, next_events).flat_map(stream::iter);
    let stream = stream::iter(first).chain(rest).map(Ok::<Event, Infallible>);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// What a live stream needs to go on.
struct Follow {
    sub: Subscription,
    state: AppState,
    tenant: String,
    id: JobId,
}

async fn load(state: &AppState, tenant: String, id: JobId) -> Result<Option<JobRecord>, ApiError> {
    Ok(state.db.call(move |s| s.get_job(&tenant, id)).await?)
}

/// The next batch of events, and whether to go on.
async fn next_events(follow: Option<Follow>) -> Option<(Vec<Event>, Option<Follow>)> {
    let mut f = follow?;
    match f.sub.rx.recv().await {
        Ok(Update::State(s)) if !s.is_final() => Some((vec![state_event(s)], Some(f))),
        Ok(Update::Event(e)) => Some((vec![progress_event(&e)], Some(f))),
        Err(RecvError::Lagged(n)) => Some((
            vec![Event::default()
                .event("lagged")
                .data(json!({ "missed": n }).to_string())],
            Some(f),
        )),
        Ok(Update::State(_) | Update::Finished(_)) | Err(RecvError::Closed) => {
            let record = load(&f.state, f.tenant.clone(), f.id)
                .await
                .ok()
                .flatten()?;
            Some((vec![state_event(record.state), job_event(&record)], None))
        }
    }
}

fn state_event(state: JobState) -> Event {
    Event::default()
        .event("state")
        .data(json!({ "state": state }).to_string())
}

fn job_event(record: &JobRecord) -> Event {
    let doc = JobDocument::from(record);
    Event::default()
        .event("job")
        .data(serde_json::to_string(&doc).unwrap_or_default())
}

fn progress_event(e: &JobEvent) -> Event {
    let (name, data) = match e {
        JobEvent::Started => ("started", json!({})),
        JobEvent::CompileStarted => ("compile_started", json!({})),
        JobEvent::CompileFinished { result } => (
            "compile_finished",
            json!({ "result": RunDocument::from(result) }),
        ),
        JobEvent::RunStarted { index } => ("run_started", json!({ "index": index })),
        JobEvent::Output {
            index,
            stream,
            data,
        } => {
            let (data, encoding) = text(data);
            (
                "output",
                json!({ "index": index, "stream": stream, "data": data, "encoding": encoding }),
            )
        }
        JobEvent::RunFinished { index, result } => (
            "run_finished",
            json!({ "index": index, "result": RunDocument::from(result) }),
        ),
    };
    Event::default().event(name).data(data.to_string())
}
