//! A self-signed certificate for `localhost` and `127.0.0.1`, written to PEM files.

use std::path::PathBuf;

/// PEM files of a self-signed certificate (which is its own CA) and its key.
#[derive(Debug)]
pub struct TestCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    _dir: tempfile::TempDir,
}

impl TestCertificate {
    pub fn generate() -> Self {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let certified = rcgen::generate_simple_self_signed(names).expect("certificate");
        let dir = tempfile::tempdir().expect("temporary directory");
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        let cert_pem = certified.cert.pem();
        std::fs::write(&cert, &cert_pem).expect("write certificate");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
        Self {
            cert,
            key,
            cert_pem,
            _dir: dir,
        }
    }
}
