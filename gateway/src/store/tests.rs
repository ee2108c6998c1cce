//! Unit tests of the SQLite store: schema, exactly-once results, recovery, idempotency, cancel,
//! pagination and the webhook outbox.

use corral_protocol::{Bytes, Compare, JobId, JobResult, JobSpec, Limits, SourceFile, Verdict};

use std::sync::Arc;

use super::*;

fn limits() -> Limits {
    Limits {
        cpu_time_ms: 1,
        wall_time_ms: 1,
        memory_bytes: 1,
        processes: 1,
        output_bytes: 1,
        file_size_bytes: 1,
    }
}

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    for name in ["a", "b"] {
        store
            .create_tenant(&NewTenant {
                name: name.into(),
                key_hash: format!("hash-{name}"),
                webhook_secret: "s".into(),
                quota: TenantQuota {
                    max_concurrent: 1,
                    rate_per_minute: 1,
                    max_cpu_time_ms: 1,
                    max_memory_bytes: 1,
                    network_allowed: false,
                },
                created_ms: 0,
            })
            .unwrap();
    }
    (dir, store)
}

fn new_job(tenant: &str, key: Option<&str>, callback: Option<&str>) -> NewJob {
    NewJob {
        spec: JobSpec {
            id: JobId::new(),
            tenant: tenant.into(),
            language: "python".into(),
            files: vec![SourceFile {
                name: "main.py".into(),
                content: "print(1)".into(),
            }],
            args: vec![],
            stdin: Bytes::default(),
            limits: limits(),
            compile_limits: limits(),
            tests: vec![],
            compare: Compare::Exact,
            stop_on_first_failure: false,
            network: false,
        },
        version: "3".into(),
        callback_url: callback.map(String::from),
        idempotency_key: key.map(String::from),
        created_ms: 1,
    }
}

fn result(verdict: Verdict) -> JobResult {
    JobResult {
        verdict,
        compile: None,
        runs: vec![],
    }
}

#[test]
fn schema_is_versioned_and_reopening_keeps_everything() {
    let (dir, store) = store();
    let job = new_job("a", None, None);
    store.insert_job(&job).unwrap();
    drop(store);
    let store = SqliteStore::open(dir.path()).unwrap();
    let version: i64 = store
        .conn()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, super::sqlite::MIGRATIONS.len() as i64);
    assert_eq!(
        store.get_job("a", job.spec.id).unwrap().unwrap().spec,
        job.spec
    );
    assert!(matches!(
        store.create_tenant(&NewTenant {
            name: "a".into(),
            key_hash: "other".into(),
            webhook_secret: "s".into(),
            quota: store.list_tenants().unwrap()[0].quota,
            created_ms: 0,
        }),
        Err(StoreError::TenantExists(_))
    ));
}

#[test]
fn a_result_is_recorded_exactly_once_per_attempt() {
    let (_dir, store) = store();
    let job = new_job("a", None, None);
    let id = job.spec.id;
    store.insert_job(&job).unwrap();
    let first = store.start_job(id, 5).unwrap().unwrap();
    assert_eq!(first.attempt, 1);
    assert!(store.start_job(id, 5).unwrap().is_none(), "started twice");
    // The node is lost: back to the queue, and started again.
    assert!(store.requeue_job(id, 1).unwrap());
    let second = store.start_job(id, 6).unwrap().unwrap();
    assert_eq!(second.attempt, 2);
    assert!(!store.requeue_job(id, 1).unwrap(), "stale requeue");
    assert_eq!(
        store
            .finish_job(id, 1, &result(Verdict::WrongAnswer), false, 7)
            .unwrap(),
        FinishOutcome::Stale
    );
    assert_eq!(
        store
            .finish_job(id, 2, &result(Verdict::Accepted), false, 7)
            .unwrap(),
        FinishOutcome::Recorded {
            webhook_queued: false
        },
        "no callback URL: no webhook"
    );
    assert_eq!(
        store
            .finish_job(id, 2, &result(Verdict::RuntimeError), false, 8)
            .unwrap(),
        FinishOutcome::Stale
    );
    assert!(store.due_webhooks(i64::MAX, 10).unwrap().is_empty());
    let record = store.get_job("a", id).unwrap().unwrap();
    assert_eq!(record.state, JobState::Done);
    assert_eq!(record.result.unwrap().verdict, Verdict::Accepted);
    assert_eq!(record.finished_ms, Some(7));
}

#[test]
fn start_up_recovery_requeues_running_jobs_in_order() {
    let (_dir, store) = store();
    let jobs: Vec<NewJob> = (0..3).map(|_| new_job("a", None, None)).collect();
    for j in &jobs {
        store.insert_job(j).unwrap();
    }
    store.start_job(jobs[1].spec.id, 1).unwrap().unwrap();
    assert_eq!(store.requeue_all_running().unwrap(), 1);
    let queued: Vec<JobId> = store
        .queued_jobs()
        .unwrap()
        .into_iter()
        .map(|q| q.0)
        .collect();
    assert_eq!(queued, jobs.iter().map(|j| j.spec.id).collect::<Vec<_>>());
}

