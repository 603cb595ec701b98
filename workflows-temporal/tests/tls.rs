//! The engine over TLS and mutual TLS. Temporal's dev server speaks only
//! plain gRPC, so the test puts a TLS terminator in front of it (rustls,
//! ALPN `h2`, a client certificate required, then the bytes as they are):
//! the same TLS a Temporal frontend with `tls.frontend` set, or a proxy
//! before it, would ask for. Certificates are made with `openssl` for the
//! run.
//!
//! A flow runs end to end through the terminator with the right CA and a
//! client certificate (the worker's polls and the starts both cross it);
//! a server the CA did not sign, and a client without a certificate, are
//! refused at connect with an error that says why.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use confab_workflows::push::{PushDelivery, PushInput, RetryPolicy};
use confab_workflows::{Activities, ActivityCall, Failure};
use confab_workflows_temporal::{ClientIdentity, Config, Engine, Error, Outcome, Tls};
use serde_json::{json, Value};
use tokio_rustls::rustls;

/// The dev server's address, or None when the test may skip.
fn temporal_address() -> Option<SocketAddr> {
    let Ok(address) = std::env::var("CONFAB_TEST_TEMPORAL_ADDRESS") else {
        assert!(
            std::env::var_os("CONFAB_REQUIRE_EXTERNAL").is_none(),
            "CONFAB_REQUIRE_EXTERNAL is set but CONFAB_TEST_TEMPORAL_ADDRESS is not: start Temporal with tests/servers/temporal"
        );
        eprintln!("skipping: CONFAB_TEST_TEMPORAL_ADDRESS is not set (tests/run sets it)");
        return None;
    };
    Some(address.trim_start_matches("http://").parse().expect("CONFAB_TEST_TEMPORAL_ADDRESS is http://ip:port"))
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is installed");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// A CA (`{name}-ca.pem`, `{name}-ca.key`).
fn make_ca(dir: &Path, name: &str) {
    let (pem, key, subject) = (format!("{name}-ca.pem"), format!("{name}-ca.key"), format!("/CN={name} test CA"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A leaf certificate `{name}.pem` / `{name}.key` signed by CA `ca`.
fn make_leaf(dir: &Path, ca: &str, name: &str, extensions: &str) {
    let (pem, key, csr, ext) = (format!("{name}.pem"), format!("{name}.key"), format!("{name}.csr"), format!("{name}.ext"));
    std::fs::write(dir.join(&ext), extensions).unwrap();
    openssl(dir, &["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &format!("/CN={name}")]);
    let (ca_pem, ca_key) = (format!("{ca}-ca.pem"), format!("{ca}-ca.key"));
    openssl(dir, &["x509", "-req", "-in", &csr, "-CA", &ca_pem, "-CAkey", &ca_key, "-CAcreateserial", "-out", &pem, "-days", "2", "-extfile", &ext]);
}

struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    fn make() -> Certificates {
        let dir = tempfile::tempdir().unwrap();
        make_ca(dir.path(), "ours");
        make_ca(dir.path(), "stranger");
        // The server's name is not its address: the client checks it via `domain`.
        let server = "subjectAltName=DNS:temporal.confab.test\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n";
        make_leaf(dir.path(), "ours", "server", server);
        make_leaf(dir.path(), "stranger", "impostor", server);
        let client = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";
        make_leaf(dir.path(), "ours", "worker", client);
        Certificates { dir }
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name)).unwrap()
    }

    fn client_identity(&self) -> ClientIdentity {
        ClientIdentity { cert_pem: self.read("worker.pem"), key_pem: self.read("worker.key") }
    }
}

/// What the terminator saw.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    refused: AtomicUsize,
}

/// A TLS terminator before `upstream`, presenting `{leaf}.pem` and
/// requiring a client certificate signed by our CA.
async fn terminator(certificates: &Certificates, leaf: &str, upstream: SocketAddr) -> (SocketAddr, Arc<Seen>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&certificates.read(&format!("{leaf}.pem"))).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(&certificates.read(&format!("{leaf}.key"))).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&certificates.read("ours-ca.pem")) {
        roots.add(ca.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            let (acceptor, counts) = (acceptor.clone(), counts.clone());
            tokio::spawn(async move {
                match acceptor.accept(socket).await {
                    Ok(mut tls) => {
                        counts.accepted.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        }
                    }
                    Err(_) => {
                        counts.refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    (address, seen)
}

struct SendsOk;

#[async_trait::async_trait]
impl Activities for SendsOk {
    async fn run(&self, _call: &ActivityCall, _id: u32) -> Result<Value, Failure> {
        Ok(json!({"apnsId": "over-tls"}))
    }
}

fn config(address: SocketAddr, tls: Tls) -> Config {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    Config {
        address: format!("https://{address}"),
        tls: Some(tls),
        api_key: None,
        namespace: std::env::var("CONFAB_TEST_TEMPORAL_NAMESPACE").unwrap_or_else(|_| "default".into()),
        task_queue: format!("confab-tls-{}-{now}", std::process::id()),
        activity_timeout: Duration::from_secs(30),
        activity_concurrency: 4,
        threads: 1,
        nice: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_runs_over_mutual_tls() {
    let Some(upstream) = temporal_address() else { return };
    let certificates = Certificates::make();
    let (address, seen) = terminator(&certificates, "server", upstream).await;
    let tls = Tls { ca_pem: Some(certificates.read("ours-ca.pem")), client: Some(certificates.client_identity()), domain: Some("temporal.confab.test".into()) };
    let engine = Engine::connect(config(address, tls)).await.expect("connect over mutual TLS");
    engine.register::<PushDelivery>(Arc::new(SendsOk));
    engine.run_worker().expect("the worker starts");
    let flow_id = format!("push-over-tls-{}", std::process::id());
    let input = PushInput { push: json!({"token": "t"}), policy: RetryPolicy { max_attempts: 3, max_age_ms: 60_000, backoff_ms: 50, backoff_max_ms: 200 } };
    assert!(engine.start::<PushDelivery>(&flow_id, input).await.unwrap(), "a new flow starts");
    let outcome = tokio::time::timeout(Duration::from_secs(60), engine.outcome(&flow_id)).await.expect("the flow ends within 60 s").unwrap();
    assert_eq!(outcome, Outcome::Completed(json!({"outcome": "sent", "attempts": 1})));
    engine.shutdown().await;
    assert!(seen.accepted.load(Ordering::SeqCst) >= 2, "the client and the worker each connected through TLS");
    assert_eq!(seen.refused.load(Ordering::SeqCst), 0, "no handshake failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_server_or_a_missing_client_certificate_is_refused() {
    let Some(upstream) = temporal_address() else { return };
    let certificates = Certificates::make();
    let domain = Some("temporal.confab.test".to_string());

    // A server whose certificate our CA did not sign: the client refuses it.
    let (impostor, seen) = terminator(&certificates, "impostor", upstream).await;
    let tls = Tls { ca_pem: Some(certificates.read("ours-ca.pem")), client: Some(certificates.client_identity()), domain: domain.clone() };
    let error = Engine::connect(config(impostor, tls)).await.expect_err("an impostor is refused");
    let text = error.to_string();
    eprintln!("impostor: {text}");
    assert!(matches!(error, Error::Unavailable { .. }), "{text}");
    assert!(text.contains(&impostor.to_string()) && text.to_lowercase().contains("certificate"), "the error names the address and the certificate: {text}");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 0, "nothing was sent to the impostor");

    // Our server, but no client certificate: the server refuses us.
    let (address, seen) = terminator(&certificates, "server", upstream).await;
    let tls = Tls { ca_pem: Some(certificates.read("ours-ca.pem")), client: None, domain: domain.clone() };
    let error = Engine::connect(config(address, tls)).await.expect_err("a client without a certificate is refused");
    eprintln!("no client certificate: {error}");
    assert!(matches!(error, Error::Unavailable { .. }), "{error}");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 0, "no connection got through: {error}");
    assert!(seen.refused.load(Ordering::SeqCst) >= 1, "the server refused the handshake");

    // The right name matters too: without `domain`, 127.0.0.1 is not on the certificate.
    let tls = Tls { ca_pem: Some(certificates.read("ours-ca.pem")), client: Some(certificates.client_identity()), domain: None };
    let error = Engine::connect(config(address, tls)).await.expect_err("a certificate for another name is refused");
    eprintln!("another name: {error}");
    assert!(error.to_string().to_lowercase().contains("certificate"), "{error}");
}
