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

    /// Spawns `task` on `home` (the runtime its owner was made on; the current one when
    /// `None`) and keeps it. A supervisor started lazily must not land on whichever runtime
    /// first asked: a thread's own runtime (`python::thread_twin`) runs only during that
    /// thread's calls, and would hold every other waiter's notices until it next runs.
    pub(crate) fn start_on(
        &self,
        home: Option<&tokio::runtime::Handle>,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.set(match home {
            Some(home) => home.spawn(task),
            None => tokio::spawn(task),
        });
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
