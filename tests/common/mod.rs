//! Test harness: private `redis-server` and PostgreSQL processes on free loopback ports, stopped
//! by pid.
//!
//! Single servers are started per test and killed on drop. A shared server or cluster for a
//! whole test binary is started from a keeper thread that lives as long as the process, with
//! `PR_SET_PDEATHSIG`, so the kernel kills it when the test process ends however it ends.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

pub mod cut_proxy;

/// A free loopback port (and, with `bus`, port + 10000 free too, for cluster nodes).
pub fn free_port(bus: bool) -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if !bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Sends one inline command and returns the raw reply.
pub fn raw_command(port: u16, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn wait_ping(port: u16) {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if raw_command(port, "PING").is_some_and(|r| r.starts_with("+PONG")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer PING within 20 s");
}

/// Makes the kernel kill the child when the thread that spawns it ends (`PR_SET_PDEATHSIG`).
fn kill_with_parent(cmd: &mut Command) {
    #[allow(unsafe_code)] // the one way to set PR_SET_PDEATHSIG on the child
    // SAFETY: prctl is async-signal-safe; it only sets a flag on the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn spawn_server(port: u16, dir: &PathBuf, extra: &[&str], die_with_parent: bool) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .arg("--dir")
    .arg(dir)
    .args(extra)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if die_with_parent {
        kill_with_parent(&mut cmd);
    }
    cmd.spawn()
        .expect("redis-server must be installed (scripts/test.sh installs it)")
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dl-test-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One private Redis server, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let port = free_port(false);
        let dir = temp_dir("redis");
        let child = spawn_server(port, &dir, extra, false);
        wait_ping(port);
        Self { port, child, dir }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one command through redis-cli and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 3-master Redis Cluster shared by a whole test binary.
pub struct SharedCluster {
    pub ports: Vec<u16>,
}

impl SharedCluster {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }
}

/// Starts the binary's cluster once, from a keeper thread that never exits.
pub fn shared_cluster() -> &'static SharedCluster {
    static CLUSTER: OnceLock<SharedCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        remove_stale_dirs("dl-test-cluster-", "server.pid");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let ports: Vec<u16> = (0..3).map(|_| free_port(true)).collect();
            let mut children = Vec::new();
            for p in &ports {
                let dir = temp_dir("cluster");
                let conf = dir.join("nodes.conf");
                let child = spawn_server(
                    *p,
                    &dir,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        conf.to_str().unwrap(),
                        "--cluster-node-timeout",
                        "2000",
                    ],
                    true,
                );
                // For the next run's remove_stale_dirs: this directory outlives its server.
                let _ = std::fs::write(dir.join("server.pid"), child.id().to_string());
                children.push(child);
            }
            for p in &ports {
                wait_ping(*p);
            }
            let mut create = Command::new("redis-cli");
            create.arg("--cluster").arg("create");
            for p in &ports {
                create.arg(format!("127.0.0.1:{p}"));
            }
            let out = create
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .output()
                .expect("redis-cli");
            assert!(
                out.status.success(),
                "cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                let ok = ports.iter().all(|p| {
                    raw_command(*p, "CLUSTER INFO").is_some_and(|r| r.contains("cluster_state:ok"))
                });
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < until,
                    "cluster did not reach cluster_state:ok"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            tx.send(ports).unwrap();
            // Keep the children (and this thread, which PDEATHSIG watches) for the process's life.
            loop {
                std::thread::park();
                let _ = &children;
            }
        });
        SharedCluster {
            ports: rx.recv().expect("cluster start failed"),
        }
    })
}

/// The PostgreSQL binaries (`initdb`, `postgres`, `pg_isready`): `$PG_BIN` if set, else the
/// newest `/usr/lib/postgresql/<version>/bin` (Debian keeps them off PATH).
pub fn postgres_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// Whether PostgreSQL tests must run: the binaries are there, or this is CI (where a missing
/// server is a failure, not a skip: scripts/test.sh installs it).
pub fn postgres_wanted() -> bool {
    postgres_bin_dir().is_some() || std::env::var_os("CI").is_some()
}

