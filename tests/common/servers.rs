//! Real servers for the remote-replica tests, each on 127.0.0.1 on a free
//! port and killed when dropped: moto's S3 server and an OpenSSH server
//! with SFTP. Where one cannot be had (not installed, not root), `start`
//! prints `skipped: <why>` and gives `None`, and the test returns.

use super::mounts::sh;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer after it is started (moto imports
/// a large Python package first).
const START_DEADLINE: Duration = Duration::from_secs(15);

/// Another process may take the free port between our probe and the
/// server's bind; a fresh port is tried this many times in all.
const START_ATTEMPTS: usize = 5;

const POLL: Duration = Duration::from_millis(50);

/// A port nothing listens on now: the kernel's pick for a socket bound to
/// port 0, released again for the server to take.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a free port");
    listener
        .local_addr()
        .expect("local address of a socket")
        .port()
}

/// Whether `program` is an executable file in one of PATH's folders.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        fs::metadata(dir.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn read_text(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn log_file(path: &Path) -> fs::File {
    fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `ready` until it holds, the child ends (its port was taken, or
/// it failed) or the deadline passes. `Err` says which, for the retry or
/// the panic message.
fn wait_until(child: &mut Child, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("exited early ({status})")),
            Ok(None) => {}
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
        if ready() {
            return Ok(());
        }
        if start.elapsed() > START_DEADLINE {
            kill(child);
            return Err(format!("not ready within {START_DEADLINE:?}"));
        }
        std::thread::sleep(POLL);
    }
}

/// One HTTP/1.1 request with an empty body; the status code and the body.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(START_DEADLINE))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response: {response:?}"),
            )
        })?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}

// ---------------------------------------------------------------------------
// moto (S3)
// ---------------------------------------------------------------------------

/// moto's server (`moto_server` from PyPI's `moto[server]`), answering S3
/// requests without checking their signatures.
pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
    /// Requests before this many in the log are not reported by `requests`.
    mark: std::cell::Cell<usize>,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Option<Moto> {
        if !on_path("moto_server") {
            eprintln!("skipped: moto_server not installed");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("treesync-moto-")
            .tempdir()
            .expect("temp dir for moto");
        let log = dir.path().join("moto.log");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            // The access log goes to stderr; stdout only carries the same
            // start-up banner, kept in the same file for diagnosis.
            let file = log_file(&log);
            let mut child = Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("duplicate the moto log handle"))
                .stderr(file)
                .spawn()
                .expect("spawn moto_server");
            // Our own probe must show up in our server's log: an answer
            // alone could come from another server that took the port.
            let ready = wait_until(&mut child, || {
                http(port, "GET", "/").is_ok()
                    && parse_requests(&read_text(&log)).contains(&("GET".into(), "/".into()))
            });
            match ready {
                Ok(()) => {
                    let moto = Moto {
                        child,
                        port,
                        log,
                        mark: std::cell::Cell::new(0),
                        _dir: dir,
                    };
                    moto.reset_requests();
                    return Some(moto);
                }
                Err(why) => failures.push(format!("port {port}: {why}\n{}", read_text(&log))),
            }
        }
        panic!("moto_server did not start:\n{}", failures.join("\n"));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (in us-east-1, which needs no location).
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = http(self.port, "PUT", &format!("/{name}"))
            .unwrap_or_else(|e| panic!("PUT /{name} to moto: {e}"));
        assert_eq!(status, 200, "moto refused to create bucket {name}: {body}");
    }

    /// `(method, path with query)` of every request since the start or the
    /// last `reset_requests`, oldest first.
    pub fn requests(&self) -> Vec<(String, String)> {
        let all = parse_requests(&read_text(&self.log));
        all.into_iter().skip(self.mark.get()).collect()
    }

    /// Later calls to `requests` report only requests after this one.
    pub fn reset_requests(&self) {
        self.mark.set(parse_requests(&read_text(&self.log)).len());
    }

    /// Credentials and region for the processes that talk to this server:
    /// moto takes any key, but the clients insist on having one, and must
    /// not wait on an instance-metadata service that is not there.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// The requests of werkzeug's access log, whose lines read
