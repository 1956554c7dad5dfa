//! `_Client`, the native client as a Python class (the public `LeaseClient` of
//! `python/distributed_leasing/_client.py` wraps it): connecting, the client's operations
//! (acquire, inspect, list, forced release, close, an election's leader and its observer, a
//! semaphore's permits, its state and limit),
//! each declared once for its awaitable and blocking forms, and the answers those give Python.

use pyo3::prelude::*;

use crate::client::{LeaseClient, TryAcquire};
use crate::election::{Election, LeaderInfo};
use crate::store::ForceReleased;

use super::bridge::block_on;
use super::election::{PyLeaderInfo, PyObserver};
use super::executor::{Executor, Op};
use super::info::PyLeaseInfo;
use super::lease::PyLease;
use super::options::{PyClientOptions, PyOptions};
use super::pairs::{on, on_runtime, pymethods_with_pairs};
use super::runtime;
use super::semaphore::{limit_arg, permit_out, NewPermit, PySemaphoreInfo};

/// The native client; `distributed_leasing.LeaseClient` wraps it.
#[pyclass(name = "_Client", module = "distributed_leasing._native", frozen)]
pub(crate) struct PyClient {
    exec: Executor,
    pid: u32,
}

impl Drop for PyClient {
    fn drop(&mut self) {
        // A dropped client closes the connections its loops and threads drive for it (the
        // shared ones close when the last lease and clone of the client are gone). Never in a
        // forked child: those sockets, files and pollers are the parent's, so nothing of the
        // client is dropped there (leaked, as the parent's runtime is).
        if self.pid == runtime::pid() {
            self.exec.close_own_connections();
        } else {
            std::mem::forget(self.exec.clone());
        }
    }
}

impl PyClient {
    fn new(inner: LeaseClient) -> Self {
        Self {
            exec: Executor::new(inner),
            pid: runtime::pid(),
        }
    }

    fn client(&self) -> &LeaseClient {
        self.exec.client()
    }
}

type TryOut = (Option<PyLease>, Option<PyLeaseInfo>);

fn try_out(r: TryAcquire, exec: Executor) -> TryOut {
    match r {
        TryAcquire::Acquired(l) => (Some(PyLease::new(l, exec)), None),
        TryAcquire::Held(h) => (None, Some(h.into())),
    }
}

/// Where a lease's acquire with `options` runs: one attempt is one request, a wait may be
/// long (and, blocking, waits on the thread's own connection when it has one).
fn acquire_op(options: &PyOptions) -> Op {
    if options.one_attempt() {
        Op::Request
    } else {
        Op::LeaseWait
    }
}

/// Where a permit's acquire with `options` runs: as [`acquire_op`], a wait always on the
/// runtime (its attempts start tasks of their own there).
fn permit_op(options: &PyOptions) -> Op {
    if options.one_attempt() {
        Op::Request
    } else {
        Op::Wait
    }
}

