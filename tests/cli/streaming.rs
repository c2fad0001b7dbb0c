//! Streaming: a dir source and a seeded generator, killed with SIGKILL at
//! many random points, on local disk and on an S3-compatible server (moto,
//! started by the test). The committed output must equal a clean run's, as
//! a multiset of rows.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{commits, data_files, duckdb_check, free_port, ok, root, set, text};

/// A deterministic sequence of kill delays (and crash points).
pub(super) struct Lcg(pub(super) u64);

impl Lcg {
    /// A number in `lo..hi`.
    pub(super) fn next_ms(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (self.0 >> 33) % (hi - lo)
    }
}

pub(super) fn write_input(dir: &Path, files: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for f in 0..files {
        let body: String = (0..20)
            .map(|i| {
                format!(
                    "{{\"id\": {}, \"word\": \"w{}\"}}\n",
                    f * 100 + i,
                    (f + i) % 13
                )
            })
            .collect();
        std::fs::write(dir.join(format!("part-{f:04}.jsonl")), body).unwrap();
    }
}

pub(super) fn run_args(input: &str, files_out: &str, events_out: &str) -> Vec<String> {
    vec![
        "run".into(),
        "-q".into(),
        "--exit-when-idle".into(),
        "tests/pipelines/kill.toml".into(),
        "--set".into(),
        format!("sources.files.path=\"{input}\""),
        "--set".into(),
        format!("sinks.files_out.url=\"{files_out}\""),
        "--set".into(),
        format!("sinks.events_out.url=\"{events_out}\""),
    ]
}

pub(super) fn spawn(args: &[String], env: &[(&str, String)]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.args(args)
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("SLUICE_FAILPOINT");
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// Kills runs at random points until `kills` kills landed mid-run; returns
/// how many runs were started.
pub(super) fn kill_repeatedly(
    args: &[String],
    env: &[(&str, String)],
    kills: usize,
    seed: u64,
) -> usize {
    let mut rng = Lcg(seed);
    let (mut landed, mut runs) = (0, 0);
    while landed < kills {
        runs += 1;
        assert!(
            runs < 400,
            "could not land {kills} kills in 400 runs (only {landed})"
        );
        let mut child = spawn(args, env);
        let deadline = Instant::now() + Duration::from_millis(rng.next_ms(150, 900));
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            landed += 1;
        } else {
            // the run finished before the kill: no more work to interrupt
            break;
        }
    }
    assert!(
        landed >= kills,
        "the pipeline finished after only {landed} kills; give it more work"
    );
    runs
}

pub(super) fn finish(args: &[String], env: &[(&str, String)]) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.args(args)
        .current_dir(root())
        .env_remove("SLUICE_FAILPOINT");
    for (k, v) in env {
        c.env(k, v);
    }
    ok(c.output().unwrap());
}

fn same_rows(expected_dir: &Path, actual_dir: &Path) {
    let r = duckdb_check(&[
        "compare",
        "--query",
        &format!(
            "SELECT * FROM read_parquet('{}/*.parquet')",
            expected_dir.display()
        ),
        "--actual",
        actual_dir.to_str().unwrap(),
    ]);
    assert_eq!(r["missing_count"], 0, "{r}");
    assert_eq!(r["extra_count"], 0, "{r}");
}

