//! TLS and bearer tokens for remote stages (docs/protocol.md, section 1).
//!
//! The engine dials `grpcs://host:port` with the files of [`TlsFiles`]
//! (the CA that signed the stage's certificate; a client certificate and key
//! for mutual TLS) and sends `authorization: Bearer <token>` on every call
//! when the pipeline names a [`Token`]. A stage serves TLS and checks the
//! token when its environment says so ([`StageSecurity::from_env`]).
//!
//! A token is a secret: it is read from the environment, never from a
//! pipeline file (which is committed), never printed (`Debug` redacts it),
//! and a refusal never quotes it.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// Environment variable: the stage's certificate (PEM); with
/// [`ENV_TLS_KEY`], the stage serves TLS.
pub const ENV_TLS_CERT: &str = "SLUICE_STAGE_TLS_CERT";
/// Environment variable: the stage's private key (PEM).
pub const ENV_TLS_KEY: &str = "SLUICE_STAGE_TLS_KEY";
/// Environment variable: the CA (PEM) client certificates must be signed
/// by; with it, the stage refuses clients without one (mutual TLS).
pub const ENV_TLS_CLIENT_CA: &str = "SLUICE_STAGE_TLS_CLIENT_CA";
/// Environment variable: the bearer token every call must carry.
pub const ENV_TOKEN: &str = "SLUICE_STAGE_TOKEN";

/// The `tls` table of a remote stage in a pipeline: PEM files, relative to
/// the pipeline file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA that signed the stage's certificate.
    pub ca: PathBuf,
    /// The engine's client certificate, for a stage that asks for one.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The key of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// The same files with relative paths taken from `base`.
    pub fn relative_to(&self, base: &Path) -> TlsFiles {
        let at = |p: &PathBuf| base.join(p);
        TlsFiles {
            ca: at(&self.ca),
            cert: self.cert.as_ref().map(at),
            key: self.key.as_ref().map(at),
        }
    }

    /// The client side of the connection, files read.
    pub fn client_config(&self) -> Result<ClientTlsConfig, String> {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(certificates(&self.ca, "tls.ca")?));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    certificates(cert, "tls.cert")?,
                    private_key(key, "tls.key")?,
                ));
            }
            (None, None) => {}
            _ => return Err("tls.cert and tls.key go together (mutual TLS)".into()),
        }
        Ok(config)
    }
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key} = \"{}\": {e}", path.display()))
}

/// The bytes of a PEM file holding at least one certificate, each parsed
/// here, so that a wrong file is named with its setting (TLS itself would
/// only say that some certificate is bad, later, at the connection).
fn certificates(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    let bytes = read(path, key)?;
    let mut found = 0;
    for c in CertificateDer::pem_slice_iter(&bytes) {
        let c = c.map_err(|e| format!("{key} = \"{}\": not PEM: {e}", path.display()))?;
        // parsing it as a trust anchor reads its X.509 structure
        rustls::RootCertStore::empty().add(c).map_err(|e| {
            format!(
                "{key} = \"{}\": certificate {} is not a valid X.509 certificate: {e}",
                path.display(),
                found + 1
            )
        })?;
        found += 1;
    }
    if found == 0 {
        return Err(format!(
            "{key} = \"{}\": no certificate in the file (a `-----BEGIN CERTIFICATE-----` block)",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The bytes of a PEM file holding a private key, checked as
/// [`certificates`] are.
fn private_key(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    let bytes = read(path, key)?;
    let der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{key} = \"{}\": no private key in the file (a `-----BEGIN PRIVATE KEY-----` block)",
            path.display()
        ),
        e => format!("{key} = \"{}\": not PEM: {e}", path.display()),
    })?;
    rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| {
        format!(
            "{key} = \"{}\": not a private key TLS can use (RSA, ECDSA or Ed25519): {e}",
            path.display()
        )
    })?;
    Ok(bytes)
}

/// A bearer token. `Debug` and error messages never show it.
#[derive(Clone)]
pub struct Token {
    value: MetadataValue<Ascii>,
    /// Where it came from (`env:NAME`), for messages.
    source: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({}, redacted)", self.source)
    }
}

impl Token {
    /// Reads `env:NAME` (the pipeline's `token`) from the environment.
    pub fn from_reference(reference: &str) -> Result<Token, String> {
        let Some(name) = reference.strip_prefix("env:") else {
            return Err(
                "token must name an environment variable, `token = \"env:STAGE_TOKEN\"`: a token written in a pipeline file would be committed with it".into(),
            );
        };
        let secret = std::env::var(name)
            .map_err(|_| format!("token: the environment variable `{name}` is not set"))?;
        Self::new(&secret, reference)
    }