pymethods_with_pairs! {
    impl PyClient {
        /// Loads the configuration of `dir` and the environment, and connects; returns the
        /// client and the configuration's warnings.
        #[staticmethod]
        fn from_config_sync(
            py: Python<'_>,
            dir: std::path::PathBuf,
        ) -> PyResult<(PyClient, Vec<String>)> {
            block_on(py, async move {
                let settings = crate::config::load_from_process_env(&dir)?;
                let inner = LeaseClient::from_settings(&settings, &dir).await?;
                Ok((PyClient::new(inner), settings.warnings))
            })
        }

        /// The store kind: `redis`, `redis-cluster`, `postgres`, `etcd` or `sqlite`.
        #[getter]
        fn kind(&self) -> &'static str {
            self.client().store().kind()
        }

        #[getter]
        fn key_prefix(&self) -> &str {
            &self.client().options().key_prefix
        }

        fn __repr__(&self) -> String {
            format!("LeaseClient(store={:?})", self.client().store().kind())
        }

        /// An observer of the leader of election `name`: the current leader first, then each
        /// change (see `crate::election::Observer`); it ends when the client is closed.
        fn observe(&self, py: Python<'_>, name: &str) -> PyResult<PyObserver> {
            runtime::check_pid(self.pid)?;
            // Observing needs no identity of its own: the default one is never stored.
            let election = Election::new(self.client().clone(), name, None)
                .map_err(|e| super::errors::to_py(py, e))?;
            let _runtime = runtime::get()?.enter();
            Ok(PyObserver::new(election.observe(), self.exec.clone()))
        }
    }
    pairs {
        #[staticmethod]
        fn connect / connect_sync(url: String, options: &PyClientOptions) -> PyClient {
            let opts = options.options.clone();
            on_runtime(async move {
                Ok(PyClient::new(LeaseClient::connect(&url, opts).await?))
            })
        }

        fn try_acquire / try_acquire_sync(&self, name: String, options: &PyOptions) -> TryOut {
            runtime::check_pid(self.pid)?;
            let (opts, exec) = (options.options.clone(), self.exec.clone());
            on(&self.exec, Op::Request, move |c| async move {
                Ok(try_out(c.try_acquire(&name, &opts).await?, exec))
            })
        }

        fn acquire / acquire_sync(&self, name: String, options: &PyOptions) -> PyLease {
            runtime::check_pid(self.pid)?;
            let (opts, wait, exec) = (options.options.clone(), options.wait, self.exec.clone());
            on(&self.exec, acquire_op(options), move |c| async move {
                Ok(PyLease::new(c.acquire(&name, &opts, wait).await?, exec))
            })
        }

        fn inspect / inspect_sync(&self, name: String) -> Option<PyLeaseInfo> {
            runtime::check_pid(self.pid)?;
            on(&self.exec, Op::Request, move |c| async move {
                Ok(c.inspect(&name).await?.map(PyLeaseInfo::from))
            })
        }

        /// The leader of election `name` (the holder of the lease `name`), or None.
        fn leader / leader_sync(&self, name: String) -> Option<PyLeaderInfo> {
            runtime::check_pid(self.pid)?;
            on(&self.exec, Op::Request, move |c| async move {
                Ok(c.inspect(&name).await?.and_then(LeaderInfo::of).map(PyLeaderInfo::from))
            })
        }

        #[pyo3(signature = (prefix=String::new()))]
        fn list / list_sync(&self, prefix: String) -> Vec<PyLeaseInfo> {
            runtime::check_pid(self.pid)?;
            on(&self.exec, Op::Request, move |c| async move { listed(&c, &prefix).await })
        }

        #[pyo3(signature = (name, *, lease_id=None))]
        fn force_release / force_release_sync(
            &self,
            name: String,
            lease_id: Option<String>,
        ) -> bool {
            runtime::check_pid(self.pid)?;
            on(&self.exec, Op::Request, move |c| async move {
                let outcome = c.force_release_if(&name, lease_id.as_deref()).await?;
                forced(&name, lease_id.as_deref(), outcome)
            })
        }

        /// One attempt at a permit of semaphore `name` (`limit` None: the stored one): the
        /// permit, or None when the semaphore is full.
        fn try_acquire_permit / try_acquire_permit_sync(
            &self,
            name: String,
            limit: Option<i128>,
            options: &PyOptions,
        ) -> Option<NewPermit> {
            runtime::check_pid(self.pid)?;
            let (opts, exec) = (options.options.clone(), self.exec.clone());
            on(&self.exec, Op::Request, move |c| async move {
                let limit = limit_arg(limit)?;
                Ok(permit_out(c.try_acquire_permit(&name, limit, &opts).await?, exec))
            })
        }

        fn acquire_permit / acquire_permit_sync(
            &self,
            name: String,
            limit: Option<i128>,
            options: &PyOptions,
        ) -> NewPermit {
            runtime::check_pid(self.pid)?;
            let (opts, wait, exec) = (options.options.clone(), options.wait, self.exec.clone());
            on(&self.exec, permit_op(options), move |c| async move {
                let limit = limit_arg(limit)?;
                Ok(NewPermit::new(c.acquire_permit(&name, limit, &opts, wait).await?, exec))
            })
        }

        fn semaphore_info / semaphore_info_sync(&self, name: String) -> Option<PySemaphoreInfo> {
            runtime::check_pid(self.pid)?;
            on(&self.exec, Op::Request, move |c| async move {
                Ok(c.semaphore_info(&name).await?.map(PySemaphoreInfo::from))
            })
        }

        /// Every semaphore whose name starts with `prefix` (all, by default), by name.
        #[pyo3(signature = (prefix=String::new()))]
        fn list_semaphores / list_semaphores_sync(&self, prefix: String) -> Vec<PySemaphoreInfo> {
            runtime::check_pid(self.pid)?;
            on(&self.exec, Op::Request, move |c| async move {
                let listed = c.list_semaphores(&prefix).await?;
                Ok(listed.into_iter().map(PySemaphoreInfo::from).collect::<Vec<_>>())
            })
        }

        /// Stores `limit` as the limit of semaphore `name`; returns the one it had, or None.
        fn set_semaphore_limit / set_semaphore_limit_sync(
            &self,
            name: String,
            limit: i128,
        ) -> Option<u32> {
            runtime::check_pid(self.pid)?;
            on(&self.exec, Op::Request, move |c| async move {
                let limit = crate::semaphore::limit_of(limit)?;
                c.set_semaphore_limit(&name, limit).await
            })
        }

        /// Deletes the permit in `slot` of semaphore `name` if `lease_id` still holds it
        /// (whoever holds it, given None); as `force_release`.
        #[pyo3(signature = (name, slot, *, lease_id=None))]
        fn force_release_permit / force_release_permit_sync(
            &self,
            name: String,
            slot: u32,
            lease_id: Option<String>,
        ) -> bool {
            runtime::check_pid(self.pid)?;
            on(&self.exec, Op::Request, move |c| async move {
                let outcome = c.force_release_permit(&name, slot, lease_id.as_deref()).await?;
                forced(&name, lease_id.as_deref(), outcome)
            })
        }

        /// Stops renewing this client's leases and releases them (their handles end as lost,
        /// `client_closed`), then closes every connection the client opened; afterwards no
        /// lease can be taken through it.
        fn close / close_sync(&self) -> () {
            runtime::check_pid(self.pid)?;
            self.exec.close_own_connections();
            let client = self.client().clone();
            on_runtime(async move {
                client.close().await;
                Ok(())
            })
        }
    }
}

async fn listed(client: &LeaseClient, prefix: &str) -> crate::error::Result<Vec<PyLeaseInfo>> {
    Ok(client
        .list(prefix)
        .await?
        .into_iter()
        .map(PyLeaseInfo::from)
        .collect())
}

/// A forced release (of a lease or a permit), answered for Python: whether one was deleted; one
/// that changed hands since its lease id was shown is `LeaseUnavailable` naming both holders
/// (nothing deleted).
fn forced(name: &str, shown: Option<&str>, outcome: ForceReleased) -> crate::error::Result<bool> {
    match outcome {
        ForceReleased::Released => Ok(true),
        ForceReleased::Absent => Ok(false),
        ForceReleased::HeldByOther(holder) => Err(crate::error::LeaseError::ChangedHands {
            name: name.to_owned(),
            shown: shown.unwrap_or("?").to_owned(),
            holder: Box::new(holder),
        }),
    }
}
