//! Test harness: private `redis-server` processes on free loopback ports, stopped by pid.
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
        #[allow(unsafe_code)] // the one way to set PR_SET_PDEATHSIG on the child
        // SAFETY: prctl is async-signal-safe; it only sets a flag on the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
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
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let ports: Vec<u16> = (0..3).map(|_| free_port(true)).collect();
            let mut children = Vec::new();
            for p in &ports {
                let dir = temp_dir("cluster");
                let conf = dir.join("nodes.conf");
                children.push(spawn_server(
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
                ));
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