    fn new(secret: &str, source: &str) -> Result<Token, String> {
        if secret.is_empty() {
            return Err(format!("token: {source} is empty"));
        }
        let mut value: MetadataValue<Ascii> = format!("Bearer {secret}")
            .parse()
            .map_err(|_| format!("token: {source} holds characters a gRPC header cannot carry"))?;
        value.set_sensitive(true);
        Ok(Token {
            value,
            source: source.to_string(),
        })
    }

    /// Adds the token to a request.
    pub fn attach<T>(&self, request: &mut Request<T>) {
        request
            .metadata_mut()
            .insert("authorization", self.value.clone());
    }

    /// Where the token comes from (`env:NAME`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether `request` carries this token: compared in time that does not
    /// depend on where the first wrong byte is.
    fn admits<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(given) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "no token: this stage requires \"authorization: Bearer <token>\" (the pipeline's token)",
            ));
        };
        if constant_time_eq(given.as_bytes(), self.value.as_bytes()) {
            Ok(())
        } else {
            Err(Status::unauthenticated("wrong token"))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // the length is not secret enough to hide: tokens have a fixed format
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How the engine reaches a remote stage securely: the pipeline's `tls` and
/// `token`.
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    /// Files of a `grpcs://` connection.
    pub tls: Option<TlsFiles>,
    /// The token sent with every call.
    pub token: Option<Token>,
}

/// What a stage asks of its clients, from its environment.
#[derive(Debug, Clone, Default)]
pub struct StageSecurity {
    /// TLS (and mutual TLS with a client CA).
    pub tls: Option<ServerTlsConfig>,
    /// The token every call must carry.
    pub token: Option<Token>,
}

impl StageSecurity {
    /// From `SLUICE_STAGE_TLS_CERT`, `_KEY`, `_CLIENT_CA` and `SLUICE_STAGE_TOKEN`.
    pub fn from_env() -> Result<Self, String> {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        let tls = match (var(ENV_TLS_CERT), var(ENV_TLS_KEY), var(ENV_TLS_CLIENT_CA)) {
            (None, None, None) => None,
            (Some(cert), Some(key), ca) => {
                // an error means a provider is installed already: fine
                let _ = rustls::crypto::ring::default_provider().install_default();
                let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
                    certificates(Path::new(&cert), ENV_TLS_CERT)?,
                    private_key(Path::new(&key), ENV_TLS_KEY)?,
                ));
                if let Some(ca) = ca {
                    config = config
                        .client_ca_root(Certificate::from_pem(certificates(
                            Path::new(&ca),
                            ENV_TLS_CLIENT_CA,
                        )?))
                        .client_auth_optional(false);
                }
                Some(config)
            }
            (_, _, Some(_)) if var(ENV_TLS_CERT).is_none() || var(ENV_TLS_KEY).is_none() => {
                return Err(format!(
                    "{ENV_TLS_CLIENT_CA} needs {ENV_TLS_CERT} and {ENV_TLS_KEY} (mutual TLS is TLS first)"
                ));
            }
            _ => return Err(format!("{ENV_TLS_CERT} and {ENV_TLS_KEY} go together")),
        };
        let token = match var(ENV_TOKEN) {
            Some(secret) => Some(Token::new(&secret, &format!("${ENV_TOKEN}"))?),
            None => None,
        };
        Ok(Self { tls, token })
    }
}

/// The interceptor of a stage's service: refuses calls without the token.
#[derive(Debug, Clone, Default)]
pub struct TokenCheck(pub Option<Token>);

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match &self.0 {
            Some(token) => token.admits(&request).map(|()| request),
            None => Ok(request),
        }
    }
}

/// An error and its sources, `a: b: c` (a transport error's own message is
/// just "transport error"; what went wrong is in the sources).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cur) = e {
        // a status's Display repeats its source; its message is the part
        let text = match cur.downcast_ref::<Status>() {
            Some(status) => status.message().to_string(),
            None => cur.to_string(),
        };
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        e = cur.source();
    }
    parts.join(": ")
}

