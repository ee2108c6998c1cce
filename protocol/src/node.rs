//! Worker nodes and the messages between a worker and its coordinator (the gateway/balancer side).
//!
//! A worker sends [`WorkerMessage::Hello`] once, then [`WorkerMessage::Status`] whenever its
//! utilization changes, [`WorkerMessage::Event`]s while jobs run and exactly one
//! [`WorkerMessage::Done`] per assigned job (also for a cancelled one). The coordinator sends
//! [`CoordinatorMessage::Assign`] only while the node reports a free slot, and may
//! [`CoordinatorMessage::Cancel`] an assigned job at any time.

use serde::{Deserialize, Serialize};

use crate::{Bytes, JobId, JobResult, JobSpec, Limits, RunResult, Stream};

/// A worker node's name, unique in a deployment (the host name by default).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

/// A language a node can run, as found by its start-up self-test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanguageInfo {
    /// Language id (e.g. `python`).
    pub id: String,
    /// Display name (e.g. `Python`).
    pub name: String,
    /// Version reported by the toolchain's version probe.
    pub version: String,
    /// Other names accepted for it (e.g. `py`, `python3`).
    pub aliases: Vec<String>,
    /// Name of the main source file (e.g. `main.py`).
    pub source_file: String,
    /// Whether it has a compile step.
    pub compiled: bool,
    /// File extensions without the dot (e.g. `py`), for guessing a file's language.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Default limits of each run (what the gateway fills in when a job gives none).
    pub limits: Limits,
    /// Default limits of the compile step (`None` for interpreted languages).
    pub compile_limits: Option<Limits>,
    /// The image the node runs it on (`host`, `python`, ...); `None` from nodes that do not say.
    #[serde(default)]
    pub image: Option<String>,
}

/// An image by its content: a name (for logs and errors) and the sha256 digests of its layers.
///
/// Digests are `sha256:<64 lowercase hex>` strings; the node checks each one before using it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// The image's name (`python`), as the node reported it for the job's language.
    pub name: String,
    /// The top layer's digest: the image the job runs on.
    pub digest: String,
    /// The whole layer chain, lowest first and ending with `digest`, as far as the coordinator
    /// knows it; empty when it does not (the node then follows the layers' manifests).
    #[serde(default)]
    pub layers: Vec<String>,
}

/// A node's utilization, as used for placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub node: NodeId,
    /// Sandbox slots in all.
    pub slots: u32,
    /// Slots free right now.
    pub free_slots: u32,
    /// CPU utilization over the last interval, 0.0 to 1.0 (all cores).
    pub cpu_utilization: f64,
    /// Memory available to new jobs, in bytes.
    pub memory_available_bytes: u64,
    /// Digests of the image layers present on the node.
    pub images: Vec<String>,
}

/// Progress of a running job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum JobEvent {
    /// The worker started the job.
    Started,
    /// The compile step began.
    CompileStarted,
    /// The compile step ended.
    CompileFinished {
        /// Its result.
        result: RunResult,
    },
    /// Run `index` (a test, or 0 without tests) began.
    RunStarted {
        /// Index of the run.
        index: usize,
    },
    /// A chunk of output, as produced (within the run's output cap).
    Output {
        /// Index of the run (`None` for the compile step).
        index: Option<usize>,
        /// Which stream.
        stream: Stream,
        /// The bytes.
        data: Bytes,
    },
    /// Run `index` ended.
    RunFinished {
        /// Index of the run.
        index: usize,
        /// Its result.
        result: RunResult,
    },
}

/// From a worker to its coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum WorkerMessage {
    /// First message of a connection.
    Hello {
        /// Utilization at start.
        status: NodeStatus,
        /// Languages that passed their self-test.
        languages: Vec<LanguageInfo>,
    },
    /// Utilization changed.
    Status {
        /// The new utilization.
        status: NodeStatus,
    },
    /// Progress of an assigned job.
    Event {
        /// The job.
        job: JobId,
        /// What happened.
        event: JobEvent,
    },
    /// An assigned job ended (exactly once per assignment).
    Done {
        /// The job.
        job: JobId,
        /// Its result; for a cancelled job, what ran before the cancel.
        result: JobResult,
        /// Whether it ended because of a cancel.
        cancelled: bool,
    },
}

