//! Redis for the tests: the shared server named by `REDIS_URL` (each test under a key prefix of
//! its own), and private `redis-server` processes on free ports that a test may kill, freeze and
//! restart. The shared server is never stopped, frozen or flushed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

const HOW_TO_START: &str = "start it with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" \
     --appendonly no (install it with: apt-get install redis-server), or set REDIS_URL";

/// A key prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("sqlacache_t_{name}_{}_{nanos}_{n}", std::process::id())
}

/// Waits until every pool has Redis and (with two tiers) has heard the bus.
pub async fn tiers_ready(pools: &[&sqlacache_sqlx::CachedPool]) {
    use sqlacache_sqlx::testing::Probe as _;
    let start = Instant::now();
    while !pools.iter().all(|p| p.tiers_ready_for_tests()) {
        // Only against hanging: on a loaded machine, a heartbeat that outlasts a short timeout
        // opens the breaker for the settling time (reads go to PostgreSQL meanwhile), so
        // readiness can take a while.
        assert!(start.elapsed() < Duration::from_secs(90), "the pools did not connect to Redis");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether a Redis answers `PING` at `port` within `wait`.
fn answers(port: u16, wait: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), wait) else { return false };
    let _ = stream.set_read_timeout(Some(wait));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// Fails the test, saying how to start Redis, unless the shared Redis answers.
pub fn require_shared_redis() {
    let url = redis_url();
    let port = url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).unwrap_or(6379);
    assert!(answers(port, Duration::from_secs(2)), "cannot reach Redis at {url}: {HOW_TO_START}");
}

/// A `redis-server` of the test's own, stopped by pid when dropped.
pub struct RedisServer {
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port with no persistence and these extra arguments
    /// (`["--maxmemory", "1mb"]`).
    pub fn start(args: &[&str]) -> RedisServer {
        RedisServer::start_on(free_port(), args)
    }

    /// Starts a server on `port` (one that clients were already told of, say).
    pub fn start_on(port: u16, args: &[&str]) -> RedisServer {
        let mut server = RedisServer { port, args: args.iter().map(|a| a.to_string()).collect(), child: None };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server: {e} (install it with: apt-get install redis-server)"));
        self.child = Some(child);
        let start = Instant::now();
        while !answers(self.port, Duration::from_millis(200)) {
            assert!(start.elapsed() < Duration::from_secs(10), "redis-server on port {} did not come up", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill").args([signal, &child.id().to_string()]).status().expect("run kill");
            assert!(status.success(), "kill {signal} failed");
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen server.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Closes every subscriber connection (`CLIENT KILL TYPE pubsub`); the server keeps running.
    pub fn kill_subscribers(&self) {
        let status = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "CLIENT", "KILL", "TYPE", "pubsub"])
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e} (install it with: apt-get install redis-tools)"));
        assert!(status.success(), "CLIENT KILL failed");
    }

    /// Kills the server; its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts an empty one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters on loopback ports, stopped when dropped.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    dirs: Vec<std::path::PathBuf>,
}