/// The user PostgreSQL runs as (it refuses root): `dl-postgres`, a system user created here if
/// missing, when the tests run as root; else the current user. `(uid, gid)` to switch to.
fn postgres_user() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").ok()?.uid() != 0 {
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id")
            .args([flag, "dl-postgres"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        // Several test binaries may race to create it: a failure is fine if the user exists.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg("dl-postgres")
            .status();
    }
    Some((
        id("-u").expect("cannot create the system user dl-postgres (useradd)"),
        id("-g").expect("group of dl-postgres"),
    ))
}

/// Removes the directories named `<tmp>/<prefix>*` of earlier runs whose server is gone: its
/// pid (the first line of `pid_file` in the directory) names no process, or, with no pid
/// file, the directory is over an hour old. A shared server is killed, not stopped, when its
/// test binary exits, so its directory stays behind.
fn remove_stale_dirs(prefix: &str, pid_file: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let pid = std::fs::read_to_string(path.join(pid_file))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        let dead = pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists());
        if dead || (pid.is_none() && old) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// A throwaway CA (`ca.crt`) and a server certificate for 127.0.0.1 and localhost signed by it
/// (`server.crt`, `server.key`: mode 0600, owned by the server's user, as PostgreSQL requires).
fn make_tls_material(dir: &std::path::Path, user: Option<(u32, u32)>) {
    use std::os::unix::fs::PermissionsExt;
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl must be installed (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca = [
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=dl-test-ca",
    ];
    openssl(&[&["req", "-x509"][..], &ec, &ca].concat());
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    if let Some((uid, gid)) = user {
        for f in ["server.key", "server.crt"] {
            std::os::unix::fs::chown(dir.join(f), Some(uid), Some(gid)).unwrap();
        }
    }
}

/// The password of the `postgres` superuser of test servers (scram-sha-256 on 127.0.0.1).
pub const POSTGRES_PASSWORD: &str = "dl-test-pw";

/// One private PostgreSQL server (initdb in a temp dir, run as an unprivileged user, TCP on a
/// free loopback port with password authentication, its Unix socket in the temp dir).
pub struct PostgresServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl PostgresServer {
    /// Starts a server killed when dropped.
    ///
    /// # Panics
    /// When the binaries are missing or the server does not start.
    pub fn start() -> Self {
        Self::start_with(false, false)
    }

    /// Starts a server that also accepts TLS (`ssl=on`), with a certificate for 127.0.0.1 and
    /// localhost signed by a throwaway CA ([`Self::ca_file`]); killed when dropped.
    pub fn start_tls() -> Self {
        Self::start_with(false, true)
    }

    /// The CA that signed the certificate of a [`Self::start_tls`] server.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn start_with(die_with_parent: bool, tls: bool) -> Self {
        let bin = postgres_bin_dir().expect(
            "PostgreSQL binaries are missing: apt-get install postgresql (scripts/test.sh does)",
        );
        remove_stale_dirs("dl-test-pg-", "data/postmaster.pid");
        let user = postgres_user();
        let dir = temp_dir("pg");
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, POSTGRES_PASSWORD).unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        }
        let as_user = |program: &str| {
            let mut cmd = Command::new(bin.join(program));
            if let Some((uid, gid)) = user {
                cmd.uid(uid).gid(gid);
            }
            cmd.current_dir(&dir);
            cmd
        };
        let data = dir.join("data");
        let out = as_user("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port(false);
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let mut cmd = as_user("postgres");
        if tls {
            make_tls_material(&dir, user);
            cmd.args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!(
                    "ssl_cert_file={}",
                    dir.join("server.crt").display()
                ))
                .arg("-c")
                .arg(format!("ssl_key_file={}", dir.join("server.key").display()));
        }
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .arg("-k")
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "max_connections=300"])
            .stdout(Stdio::null())
            .stderr(log);
        if die_with_parent {
            kill_with_parent(&mut cmd);
        }
        let child = cmd.spawn().expect("postgres");
        let server = Self {
            port,
            child: Some(child),
            dir,
        };
        server.wait_ready(&bin);
        server
    }

    fn wait_ready(&self, bin: &std::path::Path) {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "postgres on port {} did not become ready within 60 s: {}",
            self.port,
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
    }

    /// The URL of the `postgres` database as the superuser, with its password, without TLS.
    pub fn url(&self) -> String {
        format!(
            "postgresql://postgres:{POSTGRES_PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The PostgreSQL server shared by a whole test binary (tests use unique lease names), started
/// once from a keeper thread that never exits (`PR_SET_PDEATHSIG` watches that thread).
pub fn shared_postgres() -> &'static PostgresServer {
    static SERVER: OnceLock<PostgresServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut server = PostgresServer::start_with(true, false);
            let child = server.child.take();
            tx.send(server).unwrap();
            loop {
                std::thread::park();
                let _ = &child;
            }
        });
        rx.recv().expect("PostgreSQL start failed")
    })
}

