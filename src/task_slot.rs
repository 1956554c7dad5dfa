//! [`TaskSlot`]: a background task owned by a store or a release board (a connection's driver,
//! a notification supervisor), stopped and waited for on close, aborted on drop. A leaf: it
//! imports nothing of the crate, so that stores and `wait` can both use it.

/// A background task a store owns (a connection's driver, a notification supervisor): stopped
/// and waited for by [`TaskSlot::stop`], aborted when the slot is dropped.
#[derive(Debug, Default)]
pub(crate) struct TaskSlot(std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>);

impl TaskSlot {
    /// Keeps `task` (aborting one kept before).
    pub(crate) fn set(&self, task: tokio::task::JoinHandle<()>) {
        if let Some(old) = self.lock().replace(task) {
            old.abort();
        }
    }

    /// Aborts the task and returns once it (and what it owns: a connection) has been dropped.
    pub(crate) async fn stop(&self) {
        let task = self.lock().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<tokio::task::JoinHandle<()>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for TaskSlot {
    fn drop(&mut self) {
        if let Some(task) = self.lock().take() {
            task.abort();
        }
    }
}