/// From a coordinator to a worker.
// One message per job, moved once: boxing the job would only change the API.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum CoordinatorMessage {
    /// Run this job.
    Assign {
        /// The job.
        job: JobSpec,
        /// The exact image to run it on, when the coordinator knows it (absent from older
        /// coordinators, and for languages on a node's built-in image): the node fetches the
        /// layers it lacks before the job runs, and never runs it on another image.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<ImageRef>,
    },
    /// Stop this job if it is still running (its `Done` still follows).
    Cancel {
        /// The job.
        job: JobId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Compare, SourceFile, TestCase};

    fn limits() -> Limits {
        Limits {
            cpu_time_ms: 1000,
            wall_time_ms: 3000,
            memory_bytes: 256 << 20,
            processes: 32,
            output_bytes: 1 << 20,
            file_size_bytes: 1 << 20,
        }
    }

    fn spec() -> JobSpec {
        JobSpec {
            id: JobId::new(),
            tenant: "acme".into(),
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
        }
    }

    #[test]
    fn assign_carries_an_optional_image_and_stays_compatible() {
        let top = format!("sha256:{}", "b".repeat(64));
        let image = ImageRef {
            name: "python".into(),
            digest: top.clone(),
            layers: vec![format!("sha256:{}", "a".repeat(64)), top],
        };
        let with = CoordinatorMessage::Assign {
            job: spec(),
            image: Some(image.clone()),
        };
        let json = serde_json::to_string(&with).unwrap();
        assert!(json.contains(r#""image":{"name":"python""#), "{json}");
        assert_eq!(
            serde_json::from_str::<CoordinatorMessage>(&json).unwrap(),
            with
        );
        // Without an image the field is left out: older nodes read exactly what they did.
        let without = CoordinatorMessage::Assign {
            job: spec(),
            image: None,
        };
        let json = serde_json::to_string(&without).unwrap();
        assert!(!json.contains("image"), "{json}");
        // An older coordinator's assignment (no image field) still parses.
        let old = format!(
            r#"{{"type":"assign","job":{}}}"#,
            serde_json::to_string(&spec()).unwrap()
        );
        assert!(matches!(
            serde_json::from_str::<CoordinatorMessage>(&old).unwrap(),
            CoordinatorMessage::Assign { image: None, .. }
        ));
        // A newer coordinator's assignment still parses on a node built before the field.
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case", tag = "type")]
        enum Before {
            Assign { job: JobSpec },
        }
        let json = serde_json::to_string(&with).unwrap();
        let Before::Assign { job } = serde_json::from_str::<Before>(&json).unwrap();
        assert_eq!(job.language, "python");
        // The chain may be unknown; unknown fields inside the image are refused.
        let bare = r#"{"name":"python","digest":"sha256:00"}"#;
        assert!(serde_json::from_str::<ImageRef>(bare)
            .unwrap()
            .layers
            .is_empty());
        let extra = r#"{"name":"python","digest":"sha256:00","layers":[],"x":1}"#;
        assert!(serde_json::from_str::<ImageRef>(extra).is_err());
    }

    #[test]
    fn assign_round_trips_through_json() {
        let msg = CoordinatorMessage::Assign {
            image: None,
            job: JobSpec {
                tests: vec![TestCase {
                    stdin: "1\n".into(),
                    expected_output: Some("1\n".into()),
                }],
                compare: Compare::Float { tolerance: 1e-6 },
                stop_on_first_failure: true,
                ..spec()
            },
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert!(json.contains(r#""type":"assign""#), "{json}");
        assert!(
            json.contains(r#""mode":"float","tolerance":1e-6"#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<CoordinatorMessage>(&json).unwrap(),
            msg
        );
    }

    #[test]
    fn job_spec_refuses_unknown_fields() {
        let json = r#"{"type":"cancel","job":"0190f0a0-0000-7000-8000-000000000000"}"#;
        assert!(serde_json::from_str::<CoordinatorMessage>(json).is_ok());
        let bad = r#"{"id":"0190f0a0-0000-7000-8000-000000000000","tenant":"a","language":"c","files":[],"args":[],"stdin":"","limits":null,"compile_limits":null,"tests":[],"compare":{"mode":"exact"},"stop_on_first_failure":false,"network":false,"extra":1}"#;
        assert!(serde_json::from_str::<JobSpec>(bad).is_err());
    }
}