#[test]
fn idempotency_keys_are_per_tenant() {
    let (_dir, store) = store();
    let first = new_job("a", Some("k"), None);
    assert!(matches!(
        store.insert_job(&first).unwrap(),
        InsertOutcome::Inserted
    ));
    match store.insert_job(&new_job("a", Some("k"), None)).unwrap() {
        InsertOutcome::Existing(j) => assert_eq!(j.spec.id, first.spec.id),
        InsertOutcome::Inserted => panic!("inserted twice"),
    }
    assert!(matches!(
        store.insert_job(&new_job("b", Some("k"), None)).unwrap(),
        InsertOutcome::Inserted
    ));
}

#[test]
fn cancel_outcomes_and_tenant_isolation() {
    let (_dir, store) = store();
    let queued = new_job("a", None, None);
    let running = new_job("a", None, None);
    store.insert_job(&queued).unwrap();
    store.insert_job(&running).unwrap();
    store.start_job(running.spec.id, 1).unwrap();
    let (q, r) = (queued.spec.id, running.spec.id);
    assert_eq!(
        store.cancel_job("b", q, 2).unwrap(),
        CancelOutcome::NotFound
    );
    assert!(store.get_job("b", q).unwrap().is_none());
    assert_eq!(
        store.cancel_job("a", q, 2).unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        store.cancel_job("a", q, 2).unwrap(),
        CancelOutcome::Finished
    );
    assert!(
        store.start_job(q, 3).unwrap().is_none(),
        "a cancelled job started"
    );
    assert_eq!(store.cancel_job("a", r, 2).unwrap(), CancelOutcome::Running);
}

#[test]
fn listing_is_newest_first_with_a_cursor() {
    let (_dir, store) = store();
    let ids: Vec<JobId> = (0..5)
        .map(|_| {
            let j = new_job("a", None, None);
            store.insert_job(&j).unwrap();
            j.spec.id
        })
        .collect();
    store.insert_job(&new_job("b", None, None)).unwrap();
    let page = store.list_jobs("a", None, 3).unwrap();
    let got: Vec<JobId> = page.iter().map(|j| j.spec.id).collect();
    assert_eq!(got, [ids[4], ids[3], ids[2]]);
    let rest = store.list_jobs("a", Some(ids[2]), 3).unwrap();
    let got: Vec<JobId> = rest.iter().map(|j| j.spec.id).collect();
    assert_eq!(got, [ids[1], ids[0]]);
}

#[test]
fn the_webhook_is_queued_with_the_result_and_retried() {
    let (_dir, store) = store();
    let job = new_job("a", None, Some("http://127.0.0.1:9/x"));
    let id = job.spec.id;
    store.insert_job(&job).unwrap();
    assert!(store.due_webhooks(i64::MAX, 10).unwrap().is_empty());
    store.start_job(id, 1).unwrap();
    assert_eq!(
        store
            .finish_job(id, 1, &result(Verdict::Accepted), false, 100)
            .unwrap(),
        FinishOutcome::Recorded {
            webhook_queued: true
        }
    );
    let due = store.due_webhooks(100, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].job, due[0].attempts), (id, 0));
    store.webhook_retry(id, 1, 200).unwrap();
    assert!(store.due_webhooks(150, 10).unwrap().is_empty());
    assert_eq!(store.next_webhook_due().unwrap(), Some(200));
    store.webhook_finished(id, false).unwrap();
    assert!(store.due_webhooks(i64::MAX, 10).unwrap().is_empty());
    assert_eq!(store.next_webhook_due().unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_db_call_waits_out_another_process_lock_off_the_async_threads() {
    let (dir, store) = store();
    let store: Arc<dyn Store> = Arc::new(store);
    let db = Db::new(Arc::clone(&store));
    // Another process writing: a second connection holding the write lock.
    let other = rusqlite::Connection::open(dir.path().join("corral.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let job = new_job("a", None, None);
    let id = job.spec.id;
    let direct = store.insert_job(&job);
    assert!(
        direct.as_ref().is_err_and(StoreError::is_busy),
        "a store used from async threads fails at once when locked: {direct:?}"
    );
    let call = tokio::spawn({
        let db = db.clone();
        async move { db.call(move |s| s.insert_job(&job)).await }
    });
    tokio::task::yield_now().await;
    other.execute_batch("COMMIT").unwrap();
    assert!(matches!(call.await.unwrap(), Ok(InsertOutcome::Inserted)));
    assert_eq!(
        store.get_job("a", id).unwrap().unwrap().state,
        JobState::Queued
    );
}

#[test]
fn checkpoints_copy_the_wal_into_the_database() {
    let (dir, store) = store();
    store.never_wait();
    for _ in 0..20 {
        store.insert_job(&new_job("a", None, None)).unwrap();
    }
    let wal = dir.path().join("corral.db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    store.checkpoint().unwrap();
    // Everything is in the database file now: a fresh connection reads it without the WAL.
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("corral.db"), copy.path().join("corral.db")).unwrap();
    let copied = SqliteStore::open(copy.path()).unwrap();
    assert_eq!(copied.list_jobs("a", None, 100).unwrap().len(), 20);
}
