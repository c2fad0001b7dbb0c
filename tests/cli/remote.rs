//! Remote stages over TLS with bearer tokens (`url = "grpcs://..."`, `tls`,
//! `token`), against the Go, the Rust and the Python SDK: certificates are
//! made here (rcgen), the stages serve them from their environment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::stages::{jsonl_rows, orders_through, stages_built};
use super::{free_addr, root, text};

/// A certificate authority that signs leaf certificates.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `names` and its key, as PEM.
    fn sign(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Every PEM file of a test, in one folder.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        let ca = Authority::new("sluice test CA");
        let other = Authority::new("someone else's CA");
        let (server, server_key) = ca.sign(&["localhost"]);
        let (client, client_key) = ca.sign(&["engine"]);
        let (stranger, stranger_key) = other.sign(&["engine"]);
        for (name, pem) in [
            ("ca.pem", &ca.pem),
            ("other-ca.pem", &other.pem),
            ("server.pem", &server),
            ("server.key", &server_key),
            ("client.pem", &client),
            ("client.key", &client_key),
            ("stranger.pem", &stranger),
            ("stranger.key", &stranger_key),
        ] {
            std::fs::write(pki.path(name), pem).unwrap();
        }
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

const TOKEN: &str = "tok-8f2c1e-the-secret-nobody-may-print";

/// A stage program serving TLS (mutual, with the test CA) and checking
/// [`TOKEN`] on a loopback port; killed when dropped.
struct RemoteStage {
    child: Child,
    url: String,
}

impl RemoteStage {
    /// Starts `command` (a program and its arguments).
    fn start(command: &[String], pki: &Pki) -> Self {
        let addr = free_addr();
        let port = addr.rsplit(':').next().unwrap().to_string();
        let child = Command::new(&command[0])
            .args(&command[1..])
            .env("SLUICE_STAGE_ADDR", &addr)
            .env_remove("SLUICE_STAGE_SOCKET")
            .env("SLUICE_STAGE_TLS_CERT", pki.path("server.pem"))
            .env("SLUICE_STAGE_TLS_KEY", pki.path("server.key"))
            .env("SLUICE_STAGE_TLS_CLIENT_CA", pki.path("ca.pem"))
            .env("SLUICE_STAGE_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // listening once a TCP connection is accepted
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "{command:?} never listened on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("grpcs://localhost:{port}"),
        }
    }
}

impl Drop for RemoteStage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs TPC-H orders through the remote stage with `keys` (TOML lines of
/// the stage's table), `STAGE_TOKEN` set to `token`.
fn run_through(stage: &RemoteStage, keys: &str, token: &str, out: &Path) -> Output {
    let keys = format!("url = \"{}\"\n{keys}", stage.url);
    orders_through(&keys, 8192, &[("STAGE_TOKEN", token)], out)
}

fn tls(pki: &Pki, ca: &str, client: Option<(&str, &str)>) -> String {
    let mut t = format!("tls = {{ ca = \"{}\"", pki.path(ca).display());
    if let Some((cert, key)) = client {
        t.push_str(&format!(
            ", cert = \"{}\", key = \"{}\"",
            pki.path(cert).display(),
            pki.path(key).display()
        ));
    }
    t + " }"
}

#[test]
fn remote_stages_serve_mutual_tls_and_check_tokens_in_go_and_rust() {
    stages_built();
    let pki = Pki::new();
    let built = |p: &str| vec![root().join("target/stages").join(p).display().to_string()];
    let python = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into());
    let programs = [
        ("go/identity", built("go/identity")),
        ("rust/identity", built("rust/identity")),
        (
            "python identity.py",
            vec![
                python,
                root()
                    .join("sdk/python/examples/identity.py")
                    .display()
                    .to_string(),
            ],
        ),
    ];
    for (program, command) in programs {
        let stage = RemoteStage::start(&command, &pki);
        let good_tls = tls(&pki, "ca.pem", Some(("client.pem", "client.key")));
        let with_token = |t: &str| format!("{t}\ntoken = \"env:STAGE_TOKEN\"");

        // everything right: every order goes through
        let out = tempfile::tempdir().unwrap();
        let o = run_through(&stage, &with_token(&good_tls), TOKEN, out.path());
        assert!(o.status.success(), "{program}:\n{}", text(&o));
        assert_eq!(jsonl_rows(out.path()).len(), 15_000, "{program}");

        // each wrong part is refused, saying which
        // (what, the stage's keys, the token, what the message says, the
        // key whose line it points at)
        let refusals: [(&str, String, &str, &str, &str); 5] = [
            (
                "a CA that did not sign the stage's certificate",
                with_token(&tls(
                    &pki,
                    "other-ca.pem",
                    Some(("client.pem", "client.key")),
                )),
                TOKEN,
                "not signed by the CA in `tls.ca`",
                "tls",
            ),
            (
                "no client certificate",
                with_token(&tls(&pki, "ca.pem", None)),
                TOKEN,
                "requires a client certificate",
                "tls",
            ),
            (
                "a client certificate of another CA",
                with_token(&tls(&pki, "ca.pem", Some(("stranger.pem", "stranger.key")))),
                TOKEN,
                "refused the client certificate",
                "tls",
            ),
            (
                "a wrong token",
                with_token(&good_tls),
                "not-the-token",
                "refused the token in `env:STAGE_TOKEN`",
                "token",
            ),
            (
                "no token",
                good_tls.clone(),
                TOKEN,
                "no `token` is set",
                "token",
            ),
        ];
        for (what, keys, token, says, key) in refusals {
            let out = tempfile::tempdir().unwrap();
            let o = run_through(&stage, &keys, token, out.path());
            let t = text(&o);
            assert!(!o.status.success(), "{program}, {what}: it ran:\n{t}");
            assert!(
                t.contains(says),
                "{program}, {what}: expected `{says}` in:\n{t}"
            );
            assert!(
                t.contains(&format!(".{key}`: ")),
                "{program}, {what}: expected the line of `{key}` in:\n{t}"
            );
            assert!(
                !t.contains(TOKEN),
                "{program}, {what}: the token was printed:\n{t}"
            );
            assert!(
                !t.contains("not-the-token"),
                "{program}, {what}: a token was printed:\n{t}"
            );
        }
    }
}

#[test]
fn tokens_are_never_written_in_pipeline_files() {
    stages_built();
    let pki = Pki::new();
    let stage = RemoteStage::start(
        &[root()
            .join("target/stages/rust/identity")
            .display()
            .to_string()],
        &pki,
    );
    let out = tempfile::tempdir().unwrap();
    let keys = format!(
        "{}\ntoken = \"{TOKEN}\"",
        tls(&pki, "ca.pem", Some(("client.pem", "client.key")))
    );
    let o = run_through(&stage, &keys, TOKEN, out.path());
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("env:STAGE_TOKEN") && t.contains("token"), "{t}");
    assert!(!t.contains(TOKEN), "the token was printed:\n{t}");
    // a grpcs:// url without the CA, and tls on a plain url
    let o = run_through(&stage, "", TOKEN, out.path());
    assert!(text(&o).contains("needs `tls"), "{}", text(&o));
}
