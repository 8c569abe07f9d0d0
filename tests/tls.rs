//! `wss://` against the dev hub serving TLS with a certificate from a private test CA:
//! trusted through `ca_file`, refused (and retried, not crashed) without it.
#![cfg(unix)]

mod common;

use std::path::Path;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::json;

/// Writes ca.pem, hub.pem and hub.key: a CA and a hub certificate for localhost/127.0.0.1.
fn make_certificates(dir: &Path) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "agentcom test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("hub.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("hub.key"), key.serialize_pem()).unwrap();
}

fn tls_hub(dir: &Path) -> DevHub {
    DevHub::start(DevHubOptions {
        tokens: Some([(AGENT.to_string(), TOKEN.to_string())].into()),
        tls: Some((dir.join("hub.pem"), dir.join("hub.key"))),
        ..DevHubOptions::default()
    })
    .expect("TLS hub starts")
}

#[test]
fn wss_with_a_private_ca_in_ca_file_identifies_and_heartbeats() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let hub = tls_hub(certs.path());
    assert!(hub.ws_url().starts_with("wss://"));
    let config = with(
        fast_config(&hub.ws_url()),
        json!({"ca_file": certs.path().join("ca.pem")}),
    );
    let sidecar = Sidecar::start(config);
    wait_identified(&hub, 1);
    wait_frames(&hub, "ping", 2);
    sidecar.wait_event("heartbeat");
}

#[test]
fn wss_without_the_ca_is_refused_logged_and_retried() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let hub = tls_hub(certs.path());
    let mut sidecar = Sidecar::start(fast_config(&hub.ws_url()));
    let errors = sidecar.wait_count("ws_error", 2);
    assert!(errors.iter().all(|e| e["stage"] == "connect"), "{errors:?}");
    assert!(identified(&hub).is_empty());
    assert!(sidecar.is_running());
}