/// `127.0.0.1 - - [date] "GET /bucket?list-type=2 HTTP/1.1" 200 -`.
fn parse_requests(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("] \"")?;
            let (request, _) = rest.split_once('"')?;
            let mut words = request.split(' ');
            let method = words.next()?;
            let path = words.next()?;
            let version = words.next()?;
            version
                .starts_with("HTTP/")
                .then(|| (method.to_owned(), path.to_owned()))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// OpenSSH (SFTP)
// ---------------------------------------------------------------------------

/// An OpenSSH server that lets `root` in with a key of its own, with the
/// in-process SFTP server. Everything it uses lives in one temp folder.
pub struct Sshd {
    child: Child,
    port: u16,
    fingerprint: String,
    dir: tempfile::TempDir,
}

impl Sshd {
    pub fn start() -> Option<Sshd> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !super::is_root_user() {
            eprintln!("skipped: sshd needs root (to log in as root)");
            return None;
        }
        if !sshd.exists() {
            eprintln!("skipped: /usr/sbin/sshd not installed");
            return None;
        }
        if !on_path("ssh-keygen") {
            eprintln!("skipped: ssh-keygen not installed");
            return None;
        }
        // sshd refuses to start without its privilege-separation folder,
        // which only the distribution's service unit creates.
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");

        let dir = tempfile::Builder::new()
            .prefix("treesync-sshd-")
            .tempdir()
            .expect("temp dir for sshd");
        let at = |name: &str| dir.path().join(name);
        keygen(&at("host_ed25519"));
        keygen(&at("client_ed25519"));
        fs::copy(at("client_ed25519.pub"), at("authorized_keys")).expect("write authorized_keys");
        let fingerprint = sh(
            "ssh-keygen",
            &["-lf".as_ref(), at("host_ed25519.pub").as_os_str()],
        )
        .unwrap_or_else(|e| panic!("host key fingerprint: {e}"))
        .split_whitespace()
        .nth(1)
        .expect("ssh-keygen -lf prints `bits fingerprint comment (type)`")
        .to_owned();
        let host_key = read_text(&at("host_ed25519.pub"));
        // The comment (user@host) is not part of a known_hosts entry.
        let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();

        let log = at("sshd.log");
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let config = format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {host}\n\
                 AuthorizedKeysFile {keys}\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PidFile {pid}\n\
                 Subsystem sftp internal-sftp\n",
                host = at("host_ed25519").display(),
                keys = at("authorized_keys").display(),
                pid = at("sshd.pid").display(),
            );
            fs::write(at("sshd_config"), config).expect("write sshd_config");
            fs::write(
                at("known_hosts"),
                format!("[127.0.0.1]:{port} {}\n", host_key.join(" ")),
            )
            .expect("write known_hosts");
            // sshd re-executes itself for each connection, so it must be
            // started by its absolute path.
            let mut child = Command::new(sshd)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(at("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&log))
                .spawn()
                .expect("spawn /usr/sbin/sshd");
            // The listening line tells the port is ours, the banner that
            // sshd serves on it.
            let listening = format!("Server listening on 127.0.0.1 port {port}.");
            let ready = wait_until(&mut child, || {
                read_text(&log).contains(&listening) && has_ssh_banner(port)
            });
            match ready {
                Ok(()) => {
                    return Some(Sshd {
                        child,
                        port,
                        fingerprint,
                        dir,
                    })
                }
                Err(why) => failures.push(format!("port {port}: {why}\n{}", read_text(&log))),
            }
        }
        panic!("sshd did not start:\n{}", failures.join("\n"));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &'static str {
        "root"
    }

    /// The client's private key, which `authorized_keys` lets in.
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("client_ed25519")
    }

    /// A known_hosts file naming this server's host key for
    /// `[127.0.0.1]:PORT`.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// The host key's fingerprint as `ssh-keygen -l` prints it
    /// (`SHA256:...`).
    pub fn host_fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// What sshd logged so far (connections, authentication, SFTP
    /// sessions), for a failing test to show.
    pub fn log(&self) -> String {
        read_text(&self.dir.path().join("sshd.log"))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// An ed25519 key pair without a passphrase at `path` and `path.pub`.
fn keygen(path: &Path) {
    let args: [&std::ffi::OsStr; 9] = [
        "-q".as_ref(),
        "-t".as_ref(),
        "ed25519".as_ref(),
        "-N".as_ref(),
        "".as_ref(),
        "-C".as_ref(),
        "treesync-test".as_ref(),
        "-f".as_ref(),
        path.as_os_str(),
    ];
    sh("ssh-keygen", &args).unwrap_or_else(|e| panic!("generate {}: {e}", path.display()));
}

/// Whether a connection to `port` is greeted with an SSH-2.0 banner.
fn has_ssh_banner(port: u16) -> bool {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_err()
    {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("SSH-2.0-")
}
