//! A real etcd cluster on loopback (Debian's `etcd` binary, members started and
//! killed as child processes) and Jetway nodes started on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{http_get_blocking, Proc};

const START_WAIT: Duration = Duration::from_secs(30);

/// A port for an etcd member, from below the kernel's ephemeral range (32768 and up
/// by default): a port the kernel hands out for port 0 and that is released again can
/// be taken, before etcd binds it, as the source port of any outgoing connection on
/// the machine (a node's to etcd, another test's), and that member then never starts.
fn free_port(taken: &[u16]) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        // a fresh random key per call
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if !taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    child: Option<Child>,
}

pub struct Etcd {
    members: Vec<Member>,
    initial: String,
    token: String,
    _root: tempfile::TempDir,
}

impl Etcd {
    /// Starts an `n`-member cluster and waits until every member is healthy.
    pub fn start(n: usize) -> Etcd {
        let root = tempfile::tempdir().expect("tempdir");
        let mut ports = Vec::new();
        for _ in 0..2 * n {
            ports.push(free_port(&ports));
        }
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("e{i}"),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
                dir: root.path().join(format!("e{i}")),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            members,
            initial,
            token: super::unique_name("jetway-test-"),
            _root: root,
        };
        for i in 0..n {
            etcd.spawn(i, "new");
        }
        for i in 0..n {
            etcd.wait_healthy(i);
        }
        etcd
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new(etcd_binary())
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd (apt-get install etcd-server)");
        self.members[i].child = Some(child);
    }

    fn wait_healthy(&mut self, i: usize) {
        let addr: SocketAddr = ([127, 0, 0, 1], self.members[i].client).into();
        let deadline = Instant::now() + START_WAIT;
        loop {
            if http_get_blocking(addr, "/health")
                .is_some_and(|(code, body)| code == 200 && body.contains("true"))
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.members[i].child.as_mut().map(Child::try_wait) {
                panic!(
                    "etcd member {i} exited before it was healthy ({status}; ports {} and {})",
                    self.members[i].client, self.members[i].peer
                );
            }
            assert!(
                Instant::now() < deadline,
                "etcd member {i} not healthy in time"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client)
    }

    /// Stops member `i` (SIGSTOP) until [`Etcd::resume`]: its clients' requests and
    /// watches wait, as behind a slow network.
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.members[i].child.as_ref().expect("member running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, "existing");
        self.wait_healthy(i);
    }

    /// The index of the current leader, as the members see it.
    pub fn leader(&self) -> Option<usize> {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let out = Command::new("etcdctl")
                .args([
                    "--endpoints",
                    &format!("http://127.0.0.1:{}", m.client),
                    "endpoint",
                    "status",
                    "-w",
                    "json",
                ])
                .env("ETCDCTL_API", "3")
                .output()
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let status = &v[0]["Status"];
            let (me, leader) = (&status["header"]["member_id"], &status["leader"]);
            if !leader.is_null() && me == leader {
                return self.members.iter().position(|x| x.client == m.client);
            }
        }
        None
    }

    /// Waits until some member is the leader and returns it.
    pub fn wait_leader(&self) -> usize {
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Some(l) = self.leader() {
                return l;
            }
            assert!(Instant::now() < deadline, "no etcd leader in time");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn etcd_binary() -> String {
    std::env::var("JETWAY_ETCD_BIN").unwrap_or_else(|_| "etcd".into())
}

/// Starts a Jetway node on the cluster (its own key prefix `prefix`).
pub fn node(etcd: &Etcd, prefix: &str, extra: &[&str]) -> Proc {
    node_with_env(etcd, prefix, extra, &[])
}

/// [`node`] with extra environment variables (secrets, the admin password).
pub fn node_with_env(etcd: &Etcd, prefix: &str, extra: &[&str], envs: &[(&str, &str)]) -> Proc {
    let dir = super::data_dir();
    let endpoints = etcd.endpoints();
    let mut args = vec![
        "--store",
        "etcd",
        "--etcd-endpoints",
        &endpoints,
        "--etcd-prefix",
        prefix,
    ];
    args.extend_from_slice(extra);
    Proc::start_with_env(&dir, &args, envs)
}
