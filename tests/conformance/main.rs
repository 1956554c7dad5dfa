//! One conformance suite, stamped out for every store (Redis, its caller-driven twin, Redis
//! Cluster, SQLite, PostgreSQL, etcd): a failure reads like
//! `redis_cluster::fencing_token_strictly_increases`. Each store gets a small harness that
//! makes a client on a real store; names are unique per test, so tests share a store safely.
//! `redis_inline` runs the Redis store's caller-driven twin (`store::redis::inline`), whose
//! commands go over a connection of its own and fall back to the store's after a drop.
//! `memory` runs the in-memory fake of the paused-time tests (`tests/state_machine.rs`), so that
//! the fake those tests trust is held to the same cases as the real stores.
//! `as_permit_limit1` and `as_permit_limit5` run the lease cases again with every lease served
//! by the last free permit of a semaphore (`as_permit.rs`), at limit 1 and at limit 5 with the
//! 4 other permits held (in CI on Redis and PostgreSQL; `CONFORMANCE_ALL=1` runs them on
//! every store: see [`all_wanted`]).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/fault_store.rs"]
mod fault_store;

mod as_permit;
mod cases;
mod election;
mod semaphore;
mod waiting;

use std::time::Duration;

use distributed_leasing::{ClientOptions, LeaseClient};

