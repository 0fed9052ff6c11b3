//! The test servers themselves: moto answers S3 requests and logs them,
//! sshd lets the generated client key in as root and is known by the
//! generated known_hosts.

mod common;

use common::servers::{Moto, Sshd};
use std::process::Command;

#[test]
fn moto_creates_a_bucket_and_logs_the_request() {
    let Some(moto) = Moto::start() else { return };
    assert!(
        moto.requests().is_empty(),
        "start-up probes are not reported"
    );
    moto.create_bucket("smoke");
    assert_eq!(moto.requests(), [("PUT".to_owned(), "/smoke".to_owned())]);
    moto.reset_requests();
    assert!(
        moto.requests().is_empty(),
        "reset_requests forgets older requests"
    );
    assert!(moto.endpoint().starts_with("http://127.0.0.1:"));
}

#[test]
fn sshd_lets_the_client_key_in() {
    let Some(sshd) = Sshd::start() else { return };
    assert!(sshd.host_fingerprint().starts_with("SHA256:"));
    let known_hosts = format!("UserKnownHostsFile={}", sshd.known_hosts().display());
    let out = Command::new("ssh")
        .arg("-i")
        .arg(sshd.key_path())
        .args(["-o", &known_hosts, "-o", "StrictHostKeyChecking=yes"])
        // Never prompt, and offer no key but the generated one.
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .args(["-p", &sshd.port().to_string()])
        .arg(format!("{}@127.0.0.1", sshd.user()))
        .arg("true")
        .output()
        .expect("run ssh");
    assert!(
        out.status.success(),
        "ssh failed ({}): {}\nsshd's log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
}
