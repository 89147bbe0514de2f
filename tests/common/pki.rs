//! A private certificate authority for the TLS tests: a CA and a server certificate it signed
//! for `localhost` and 127.0.0.1 (a webhook receiver over https, a `rediss://` Redis).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// The CA's certificate, and the server's certificate and key.
pub struct Pki {
    pub ca: rcgen::Certificate,
    pub leaf: rcgen::Certificate,
    pub leaf_key: KeyPair,
}

/// A new CA ("pushbox test CA") and a leaf it signed for `localhost` and 127.0.0.1.
pub fn ca_and_leaf() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pushbox test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let leaf = leaf_params
        .signed_by(&leaf_key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    Pki { ca, leaf, leaf_key }
}