/// What a failed TLS connection means, in the pipeline's words, when its
/// error chain says: the handshake's reasons are deep in the sources.
pub fn explain_tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut chain = String::new();
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cur) = e {
        chain.push_str(&format!("{cur} / {cur:?} "));
        e = cur.source();
    }
    if chain.contains("UnknownIssuer") || chain.contains("invalid peer certificate") {
        Some("the stage's certificate is not signed by the CA in `tls.ca`")
    } else if chain.contains("CertificateRequired") {
        Some("the stage requires a client certificate: set `tls.cert` and `tls.key`")
    } else if chain.contains("UnknownCA") || chain.contains("BadCertificate") {
        Some(
            "the stage refused the client certificate in `tls.cert`: it is not signed by a CA the stage trusts",
        )
    } else if chain.contains("InvalidContentType") || chain.contains("CorruptMessage") {
        Some("the stage does not speak TLS: use `grpc://` (or serve TLS)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_environment_and_never_show() {
        assert!(
            Token::from_reference("s3cr3t")
                .unwrap_err()
                .contains("env:")
        );
        let missing = Token::from_reference("env:SLUICE_TEST_NO_SUCH_VAR").unwrap_err();
        assert!(missing.contains("SLUICE_TEST_NO_SUCH_VAR"));
        let t = Token::new("hunter2-token", "env:X").unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
        let mut r = Request::new(());
        assert!(t.admits(&r).unwrap_err().message().starts_with("no token"));
        t.attach(&mut r);
        assert!(t.admits(&r).is_ok());
        let other = Token::new("hunter3-token", "env:Y").unwrap();
        let refused = other.admits(&r).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(!refused.message().contains("hunter"));
        assert!(
            Token::new("bad\ntoken", "env:Z")
                .unwrap_err()
                .contains("env:Z")
        );
    }

    /// A certificate and its key, PEM.
    fn pem_pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn files(dir: &Path, ca: &[u8], cert: &[u8], key: &[u8]) -> TlsFiles {
        for (name, bytes) in [("ca", ca), ("cert", cert), ("key", key)] {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        TlsFiles {
            ca: "ca".into(),
            cert: Some("cert".into()),
            key: Some("key".into()),
        }
        .relative_to(dir)
    }

    /// A file that is not what its setting wants is named with the
    /// setting and says what it lacks.
    #[test]
    fn wrong_pem_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pem_pair();
        let (cert, key) = (cert.as_bytes(), key.as_bytes());
        assert!(files(dir.path(), cert, cert, key).client_config().is_ok());
        // (the CA file, the certificate, the key, what the refusal says)
        type Case<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a str);
        // PEM blocks whose base64 is fine and whose contents are not
        let junk_cert =
            b"-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n";
        let junk_key =
            b"-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n";
        let cases: [Case; 7] = [
            (key, cert, key, "tls.ca = \""),
            (cert, key, key, "tls.cert = \""),
            (cert, cert, cert, "tls.key = \""),
            (b"", cert, key, "no certificate in the file"),
            (&cert[..cert.len() / 2], cert, key, "not PEM"),
            (
                junk_cert,
                cert,
                key,
                "certificate 1 is not a valid X.509 certificate",
            ),
            (cert, cert, junk_key, "not a private key TLS can use"),
        ];
        for (ca, c, k, says) in cases {
            let e = files(dir.path(), ca, c, k).client_config().unwrap_err();
            assert!(e.contains(says), "{says}: {e}");
        }
    }

    proptest::proptest! {
        /// Whatever the three files hold (anything, or a good PEM file cut
        /// or with a byte changed), the connection's settings are made or
        /// refused with the setting named; never a panic, in our checks or
        /// in the TLS setup after them.
        #[test]
        fn any_pem_files_are_taken_or_refused(
            which in 0usize..3,
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            flip in proptest::prelude::any::<Option<(proptest::sample::Index, u8)>>(),
            raw in proptest::prelude::any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (cert, key) = pem_pair();
            let mut good = [cert.clone().into_bytes(), cert.into_bytes(), key.into_bytes()];
            let target = &mut good[which];
            if raw {
                *target = garbage;
            } else {
                target.truncate(cut.index(target.len() + 1));
                if let Some((at, byte)) = flip && !target.is_empty() {
                    let i = at.index(target.len());
                    target[i] = byte;
                }
            }
            let f = files(dir.path(), &good[0], &good[1], &good[2]);
            match f.client_config() {
                Ok(config) => {
                    let _ = tonic::transport::Endpoint::from_static("https://localhost:1").tls_config(config);
                }
                Err(e) => {
                    let named = ["tls.ca = ", "tls.cert = ", "tls.key = "][which];
                    proptest::prop_assert!(e.contains(named), "{}", e);
                }
            }
        }
    }

    #[test]
    fn equal_means_equal() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