/// Options for fast tests: short leases are set per test; timeouts stay generous because the
/// machine is shared and noisy.
#[must_use]
pub fn options() -> ClientOptions {
    ClientOptions {
        operation_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

/// Makes clients for one store.
pub struct Harness {
    /// The store's connection string.
    pub url: String,
    /// Clients go through a caller-driven twin of the Redis store (`store::redis::inline`).
    inline: bool,
    /// The URL names one node of a Redis Cluster (its clients reach the others directly).
    cluster: bool,
    /// Clients share this in-memory store (the fake of the paused-time tests, held to the same
    /// suite as the real stores).
    mem: Option<std::sync::Arc<fault_store::MemStore>>,
    /// Clients serve every lease from the last free permit of a semaphore of this name
    /// ([`as_permit`]: the lease cases run on semaphores).
    permit: Option<std::sync::Arc<as_permit::Shared>>,
    _server: Option<common::RedisServer>,
    _dir: Option<TempDir>,
}

/// A directory removed when the harness is dropped.
pub struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Harness {
    /// A fresh client of this store.
    ///
    /// # Panics
    /// When the store cannot be reached.
    pub async fn client(&self) -> LeaseClient {
        let client = self.store_client().await;
        match &self.permit {
            None => client,
            Some(shared) => self.as_permit(shared, &client).await,
        }
    }

    /// `client`'s store served as leases by the last free permit of each semaphore
    /// ([`as_permit::PermitAsLease`]); the first one also makes the client that holds the
    /// other permits.
    async fn as_permit(
        &self,
        shared: &std::sync::Arc<as_permit::Shared>,
        client: &LeaseClient,
    ) -> LeaseClient {
        shared.holder.get_or_init(|| self.store_client()).await;
        LeaseClient::with_store(
            as_permit::PermitAsLease::over(client.store().clone(), shared.clone()),
            options(),
        )
    }

    /// A client of the store itself (never served from permits).
    async fn store_client(&self) -> LeaseClient {
        if let Some(mem) = &self.mem {
            return LeaseClient::with_store(mem.clone(), options());
        }
        let client = LeaseClient::connect(&self.url, options())
            .await
            .expect("connect");
        if !self.inline {
            return client;
        }
        // Every operation of this client goes over a twin of the store, on a connection of
        // its own (driven here by a task of the test's runtime).
        let redis = distributed_leasing::store::redis::RedisStore::of(&**client.store())
            .expect("a Redis store")
            .clone();
        assert!(redis.supports_inline());
        let sock = redis.open_inline_socket().await.expect("inline socket");
        let stream = tokio::net::TcpStream::from_std(sock).expect("tokio stream");
        let (twin, driver) = redis.inline_twin(stream).await.expect("inline twin");
        assert!(!twin.supports_inline(), "a twin has no twins");
        tokio::spawn(driver);
        LeaseClient::with_store(std::sync::Arc::new(twin), options())
    }

    /// A client whose connections go through a [`common::cut_proxy`] in front of this store's
    /// one server, and the proxy's mode; `None` for a store without one socket to cut (memory,
    /// SQLite, a cluster, etcd's three members, the caller-driven twin).
    ///
    /// # Panics
    /// When the store cannot be reached through the proxy.
    pub async fn cut_client(
        &self,
    ) -> Option<(LeaseClient, std::sync::Arc<std::sync::atomic::AtomicU8>)> {
        const HOST: &str = "127.0.0.1:";
        if self.mem.is_some() || self.inline || self.cluster || self.url.matches(HOST).count() != 1
        {
            return None;
        }
        let at = self.url.find(HOST)? + HOST.len();
        let digits = self.url[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>();
        let (port, mode) = common::cut_proxy::proxy(digits.parse().ok()?).await;
        let url = format!(
            "{}{port}{}",
            &self.url[..at],
            &self.url[at + digits.len()..]
        );
        let client = LeaseClient::connect(&url, options())
            .await
            .expect("connect");
        match &self.permit {
            None => Some((client, mode)),
            Some(shared) => Some((self.as_permit(shared, &client).await, mode)),
        }
    }

    /// A Redis server of its own.
    #[must_use]
    pub fn redis() -> Self {
        let server = common::RedisServer::start();
        Self {
            url: server.url(),
            inline: false,
            cluster: false,
            mem: None,
            permit: None,
            _server: Some(server),
            _dir: None,
        }
    }

    /// A Redis server of its own, driven through the caller-driven twin.
    #[must_use]
    pub fn redis_inline() -> Self {
        Self {
            inline: true,
            cluster: false,
            ..Self::redis()
        }
    }

    /// The Redis Cluster shared by the tests of this binary.
    #[must_use]
    pub fn redis_cluster() -> Self {
        Self {
            url: common::shared_cluster().url(),
            inline: false,
            cluster: true,
            mem: None,
            permit: None,
            _server: None,
            _dir: None,
        }
    }

    /// The PostgreSQL server shared by the tests of this binary; `None` (the tests skip) only
    /// when the PostgreSQL binaries are missing outside CI.
    #[must_use]
    pub fn postgres() -> Option<Self> {
        if !common::postgres_wanted() {
            eprintln!("skipped: PostgreSQL binaries not found (apt-get install postgresql)");
            return None;
        }
        Some(Self {
            url: common::shared_postgres().url(),
            inline: false,
            cluster: false,
            mem: None,
            permit: None,
            _server: None,
            _dir: None,
        })
    }

    /// The three-member etcd cluster shared by the tests of this binary; `None` (the tests
    /// skip) only when the etcd binary is missing outside CI.
    #[must_use]
    pub fn etcd() -> Option<Self> {
        if !common::etcd_wanted() {
            eprintln!("skipped: etcd not found (apt-get install etcd-server etcd-client)");
            return None;
        }
        Some(Self {
            url: common::shared_etcd().url(),
            inline: false,
            cluster: false,
            mem: None,
            permit: None,
            _server: None,
            _dir: None,
        })
    }

    /// The in-memory store of the paused-time tests (`tests/common/fault_store.rs`), shared by
    /// the clients of one test.
    #[must_use]
    pub fn memory() -> Self {
        Self {
            url: "memory://".into(),
            inline: false,
            cluster: false,
            mem: Some(std::sync::Arc::new(fault_store::MemStore::new())),
            permit: None,
            _server: None,
            _dir: None,
        }
    }

    /// `inner` with every lease served by a semaphore of limit 1 ([`as_permit`]).
    #[must_use]
    pub fn semaphore1(inner: Self) -> Self {
        Self {
            permit: Some(as_permit::Shared::new(1)),
            ..inner
        }
    }

    /// `inner` with every lease served by the one free permit of a semaphore of limit 5
    /// whose other 4 permits are held ([`as_permit`]).
    #[must_use]
    pub fn semaphore5(inner: Self) -> Self {
        Self {
            permit: Some(as_permit::Shared::new(5)),
            ..inner
        }
    }

    /// Slot records looked at so far, where that can be counted: by the in-memory store, and
    /// on a Redis server of the harness's own (its `PTTL` calls: the acquire script reads a
    /// slot with one). What a permit acquire costs, without timing it.
    #[allow(clippy::used_underscore_binding)]
    pub async fn slot_probes(&self) -> Option<u64> {
        if let Some(mem) = &self.mem {
            return Some(mem.slot_probes());
        }
        self._server.as_ref()?;
        let client = ::redis::Client::open(self.url.as_str()).ok()?;
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        let stats: String = ::redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut c)
            .await
            .ok()?;
        // cmdstat_pttl:calls=12,usec=...
        Some(
            stats
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_pttl:calls="))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        )
    }

    /// An SQLite file in a directory of its own.
    ///
    /// # Panics
    /// When the directory cannot be created.
    #[must_use]
    pub fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(format!("dl-conf-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            url: format!("sqlite://{}", dir.join("leases.db").display()),
            inline: false,
            cluster: false,
            mem: None,
            permit: None,
            _server: None,
            _dir: Some(TempDir(dir)),
        }
    }
}

/// A unique lease name for one test.
#[must_use]
pub fn unique(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::new_v4())
}

macro_rules! conformance {
    ($store:ident, $make:expr, [$($case:ident),* $(,)?]) => {
        mod $store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let h = $make;
                    crate::cases::$case(&h).await;
                }
            )*
        }
    };
}

