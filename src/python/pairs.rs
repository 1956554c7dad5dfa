//! Each operation of the native classes declared once: [`pymethods_with_pairs!`] writes the
//! `#[pymethods]` block of a class, and for every operation in it both forms Python sees,
//! `name(...)`, which returns an awaitable, and `name_sync(...)`, which blocks with the GIL
//! released. The operation's one body says what runs and where ([`Call`]): an operation of the
//! client's [`Executor`] ([`on`], which chooses the connection per call) or a future on the
//! process's runtime ([`on_runtime`]).

use std::future::Future;

use pyo3::prelude::*;

use crate::error::LeaseError as CoreError;
use crate::LeaseClient;

use super::bridge::{block_on, future_into_py};
use super::executor::{Executor, Op};

/// One run of an operation, awaited (`spawn`) or blocking (`block`).
pub(crate) trait Call {
    /// What the operation returns to Python.
    type Output;
    /// An asyncio awaitable of the operation.
    fn spawn(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>>;
    /// The operation run to its end with the GIL released.
    fn block(self, py: Python<'_>) -> PyResult<Self::Output>;
}

/// `op(client)` run by `exec` as an operation of kind `kind` (see [`Executor::spawn`]).
pub(crate) struct OnExecutor<'e, F> {
    exec: &'e Executor,
    kind: Op,
    op: F,
}

/// `op(client)` run by `exec` as an operation of kind `kind`, `client` being the view to run on.
pub(crate) fn on<F, Fut, T>(exec: &Executor, kind: Op, op: F) -> OnExecutor<'_, F>
where
    F: FnOnce(LeaseClient) -> Fut,
    Fut: Future<Output = Result<T, CoreError>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    OnExecutor { exec, kind, op }
}

impl<F, Fut, T> Call for OnExecutor<'_, F>
where
    F: FnOnce(LeaseClient) -> Fut,
    Fut: Future<Output = Result<T, CoreError>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    type Output = T;
    fn spawn(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        self.exec.spawn(py, self.kind, self.op)
    }
    fn block(self, py: Python<'_>) -> PyResult<T> {
        self.exec.block(py, self.kind, self.op)
    }
}

/// A future run on the process's runtime (not on a caller's own connection): `connect`,
/// `close`.
pub(crate) struct OnRuntime<Fut>(Fut);

/// `fut` run on the process's runtime, to its end once started.
pub(crate) fn on_runtime<Fut, T>(fut: Fut) -> OnRuntime<Fut>
where
    Fut: Future<Output = Result<T, CoreError>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    OnRuntime(fut)
}

impl<Fut, T> Call for OnRuntime<Fut>
where
    Fut: Future<Output = Result<T, CoreError>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    type Output = T;
    fn spawn(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        future_into_py(py, self.0)
    }
    fn block(self, py: Python<'_>) -> PyResult<T> {
        block_on(py, self.0)
    }
}

/// The `#[pymethods]` block of a class: its other methods as written, then each operation of
/// `pairs` as `name` (awaitable) and `name_sync` (blocking), with the same parameters (`py` is
/// added last), attributes and body. The body ends in a [`Call`] ([`on`] or [`on_runtime`]);
/// `name_sync` returns `PyResult<Output>`.
///
/// ```ignore
/// pymethods_with_pairs! {
///     impl PyLease { /* other methods */ }
///     pairs {
///         fn release / release_sync(&self) -> bool {
///             runtime::check_pid(self.pid)?;
///             let lease = Arc::clone(&self.inner);
///             on(&self.exec, Op::Request, move |c| async move {
///                 lease.release_via(&**c.requests()).await
///             })
///         }
///     }
/// }
/// ```
macro_rules! pymethods_with_pairs {
    (
        impl $class:ty { $($method:tt)* }
        pairs {
            $(
                $(#[$attr:meta])*
                fn $name:ident / $sync:ident (
                    $(&$self:ident)? $(,)? $($arg:ident : $ty:ty),* $(,)?
                ) -> $out:ty $body:block
            )*
        }
    ) => {
        #[pymethods]
        impl $class {
            $($method)*
            $(
                $(#[$attr])*
                fn $name<'py>(
                    $(&$self,)? $($arg: $ty,)* py: Python<'py>
                ) -> PyResult<Bound<'py, PyAny>> {
                    $crate::python::pairs::Call::spawn($body, py)
                }
                $(#[$attr])*
                fn $sync($(&$self,)? $($arg: $ty,)* py: Python<'_>) -> PyResult<$out> {
                    $crate::python::pairs::Call::block($body, py)
                }
            )*
        }
    };
}
pub(crate) use pymethods_with_pairs;
