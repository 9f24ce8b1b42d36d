//! The replica API from a test's side: the cluster CA every test replica trusts, and a
//! client that calls a replica's private API as another replica would (or as an intruder
//! without a replica certificate).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use burrow_host::cluster::config::ClusterTlsConfig;
use burrow_host::cluster::pki::ReplicaFiles;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Certificates for the process's test replicas, made once under a per-process
/// directory: one certificate for `127.0.0.1`/`localhost` that every replica presents
/// (they all listen there), from a CA made for this process alone.
pub fn cluster_pki() -> &'static ReplicaFiles {
    static PKI: OnceLock<ReplicaFiles> = OnceLock::new();
    PKI.get_or_init(|| {
        let root = std::env::temp_dir();
        // Directories of test processes that have exited are removed here, since a static
        // is never dropped.
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("burrow-cluster-pki-") {
                    if pid.parse::<u32>().is_ok_and(|pid| !PathBuf::from(format!("/proc/{pid}")).exists()) {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
        }
        let dir = root.join(format!("burrow-cluster-pki-{}", std::process::id()));
        let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        burrow_host::cluster::pki::issue(&dir, "replica", &hosts, 2).expect("test cluster certificates").0
    })
}

/// The `cluster.tls` table of [`cluster_pki`].
pub fn cluster_tls() -> ClusterTlsConfig {
    let pki = cluster_pki();
    ClusterTlsConfig { cert: pki.cert.clone(), key: pki.key.clone(), ca: pki.ca.clone(), server_name: None }
}

/// How a test reaches a replica API.
pub enum Caller {
    /// As a replica: mutual TLS with the test cluster's certificate.
    Replica,
    /// TLS that trusts the cluster CA but presents no client certificate.
    NoCertificate,
    /// Cleartext HTTP/2.
    Cleartext,
}

/// A channel to the replica API at `addr`, connected now.
pub async fn channel(addr: SocketAddr, caller: Caller) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    let tls = match caller {
        Caller::Cleartext => return endpoint.connect().await,
        Caller::Replica => burrow_host::cluster::mtls::client_config(&cluster_tls()).expect("client TLS"),
        Caller::NoCertificate => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_file_iter(
                &cluster_pki().ca,
            )
            .unwrap()
            {
                roots.add(cert.unwrap()).unwrap();
            }
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec()];
            Arc::new(config)
        }
    };
    let connector = tokio_rustls::TlsConnector::from(tls);
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let name = ServerName::try_from("127.0.0.1").expect("an IP address name");
                Ok::<_, std::io::Error>(TokioIo::new(connector.connect(name, tcp).await?))
            }
        }))
        .await
}