/// Whether etcd tests must run: `etcd` is installed, or this is CI (where a missing binary is a
/// failure, not a skip: scripts/test.sh installs it).
pub fn etcd_wanted() -> bool {
    etcd_installed() || std::env::var_os("CI").is_some()
}

/// Whether the `etcd` binary is on PATH.
pub fn etcd_installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One member of an [`EtcdCluster`].
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

/// A private etcd cluster of several members on free loopback ports, each with a data
/// directory under one temporary directory; killed (by pid) and removed on drop.
pub struct EtcdCluster {
    pub dir: PathBuf,
    pub members: Vec<EtcdMember>,
    initial: String,
    die_with_parent: bool,
    /// Clients over HTTPS with a certificate of a throwaway CA (`ca_file`).
    tls: bool,
}

/// Where etcd data directories go: `/dev/shm` when there is one (etcd syncs every write to
/// disk; on tmpfs that costs nothing, so a test's hundreds of acquisitions stay fast), else the
/// temporary directory.
fn etcd_base_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() && tempfile_ok(&shm) {
        shm
    } else {
        std::env::temp_dir()
    }
}

fn tempfile_ok(dir: &std::path::Path) -> bool {
    let probe = dir.join(format!("dl-probe-{}", uuid::Uuid::new_v4()));
    let ok = std::fs::create_dir(&probe).is_ok();
    let _ = std::fs::remove_dir(&probe);
    ok
}

