//! Where workload records and work queues live: a file on a single host, Redis in a
//! cluster. Both keep the same rules, so the control API and the agent port do not
//! care which.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::queue::{
    clip_detail, Delivery, QueueError, Updated, WorkQueue, WorkState, WorkStatus, MAX_PENDING,
};
use crate::record::{Ended, WorkloadRecord};

pub use burrow_host_redis::DONE_KEPT;

/// A store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("workload {0:?} already exists")]
    Exists(String),
    #[error("no workload {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Redis failed or timed out, or the state file could not be written.
    #[error("workload store unavailable: {0}")]
    Unavailable(String),
    /// A stored value is unreadable (written by an incompatible version?).
    #[error("workload store holds an unreadable value: {0}")]
    Corrupt(String),
}

impl From<burrow_host_redis::StoreError> for StoreError {
    fn from(e: burrow_host_redis::StoreError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Records and queues.
#[derive(Clone)]
pub enum Store {
    File(Arc<FileStore>),
    Redis(Arc<burrow_host_redis::Store>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::File(s) => write!(
                f,
                "file store {}",
                s.path.as_ref().map_or("(memory)".into(), |p| p.display().to_string())
            ),
            Store::Redis(s) => write!(f, "Redis store {}", s.describe()),
        }
    }
}

fn decode<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records serialise")
}

impl Store {
    /// Adds a record; [`StoreError::Exists`] when the id is taken (ended records count
    /// until they are purged, so a terminated id is not reused by mistake).
    pub async fn create(&self, record: &WorkloadRecord) -> Result<(), StoreError> {
        match self {
            Store::File(f) => f.mutate(|s| {
                if s.workloads.contains_key(&record.id) {
                    return Err(StoreError::Exists(record.id.clone()));
                }
                s.workloads.insert(record.id.clone(), record.clone());
                Ok(())
            }),
            Store::Redis(r) => match r.workload_create(&record.id, &encode(record)).await? {
                true => Ok(()),
                false => Err(StoreError::Exists(record.id.clone())),
            },
        }
    }

    /// A record.
    pub async fn get(&self, id: &str) -> Result<Option<WorkloadRecord>, StoreError> {
        match self {
            Store::File(f) => Ok(f.read(|s| s.workloads.get(id).cloned())),
            Store::Redis(r) => r.workload_get(id).await?.map(|t| decode(&t)).transpose(),
        }
    }

    /// Every record kept, ordered by id.
    pub async fn list(&self) -> Result<Vec<WorkloadRecord>, StoreError> {
        match self {
            Store::File(f) => Ok(f.read(|s| s.workloads.values().cloned().collect())),
            Store::Redis(r) => {
                let mut records: Vec<WorkloadRecord> =
                    r.workload_list().await?.iter().map(|t| decode(t)).collect::<Result<_, _>>()?;
                records.sort_by(|a, b| a.id.cmp(&b.id));
                Ok(records)
            }
        }
    }

    /// Marks a workload ended (the first end stays: a second terminate changes nothing)
    /// and returns the record as stored.
    pub async fn end(&self, id: &str, ended: Ended) -> Result<WorkloadRecord, StoreError> {
        match self {
            Store::File(f) => f.mutate(|s| {
                let record = s.workloads.get_mut(id).ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
                record.ended.get_or_insert(ended);
                Ok(record.clone())
            }),
            Store::Redis(r) => {
                let mut record: WorkloadRecord = match r.workload_get(id).await? {
                    Some(t) => decode(&t)?,
                    None => return Err(StoreError::NotFound(id.to_owned())),
                };
                if record.ended.is_none() {
                    record.ended = Some(ended);
                    if !r.workload_replace(id, &encode(&record)).await? {
                        return Err(StoreError::NotFound(id.to_owned()));
                    }
                }
                Ok(record)
            }
        }
    }