/// As `conformance!`, for a harness that may be missing (the test then passes with a note).
macro_rules! conformance_if_present {
    ($store:ident, $make:expr, [$($case:ident),* $(,)?]) => {
        mod $store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(h) = $make else { return };
                    crate::cases::$case(&h).await;
                }
            )*
        }
    };
}

macro_rules! all_stores {
    ([$($case:ident),* $(,)?]) => {
        conformance!(redis, crate::Harness::redis(), [$($case),*]);
        conformance!(redis_inline, crate::Harness::redis_inline(), [$($case),*]);
        conformance!(redis_cluster, crate::Harness::redis_cluster(), [$($case),*]);
        conformance!(sqlite, crate::Harness::sqlite(), [$($case),*]);
        conformance!(memory, crate::Harness::memory(), [$($case),*]);
        conformance_if_present!(postgres, crate::Harness::postgres(), [$($case),*]);
        conformance_if_present!(etcd, crate::Harness::etcd(), [$($case),*]);
    };
}

/// The lease cases, listed once: `lease_cases!(then!(args) + [more])` calls
/// `then!(args [the cases, more])`, for every store (`all_stores`, with the two cases that
/// only a lease can pass) and for the lease cases on semaphores (`permit_stores`).
macro_rules! lease_cases {
    ($then:ident!($($args:tt)*) $(+ [$($more:ident),* $(,)?])?) => {
        $then!($($args)* [
            acquire_release_reacquire,
            second_acquirer_is_refused_with_the_holder,
            unusual_names_work_and_bad_names_are_refused,
            metadata_round_trips_exactly,
            release_is_idempotent,
            foreign_lease_id_cannot_renew_or_release,
            renew_extends_the_ttl,
            renew_after_expiry_reports_lost,
            expiry_allows_takeover,
            fencing_token_strictly_increases,
            concurrent_acquirers_exactly_one_wins,
            lost_fires_exactly_once,
            dropped_handle_is_released,
            inspect_and_list,
            force_release_frees_the_lease,
            auto_renew_keeps_the_lease_past_its_duration,
            acquire_waits_for_release,
            wait_runs_out_with_the_holder,
            invalid_durations_are_refused,
            many_leases_are_renewed_in_batches,
            release_wakes_a_waiter,
            force_release_wakes_a_waiter,
            only_one_waiter_wins_each_release,
            expiry_wakes_a_waiter,
            wait_times_out_after_the_wait,
            backoff_limit_caps_the_attempts,
            cancelled_waiter_leaves_nothing_behind,
            hundred_waiters_each_acquire_once,
            events_report_renewals_and_the_loss,
            waiter_never_polls_faster_than_every_100_ms,
            a_repeated_lease_id_is_refused,
            release_after_a_takeover_reports_the_loss,
            force_release_if_removes_only_the_holder_shown,
            close_releases_the_leases_and_stops_renewing,
            close_waits_for_the_release_of_a_dropped_handle,
            leader_is_none_before_anyone_campaigns,
            observers_see_successive_leaders_in_order,
            an_observer_sees_a_leader_expire_without_a_release,
            a_failed_over_election_has_a_higher_term,
            names_that_are_prefixes_of_others_are_separate_elections,
            a_campaign_that_runs_out_names_the_leader,
            bad_identities_are_refused,
            proclaim_replaces_the_metadata_and_keeps_identity_and_term,
            proclaim_does_not_extend_the_expiry,
            proclaim_and_resign_by_a_non_leader_are_refused,
            $($($more,)*)?
        ]);
    };
}

lease_cases!(
    all_stores!()
        + [
            an_observer_sees_a_proclaim_once,
            an_observer_sees_a_new_leader_from_the_feed,
        ]
);

/// The stores that have semaphores so far (the others refuse them with a `Config` error).
macro_rules! semaphore_stores {
    ($($case:ident),* $(,)?) => {
        mod semaphores {
            conformance!(memory, crate::Harness::memory(), [$($case),*]);
            conformance!(sqlite, crate::Harness::sqlite(), [$($case),*]);
            conformance!(redis, crate::Harness::redis(), [$($case),*]);
            conformance!(redis_inline, crate::Harness::redis_inline(), [$($case),*]);
            conformance!(redis_cluster, crate::Harness::redis_cluster(), [$($case),*]);
            conformance_if_present!(postgres, crate::Harness::postgres(), [$($case),*]);
            conformance_if_present!(etcd, crate::Harness::etcd(), [$($case),*]);
        }
    };
}