/// Removes the directories of clusters whose test process is gone (killed before its drop).
fn remove_stale_etcd_dirs() {
    let Ok(entries) = std::fs::read_dir(etcd_base_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("dl-etcd-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl EtcdCluster {
    /// A cluster of `n` members, killed on drop.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, false, false)
    }

    /// A cluster of `n` members whose clients use HTTPS with a certificate for 127.0.0.1
    /// signed by a throwaway CA ([`Self::ca_file`]).
    pub fn start_tls(n: usize) -> Self {
        Self::start_with(n, false, true)
    }

    /// The CA of a cluster started by [`Self::start_tls`].
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn start_with(n: usize, die_with_parent: bool, tls: bool) -> Self {
        remove_stale_etcd_dirs();
        let dir = etcd_base_dir().join(format!(
            "dl-etcd-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let members: Vec<EtcdMember> = (0..n)
            .map(|i| EtcdMember {
                name: format!("m{i}"),
                client_port: free_port(false),
                peer_port: free_port(false),
                data_dir: dir.join(format!("m{i}")),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        if tls {
            make_tls_material(&dir, None);
        }
        let mut cluster = Self {
            dir,
            members,
            initial,
            die_with_parent,
            tls,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy();
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let token = self.dir.file_name().unwrap().to_string_lossy().into_owned();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))
            .unwrap();
        let scheme = if self.tls { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-token", &token])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if self.tls {
            cmd.arg("--cert-file")
                .arg(self.dir.join("server.crt"))
                .arg("--key-file")
                .arg(self.dir.join("server.key"));
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if self.die_with_parent {
            kill_with_parent(&mut cmd);
        }
        m.child = Some(
            cmd.spawn()
                .expect("etcd must be installed (scripts/test.sh installs etcd-server)"),
        );
    }

    /// `etcd://127.0.0.1:<port>,...` of every member (`etcds://` for a TLS cluster).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "etcds" } else { "etcd" };
        format!("{scheme}://{}", self.endpoints())
    }

    /// `127.0.0.1:<port>,...` of every member.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The pid of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Kills member `i` (SIGKILL) and waits for it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} still runs");
        self.spawn(i);
    }

    /// Waits (up to 60 s) until every running member reports itself healthy (a leader is
    /// elected and it has caught up).
    pub fn wait_healthy(&self) {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let healthy = if self.tls {
                Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .arg(format!("--endpoints={}", self.endpoints()))
                    .arg("--cacert")
                    .arg(self.ca_file())
                    .args(["endpoint", "health"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            } else {
                self.members.iter().filter(|m| m.child.is_some()).all(|m| {
                    http_get(m.client_port, "/health")
                        .is_some_and(|b| b.contains("\"health\":\"true\""))
                })
            };
            if healthy {
                return;
            }
            assert!(
                Instant::now() < until,
                "etcd cluster in {} not healthy within 60 s",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `etcdctl` (API v3) against the running members; its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect();
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(args)
            .output()
            .expect("etcdctl must be installed (scripts/test.sh installs etcd-client)");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The body of `GET path` on a loopback port (HTTP/1.0), or `None` if it does not answer.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The shared cluster's member pids and directory, for [`remove_shared_etcd`].
static SHARED_ETCD: OnceLock<(Vec<u32>, PathBuf)> = OnceLock::new();

/// At exit: kills the shared cluster's members and removes its directory.
extern "C" fn remove_shared_etcd() {
    if let Some((pids, dir)) = SHARED_ETCD.get() {
        for pid in pids {
            #[allow(unsafe_code)]
            // SAFETY: kill and waitpid on our own children's pids; no memory is touched.
            unsafe {
                libc::kill(i32::try_from(*pid).unwrap_or(0), libc::SIGKILL);
                libc::waitpid(i32::try_from(*pid).unwrap_or(0), std::ptr::null_mut(), 0);
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The etcd cluster (three members) shared by a whole test binary (tests use unique lease
/// names), started once from a keeper thread that never exits (`PR_SET_PDEATHSIG` watches
/// that thread, so the members die with the process however it ends); at a normal exit its
/// members are killed and its directory removed, else the next binary that starts a cluster
/// removes it.
pub fn shared_etcd() -> &'static EtcdCluster {
    static CLUSTER: OnceLock<EtcdCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        remove_stale_dirs("dl-test-cluster-", "server.pid");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut cluster = EtcdCluster::start_with(3, true, false);
            let children: Vec<Option<Child>> =
                cluster.members.iter_mut().map(|m| m.child.take()).collect();
            let pids = children.iter().flatten().map(Child::id).collect();
            let _ = SHARED_ETCD.set((pids, cluster.dir.clone()));
            #[allow(unsafe_code)]
            // SAFETY: registers a plain extern "C" function to run at exit.
            unsafe {
                libc::atexit(remove_shared_etcd);
            }
            tx.send(cluster).unwrap();
            loop {
                std::thread::park();
                let _ = &children;
            }
        });
        rx.recv().expect("etcd cluster start failed")
    })
}