    /// Forgets a record and its queue (an ended workload past its retention).
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        match self {
            Store::File(f) => f.mutate(|s| {
                s.workloads.remove(id);
                s.queues.remove(id);
                Ok(())
            }),
            Store::Redis(r) => Ok(r.workload_delete(id).await?),
        }
    }

    /// Queues an item for the workload's agent.
    pub async fn enqueue(&self, id: &str, payload: &[u8], now: u64) -> Result<String, StoreError> {
        match self {
            Store::File(f) => {
                f.mutate(|s| Ok(s.queues.entry(id.to_owned()).or_default().enqueue(payload.to_vec(), now)?))
            }
            Store::Redis(r) => {
                let status = WorkStatus {
                    id: "%ID%".into(),
                    state: WorkState::Queued,
                    deliveries: 0,
                    detail: String::new(),
                    enqueued_at: now,
                    updated_at: now,
                };
                r.work_enqueue(id, &encode(&status), payload, MAX_PENDING)
                    .await?
                    .ok_or(StoreError::Queue(QueueError::Full))
            }
        }
    }

    /// The head of the workload's queue, counted as delivered.
    pub async fn next(&self, id: &str, now: u64) -> Result<Option<Delivery>, StoreError> {
        match self {
            Store::File(f) => f.mutate_if(|s| {
                let delivery = s.queues.get_mut(id).and_then(|q| q.next(now));
                let changed = delivery.is_some();
                (Ok(delivery), changed)
            }),
            Store::Redis(r) => Ok(r.work_next(id, now).await?.map(|(id, payload, delivery)| Delivery {
                id,
                payload,
                delivery,
            })),
        }
    }

    /// Records an item's progress.
    pub async fn update(
        &self,
        id: &str,
        item: &str,
        state: WorkState,
        detail: &str,
        now: u64,
    ) -> Result<Updated, StoreError> {
        let detail = clip_detail(detail);
        match self {
            Store::File(f) => f.mutate(|s| match s.queues.get_mut(id) {
                Some(q) => Ok(q.update(item, state, detail, now)?),
                None => Err(QueueError::UnknownItem(item.to_owned()).into()),
            }),
            Store::Redis(r) => {
                match r.work_update(id, item, state.as_str(), detail, now, state.is_final()).await? {
                    burrow_host_redis::WorkUpdate::Updated => Ok(Updated::Yes),
                    burrow_host_redis::WorkUpdate::AlreadyFinal => Ok(Updated::AlreadyFinal),
                    burrow_host_redis::WorkUpdate::Unknown => {
                        Err(QueueError::UnknownItem(item.to_owned()).into())
                    }
                }
            }
        }
    }

    /// Every kept item of the workload, oldest first.
    pub async fn list_work(&self, id: &str) -> Result<Vec<WorkStatus>, StoreError> {
        match self {
            Store::File(f) => Ok(f.read(|s| s.queues.get(id).map(|q| q.list()).unwrap_or_default())),
            Store::Redis(r) => {
                let mut items: Vec<WorkStatus> =
                    r.work_list(id).await?.iter().map(|t| decode(t)).collect::<Result<_, _>>()?;
                items.sort_by(|a, b| a.id.cmp(&b.id));
                Ok(items)
            }
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileState {
    /// Format version, so a future change can migrate instead of misreading.
    version: u32,
    workloads: BTreeMap<String, WorkloadRecord>,
    queues: HashMap<String, WorkQueue>,
}

const FILE_VERSION: u32 = 1;

/// A single host's records: in memory, and written to a file after every change (write
/// to a temporary file, fsync, rename), so a restart loses nothing.
#[derive(Debug)]
pub struct FileStore {
    path: Option<PathBuf>,
    state: Mutex<FileState>,
}

impl FileStore {
    /// Loads `path` (a missing file is an empty store); `None`: memory only.
    pub fn open(path: Option<&Path>) -> Result<FileStore, StoreError> {
        let state = match path {
            None => FileState { version: FILE_VERSION, ..Default::default() },
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => {
                    let state: FileState = serde_json::from_str(&text)
                        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", p.display())))?;
                    if state.version != FILE_VERSION {
                        return Err(StoreError::Corrupt(format!(
                            "{}: format version {} (this host reads {FILE_VERSION})",
                            p.display(),
                            state.version
                        )));
                    }
                    state
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    FileState { version: FILE_VERSION, ..Default::default() }
                }
                Err(e) => return Err(StoreError::Unavailable(format!("{}: {e}", p.display()))),
            },
        };
        Ok(FileStore { path: path.map(Path::to_path_buf), state: Mutex::new(state) })
    }

    fn read<T>(&self, f: impl FnOnce(&FileState) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn mutate<T>(&self, f: impl FnOnce(&mut FileState) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.mutate_if(|s| {
            let r = f(s);
            let ok = r.is_ok();
            (r, ok)
        })
    }

    /// Runs `f`; saves when it says it changed something. A failed save undoes nothing
    /// in memory but is reported, so the caller answers with an error.
    fn mutate_if<T>(
        &self,
        f: impl FnOnce(&mut FileState) -> (Result<T, StoreError>, bool),
    ) -> Result<T, StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (result, changed) = f(&mut state);
        if changed {
            self.save(&state)?;
        }
        result
    }

    fn save(&self, state: &FileState) -> Result<(), StoreError> {
        let Some(path) = &self.path else { return Ok(()) };
        let text = serde_json::to_vec(state).expect("state serialises");
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&text)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| StoreError::Unavailable(format!("writing {}: {e}", path.display())))
    }
}
