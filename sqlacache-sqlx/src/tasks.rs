//! Background tasks that end with their owner (a pool's listeners and heartbeats).

use std::future::Future;
use std::sync::Mutex;
use tokio::task::AbortHandle;

/// Tasks spawned for an owner; dropping this aborts them. The tasks hold only a weak reference
/// to the pool, so this drop is what ends them when the pool goes.
#[derive(Debug, Default)]
pub(crate) struct Tasks(Mutex<Vec<AbortHandle>>);

impl Tasks {
    /// Spawns `task` on the current runtime.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task).abort_handle();
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(handle);
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in self.0.get_mut().unwrap_or_else(|e| e.into_inner()).iter() {
            task.abort();
        }
    }
}
