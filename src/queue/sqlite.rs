//! (being written: the sqlite backend)
use super::QueueError;

/// The sqlite backend.
pub struct SqliteQueue;

impl SqliteQueue {
    /// Opens the queue.
    pub async fn open(_path: &std::path::Path) -> Result<SqliteQueue, QueueError> {
        Err(QueueError::Database(
            "the sqlite backend is being written".into(),
        ))
    }
}

#[async_trait::async_trait]
impl super::Queue for SqliteQueue {
    fn backend(&self) -> &'static str {
        "sqlite"
    }
    async fn enqueue(&self, _: super::NewJob) -> Result<super::Enqueued, QueueError> {
        Err(QueueError::Database("unfinished".into()))
    }
    async fn claim(&self, _: &super::Claim) -> Result<Option<super::Job>, QueueError> {
        Err(QueueError::Database("unfinished".into()))
    }
    async fn heartbeat(
        &self,
        _: &str,
        _: &str,
        _: std::time::Duration,
    ) -> Result<bool, QueueError> {
        Err(QueueError::Database("unfinished".into()))
    }
    async fn complete(&self, _: &str, _: &str, _: serde_json::Value) -> Result<(), QueueError> {
        Err(QueueError::Database("unfinished".into()))
    }
    async fn fail(
        &self,
        _: &str,
        _: &str,
        _: super::Failure,
    ) -> Result<super::JobState, QueueError> {
        Err(QueueError::Database("unfinished".into()))
    }
    async fn release(&self, _: &str, _: &str) -> Result<(), QueueError> {
        Err(QueueError::Database("unfinished".into()))
    }
    async fn cancel(&self, _: &str) -> Result<bool, QueueError> {
        Err(QueueError::Database("unfinished".into()))
    }
    async fn retry(&self, _: &str) -> Result<bool, QueueError> {
        Err(QueueError::Database("unfinished".into()))
    }
    async fn get(&self, _: &str) -> Result<Option<super::Job>, QueueError> {
        Err(QueueError::Database("unfinished".into()))
    }
    async fn list(&self, _: &super::JobFilter) -> Result<Vec<super::Job>, QueueError> {
        Err(QueueError::Database("unfinished".into()))
    }
    async fn set_progress(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: serde_json::Value,
    ) -> Result<(), QueueError> {
        Err(QueueError::Database("unfinished".into()))
    }
    async fn ping(&self) -> Result<(), QueueError> {
        Err(QueueError::Database("unfinished".into()))
    }
}