semaphore_stores!(
    semaphore_never_admits_more_than_its_limit,
    permits_take_distinct_slots_up_to_the_limit,
    a_different_limit_is_refused_naming_both,
    bad_limits_are_refused,
    lowering_the_limit_evicts_nobody_and_admits_nobody_until_below,
    tokens_strictly_increase_and_freed_slots_are_reused,
    a_permit_release_is_owner_checked_and_adds_no_permit,
    an_expired_permit_is_never_renewed_or_re_created,
    a_semaphore_and_a_lease_of_one_name_are_separate,
    semaphores_are_listed_by_prefix_with_their_limits,
    a_huge_limit_with_a_long_name_stays_cheap,
    a_release_wakes_a_permit_waiter,
    a_cancelled_permit_wait_leaves_nothing,
    a_dropped_permit_is_released,
    permits_are_renewed_in_the_background,
    the_last_free_permit_behaves_as_a_mutex,
    a_permit_whose_reply_was_lost_takes_one_slot,
);

/// The lease cases again, each lease served by the last free permit of a semaphore
/// ([`as_permit`]): `as_permit_limit1::redis::...` at limit 1 on every store,
/// `as_permit_limit5::...` at limit 5 with the 4 other permits held.
macro_rules! permit_stores {
    ($module:ident, $wrap:path, [$($case:ident),* $(,)?]) => {
        mod $module {
            conformance!(redis, $wrap(crate::Harness::redis()), [$($case),*]);
            conformance_if_present!(postgres, crate::Harness::postgres().map($wrap), [$($case),*]);
            conformance_if_present!(memory, crate::all_wanted().then(|| $wrap(crate::Harness::memory())), [$($case),*]);
            conformance_if_present!(sqlite, crate::all_wanted().then(|| $wrap(crate::Harness::sqlite())), [$($case),*]);
            conformance_if_present!(redis_inline, crate::all_wanted().then(|| $wrap(crate::Harness::redis_inline())), [$($case),*]);
            conformance_if_present!(redis_cluster, crate::all_wanted().then(|| $wrap(crate::Harness::redis_cluster())), [$($case),*]);
            conformance_if_present!(etcd, crate::Harness::etcd().filter(|_| crate::all_wanted()).map($wrap), [$($case),*]);
        }
    };
    // Limit 5 on Redis (CONFORMANCE_ALL=1: memory, SQLite and PostgreSQL too; not etcd, whose
    // 1,200 extra permits make this variant slow there).
    (@some_only $module:ident, $wrap:path, [$($case:ident),* $(,)?]) => {
        mod $module {
            conformance!(redis, $wrap(crate::Harness::redis()), [$($case),*]);
            conformance_if_present!(memory, crate::all_wanted().then(|| $wrap(crate::Harness::memory())), [$($case),*]);
            conformance_if_present!(sqlite, crate::all_wanted().then(|| $wrap(crate::Harness::sqlite())), [$($case),*]);
            conformance_if_present!(postgres, crate::Harness::postgres().filter(|_| crate::all_wanted()).map($wrap), [$($case),*]);
        }
    };
}

/// Whether the slower variants run too (`CONFORMANCE_ALL=1`). The lease cases on semaphores
/// run in CI at limit 1 on Redis and PostgreSQL and at limit 5 on Redis: each store and limit
/// adds 20-30 s to the suite on the 2-core machine, and every store's own semaphore code is held
/// to the semaphore cases above. With the variable, limit 1 runs on every store and limit 5 on
/// memory, SQLite, Redis and PostgreSQL.
#[must_use]
pub fn all_wanted() -> bool {
    let all = std::env::var("CONFORMANCE_ALL").is_ok_and(|v| v == "1");
    if !all {
        eprintln!("skipped: CONFORMANCE_ALL=1 runs this variant");
    }
    all
}

// The lease cases on semaphores leave two out:
// - an_observer_sees_a_proclaim_once (semaphores have no proclaim, and the Redis
// and in-memory stores tell a proclaim of a permit's record under the record's own name,
// the others under the semaphore's, which the adapter's watch_changes watches: seen
// failing on Redis, its twin, Redis Cluster and memory).
// - an_observer_sees_a_new_leader_from_the_feed (a permit acquire is never
// announced: PermitRequest has no `announce`, so where the feed carries only announced
// acquisitions, Redis, PostgreSQL and memory, an observer sees a new holder only by its
// poll, 3.5 s).
lease_cases!(permit_stores!(as_permit_limit1, crate::Harness::semaphore1,));
lease_cases!(permit_stores!(@some_only as_permit_limit5, crate::Harness::semaphore5,));
