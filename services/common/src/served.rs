//! The `kubesent-revisions` bucket: the detector writes what each revision served
//! ([`kubesent_proto::served`]); the diagnoser and the remediator read it. Writes are read-modify-write
//! under compare-and-set, so two detectors that both think they lead (a lease hand-over) never lose each
//! other's records.

use async_nats::jetstream::kv;
use kubesent_proto::{
    WorkloadRef,
    served::{REVISIONS_BUCKET, ServedRevisions, served_key},
};

/// Why the bucket could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ServedError {
    /// JetStream failed.
    #[error("revisions bucket: {0}")]
    Store(String),
    /// Every compare-and-set attempt met another writer.
    #[error("revisions bucket: the record of {0} kept changing under the write")]
    Contended(String),
}

/// The bucket, as each role uses it. Opened on first use: the detector creates it, and a diagnoser or
/// remediator that starts first reads no record until it exists.
#[derive(Debug, Clone)]
pub struct ServedStore {
    js: async_nats::jetstream::Context,
    kv: std::sync::Arc<tokio::sync::OnceCell<kv::Store>>,
}

impl ServedStore {
    /// The store of the bucket in `js`.
    pub fn new(js: async_nats::jetstream::Context) -> Self {
        Self { js, kv: std::sync::Arc::default() }
    }

    /// The bucket, `None` while it does not exist.
    async fn bucket(&self) -> Result<Option<&kv::Store>, ServedError> {
        if let Some(kv) = self.kv.get() {
            return Ok(Some(kv));
        }
        match self.js.get_key_value(REVISIONS_BUCKET).await {
            Ok(store) => Ok(Some(self.kv.get_or_init(|| async { store }).await)),
            Err(error) if crate::nats::setup::stream_not_found(&error) => Ok(None),
            Err(error) => Err(ServedError::Store(error.to_string())),
        }
    }

    /// The record of `workload`; `None` when there is none, the workload has no revisions, or it cannot be
    /// read (an unreadable record proves nothing, so it is as good as none — logged).
    pub async fn read(
        &self,
        namespace: &str,
        workload: &WorkloadRef,
    ) -> Result<Option<ServedRevisions>, ServedError> {
        let Some(key) = served_key(namespace, workload) else { return Ok(None) };
        let Some(kv) = self.bucket().await? else { return Ok(None) };
        let Some(bytes) = kv.get(&key).await.map_err(|e| ServedError::Store(e.to_string()))? else {
            return Ok(None);
        };
        match ServedRevisions::decode(&bytes) {
            Ok(record) if record.namespace == namespace && record.workload == *workload => Ok(Some(record)),
            Ok(_) => {
                tracing::warn!(%key, "record of served revisions names another workload than its key; ignored");
                Ok(None)
            }
            Err(error) => {
                tracing::warn!(%key, %error, "record of served revisions ignored");
                Ok(None)
            }
        }
    }

    /// Changes the record of `workload` with `change` (which returns whether it changed anything),
    /// starting from an empty record of `uid` when there is none. `Ok(false)`: nothing to write.
    pub async fn update(
        &self,
        namespace: &str,
        workload: &WorkloadRef,
        uid: &str,
        mut change: impl FnMut(&mut ServedRevisions) -> bool,
    ) -> Result<bool, ServedError> {
        let Some(key) = served_key(namespace, workload) else { return Ok(false) };
        let Some(kv) = self.bucket().await? else {
            return Err(ServedError::Store(format!("no {REVISIONS_BUCKET} bucket")));
        };
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            let entry = kv.entry(&key).await.map_err(|e| ServedError::Store(e.to_string()))?;
            let (mut record, revision) = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    // An unreadable record is replaced: it proved nothing anyway.
                    let record = ServedRevisions::decode(&entry.value)
                        .ok()
                        .filter(|r| r.namespace == namespace && r.workload == *workload)
                        .unwrap_or_else(|| ServedRevisions::new(namespace, workload.clone(), uid));
                    (record, Some(entry.revision))
                }
                Some(entry) => (ServedRevisions::new(namespace, workload.clone(), uid), Some(entry.revision)),
                None => (ServedRevisions::new(namespace, workload.clone(), uid), None),
            };
            if !change(&mut record) {
                return Ok(false);
            }
            let payload = serde_json::to_vec(&record).map_err(|e| ServedError::Store(e.to_string()))?;
            let written = match revision {
                Some(revision) => kv
                    .update(&key, payload.into(), revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| (crate::nats::is_cas_conflict(&e), e.to_string())),
                None => kv
                    .create(&key, payload.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| (crate::nats::is_cas_conflict(&e), e.to_string())),
            };
            match written {
                Ok(()) => return Ok(true),
                Err((true, _)) => continue,
                Err((false, error)) => return Err(ServedError::Store(error)),
            }
        }
        Err(ServedError::Contended(key))
    }
}