#[test]
fn twenty_kills_on_local_disk_lose_and_duplicate_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    write_input(&input, 150);
    let p = |d: &str| tmp.path().join(d).to_string_lossy().into_owned();
    let clean = run_args(&p("in"), &p("clean_files"), &p("clean_events"));
    finish(&clean, &[]);
    let killed = run_args(&p("in"), &p("files"), &p("events"));
    let runs = kill_repeatedly(&killed, &[], 20, 42);
    finish(&killed, &[]);
    eprintln!("{runs} runs, 20 of them killed with SIGKILL");
    for (a, b) in [("clean_files", "files"), ("clean_events", "events")] {
        let (a, b) = (tmp.path().join(a), tmp.path().join(b));
        same_rows(&a, &b);
        let listed: std::collections::BTreeSet<PathBuf> = commits(&b)
            .iter()
            .flat_map(|c| c["files"].as_array().unwrap().clone())
            .map(|f| b.join(f["path"].as_str().unwrap()))
            .collect();
        let unlisted: Vec<PathBuf> = data_files(&b)
            .into_iter()
            .filter(|f| !listed.contains(f))
            .collect();
        assert!(
            unlisted.is_empty(),
            "every file left is committed; no commit lists {unlisted:?}"
        );
        assert_eq!(
            data_files(&b).len(),
            listed.len(),
            "every committed file exists"
        );
    }
    let events: u64 = commits(&tmp.path().join("events"))
        .iter()
        .map(|c| c["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(events, 400_000);
}

/// A moto S3 server on a free port, stopped on drop.
pub(super) struct S3Server {
    child: Child,
    pub(super) endpoint: String,
}

impl S3Server {
    /// The variables a sluice process needs to use this server.
    pub(super) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    pub(super) fn create_bucket(&self, name: &str) {
        curl(&["-X", "PUT", &format!("{}/{name}", self.endpoint)]);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn start_s3() -> S3Server {
    let py = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into());
    let moto = PathBuf::from(&py).with_file_name("moto_server");
    assert!(
        moto.exists(),
        "{} is missing: ./scripts/test installs moto[server]",
        moto.display()
    );
    let port = free_port();
    let child = Command::new(&moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    S3Server { child, endpoint }
}

fn curl(args: &[&str]) {
    let o = Command::new("curl")
        .args(["-sS", "-f"])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "curl {args:?}: {}", text(&o));
}

#[test]
fn twenty_kills_on_an_s3_compatible_server_lose_and_duplicate_nothing() {
    let s3 = start_s3();
    let env = s3.env();
    s3.create_bucket("sluice");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    write_input(&input, 150);
    for f in std::fs::read_dir(&input).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        curl(&[
            "-T",
            &f.display().to_string(),
            &format!("{}/sluice/in/{name}", s3.endpoint),
        ]);
    }
    let killed = run_args("s3://sluice/in", "s3://sluice/files", "s3://sluice/events");
    let runs = kill_repeatedly(&killed, &env, 20, 7);
    finish(&killed, &env);
    eprintln!("{runs} runs on S3, 20 killed");

    // the clean run on local disk reads the same input files
    let p = |d: &str| tmp.path().join(d).to_string_lossy().into_owned();
    finish(
        &run_args(&p("in"), &p("clean_files"), &p("clean_events")),
        &[],
    );
    // bring the S3 output to disk through sluice itself (a reader that follows the commit log)
    for (s3_dir, local) in [("files", "s3_files"), ("events", "s3_events")] {
        let copy = tmp.path().join(format!("copy_{s3_dir}.toml"));
        std::fs::write(
            &copy,
            format!(
                "[pipeline]\nname = \"copy\"\n[sources.s]\nkind = \"parquet\"\npath = \"s3://sluice/{s3_dir}\"\n\
                 [sinks.o]\nkind = \"parquet\"\ninput = \"s\"\nurl = \"{}\"\n",
                tmp.path().join(local).display()
            ),
        )
        .unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
        c.args(["run", "-q", copy.to_str().unwrap()])
            .current_dir(root());
        for (k, v) in &env {
            c.env(k, v);
        }
        ok(c.output().unwrap());
    }
    same_rows(
        &tmp.path().join("clean_files"),
        &tmp.path().join("s3_files"),
    );
    same_rows(
        &tmp.path().join("clean_events"),
        &tmp.path().join("s3_events"),
    );
    let _ = set;
}

/// The multipart uploads in progress under `prefix` of bucket `sluice`, as
/// boto3 (an independent S3 client) lists them.
fn incomplete_uploads(endpoint: &str, prefix: &str) -> Vec<String> {
    let py = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!(
        "import boto3\n\
         s3 = boto3.client('s3', endpoint_url='{endpoint}', region_name='us-east-1',\n\
                           aws_access_key_id='test', aws_secret_access_key='test')\n\
         for u in s3.list_multipart_uploads(Bucket='sluice', Prefix='{prefix}').get('Uploads', []):\n\
         \x20   print(u['Key'])\n"
    );
    let o = Command::new(py).args(["-c", &script]).output().unwrap();
    assert!(o.status.success(), "boto3: {}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_run_killed_mid_upload_on_s3_leaves_no_incomplete_upload_behind() {
    let s3 = start_s3();
    let env = s3.env();
    s3.create_bucket("sluice");
    // files of tens of MB: uploaded in parts
    let args = |url: &str| -> Vec<String> {
        vec![
            "run".into(),
            "-q".into(),
            "tests/pipelines/tpch_dump.toml".into(),
            "--set".into(),
            "sources.lineitem.scale_factor=0.1".into(),
            "--set".into(),
            "sinks.raw.compression=\"uncompressed\"".into(),
            "--set".into(),
            format!("sinks.raw.url=\"{url}\""),
        ]
    };
    let run = |url: &str, failpoint: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
        c.args(args(url))
            .current_dir(root())
            .env_remove("SLUICE_FAILPOINT");
        for (k, v) in &env {
            c.env(k, v);
        }
        if let Some(f) = failpoint {
            c.env("SLUICE_FAILPOINT", f);
        }
        c.output().unwrap()
    };

    let died = run("s3://sluice/big", Some("mid_upload"));
    assert!(!died.status.success(), "the failpoint aborts the process");
    assert!(
        text(&died).contains("failpoint `mid_upload` hit"),
        "{}",
        text(&died)
    );
    let left = incomplete_uploads(&s3.endpoint, "big/");
    assert!(
        !left.is_empty(),
        "the killed run left an upload in progress"
    );

    ok(run("s3://sluice/big", None));
    let left = incomplete_uploads(&s3.endpoint, "big/");
    assert!(
        left.is_empty(),
        "recovery aborted every upload; still in progress: {left:?}"
    );
    // and the output is whole: as many rows as a clean run writes
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    ok(run(&clean.to_string_lossy(), None));
    let rows = |sink: &str| -> u64 {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
        c.args(["inspect", "--json", sink]).current_dir(root());
        for (k, v) in &env {
            c.env(k, v);
        }
        let out = ok(c.output().unwrap());
        let commits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        commits
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["rows"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(rows("s3://sluice/big"), rows(&clean.to_string_lossy()));
}
