//! NATS over TLS as `deploy/base` runs it: the servers present certificates from a CA (a Secret, or
//! cert-manager), require TLS and verify client certificates, on top of the per-role users. A service
//! connects with `--nats-tls-ca` (and `--nats-tls-cert`/`--nats-tls-key`); a client without them cannot.

use std::path::Path;

use kubesent_common::nats::{self, Role, Topology};
use kubesent_testkit::nats_server::{DEPLOY_AUTH_CONFIG, NatsServer, NatsUsers};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn certificates(dir: &Path) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "kubesent test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    std::fs::write(dir.join("ca.crt"), ca.pem()).expect("ca.crt");
    for (name, sans) in [("server", vec!["127.0.0.1".to_owned(), "localhost".to_owned()]), ("client", vec![])]
    {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, format!("kubesent {name}"));
        let cert = params.signed_by(&key, &ca).expect("signed");
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).expect("cert");
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_connects_over_verified_tls_and_a_client_without_the_ca_or_certificate_cannot() {
    kubesent_common::install_crypto_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    certificates(dir.path());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let tls = format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true }}\n",
        file("server.crt"),
        file("server.key"),
        file("ca.crt")
    );
    let users = NatsUsers::generate();
    let server = NatsServer::start_with(&format!("{tls}{}", *DEPLOY_AUTH_CONFIG), &users.server_env())
        .await
        .expect("nats-server with TLS");

    let mut args = users.args(server.url(), Role::Detector);
    args.tls_ca = Some(file("ca.crt").into());
    args.tls_cert = Some(file("client.crt").into());
    args.tls_key = Some(file("client.key").into());
    let client = nats::connect_as(&args, Role::Detector, "tls-test").await.expect("connects");
    let js = async_nats::jetstream::new(client);
    let never = tokio_util::sync::CancellationToken::new();
    nats::prepare(&js, &Topology::default(), Role::Detector, &never).await.expect("works over TLS");

    // The operator's command does not retry: each refusal is immediate and says why.
    let plain = users.args(server.url(), Role::Operator);
    assert!(nats::connect_as(&plain, Role::Operator, "no-tls").await.is_err(), "TLS is required");
    let mut no_certificate = plain.clone();
    no_certificate.tls_ca = Some(file("ca.crt").into());
    assert!(
        nats::connect_as(&no_certificate, Role::Operator, "no-client-cert").await.is_err(),
        "a client certificate is required"
    );
    let mut other_ca = no_certificate.clone();
    other_ca.tls_ca = Some(file("client.crt").into());
    other_ca.tls_cert = Some(file("client.crt").into());
    other_ca.tls_key = Some(file("client.key").into());
    assert!(
        nats::connect_as(&other_ca, Role::Operator, "wrong-ca").await.is_err(),
        "a server the CA does not vouch for is refused"
    );
}