impl RedisCluster {
    /// Starts three cluster-enabled servers and joins them (`redis-cli --cluster create`).
    pub fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..3 {
            let dir = std::env::temp_dir().join(unique_prefix(&format!("cluster{i}")));
            std::fs::create_dir_all(&dir).expect("a directory for the node");
            let dir_arg = dir.to_string_lossy().into_owned();
            nodes.push(RedisServer::start(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--dir",
                &dir_arg,
            ]));
            dirs.push(dir);
        }
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e} (install it with: apt-get install redis-tools)"));
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes, dirs };
        let start = Instant::now();
        while !cluster.nodes.iter().all(|n| cluster_ok(n.port())) {
            assert!(start.elapsed() < Duration::from_secs(20), "the cluster did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// Node `i` (0 to 2), to freeze or kill.
    pub fn node(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// `redis-cluster://127.0.0.1:<port of the first node>`.
    pub fn url(&self) -> String {
        format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port())
    }
}

fn cluster_ok(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "cluster", "info"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok"))
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A TCP proxy in front of a Redis, so a test can cut one client off while others still reach
/// the server: [`Proxy::block`] closes its connections and refuses new ones.
pub struct Proxy {
    port: u16,
    blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// While set, nothing reaches subscriber connections, and nothing says so (a half-open
    /// connection).
    silenced: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Forwards `127.0.0.1:<a free port>` to `127.0.0.1:<target>`.
    pub fn start(target: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("bound").port();
        let proxy = Proxy { port, blocked: Default::default(), silenced: Default::default(), open: Default::default() };
        let (blocked, silenced, open) = (proxy.blocked.clone(), proxy.silenced.clone(), proxy.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if blocked.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is closed at once
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                let mut list = open.lock().unwrap_or_else(|e| e.into_inner());
                for stream in [&client, &server] {
                    if let Ok(clone) = stream.try_clone() {
                        list.push(clone);
                    }
                }
                // Whether this client subscribed (it sent SUBSCRIBE or SSUBSCRIBE).
                let subscriber = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let directions =
                    [(true, client.try_clone(), server.try_clone()), (false, server.try_clone(), client.try_clone())];
                for (upstream, from, to) in directions {
                    let (Ok(mut from), Ok(mut to)) = (from, to) else { continue };
                    let (subscriber, silenced) = (subscriber.clone(), silenced.clone());
                    std::thread::spawn(move || {
                        let mut buffer = [0u8; 16 * 1024];
                        while let Ok(n @ 1..) = from.read(&mut buffer) {
                            let chunk = &buffer[..n];
                            if upstream && chunk.windows(9).any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE")) {
                                subscriber.store(true, Ordering::SeqCst);
                            }
                            while !upstream && subscriber.load(Ordering::SeqCst) && silenced.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(2));
                            }
                            if to.write_all(chunk).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        proxy
    }

    /// The port it listens on (for a PostgreSQL pool through it, say).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Closes every connection through the proxy and refuses new ones.
    pub fn block(&self) {
        self.blocked.store(true, std::sync::atomic::Ordering::SeqCst);
        for stream in self.open.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Holds back everything the server sends to subscriber connections, without closing them
    /// or saying anything: they look alive and hear nothing.
    pub fn silence_subscribers(&self) {
        self.silenced.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Delivers to subscriber connections again (what was held back arrives first).
    pub fn unsilence_subscribers(&self) {
        self.silenced.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lets connections through again.
    pub fn unblock(&self) {
        self.blocked.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.block();
    }
}

/// A certificate authority and a server certificate for `localhost` and `127.0.0.1`, made with
/// the `openssl` command in a directory of their own (removed when dropped).
pub struct TlsFiles {
    /// The directory holding `ca.crt`, `server.crt` and `server.key`.
    pub dir: std::path::PathBuf,
}

impl TlsFiles {
    /// Makes the files.
    pub fn create() -> TlsFiles {
        let dir = std::env::temp_dir().join(unique_prefix("tls"));
        std::fs::create_dir_all(&dir).expect("a directory for the certificates");
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("write ext.cnf");
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=sqlacache test CA",
            ],
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
            &[
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
            ],
        ];
        for args in steps {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("cannot run openssl: {e} (install it with: apt-get install openssl)"));
            assert!(status.success(), "openssl {args:?} failed");
        }
        TlsFiles { dir }
    }

    /// Arguments that make a `redis-server` also listen with TLS on `port`.
    pub fn server_args(&self, port: u16) -> Vec<String> {
        let file = |name: &str| self.dir.join(name).to_string_lossy().into_owned();
        vec![
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            file("server.crt"),
            "--tls-key-file".into(),
            file("server.key"),
            "--tls-ca-cert-file".into(),
            file("ca.crt"),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }

    /// The CA certificate, for `SSL_CERT_FILE`.
    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.join("ca.crt")
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}
