//! A real PostgreSQL for tests, with a fresh database per test.
//!
//! - If `DRAFTER_TEST_POSTGRES_URL` is set (a URL to a server where its user may `CREATE DATABASE`), that server is
//!   used.
//! - Otherwise a private server is started once per test process: `initdb` into a temporary directory, then
//!   `pg_ctl start` listening on 127.0.0.1 at a free port (its socket also in that directory), with password
//!   authentication so tests can check the password never leaks. PostgreSQL refuses to run as root, so as root
//!   the server runs as the `postgres` system user (`runuser`). Rust never runs destructors of statics, so a
//!   small watchdog shell, in its own process group (a Ctrl-C to the tests does not kill it), polls the test
//!   process and, once it is gone, stops the server and removes the directory. The server never outlives the
//!   tests by more than about a second.
//! - Missing PostgreSQL binaries fail the test with a pointer to `.ci/install-deps`; the tests are never skipped.
//!
//! Each [`TestDatabase`] is `CREATE DATABASE drafter_test_<random>` and is dropped when the value is.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use sqlx::{Connection, PgConnection};

/// The variable naming an existing server to use instead of a private one.
pub const ENV_URL: &str = "DRAFTER_TEST_POSTGRES_URL";

/// The private server's password (for leak checks: it must never appear in an error).
pub const PASSWORD: &str = "pg-TESTSECRET-41c7e2";

/// The private server's superuser.
const USER: &str = "drafter";

static SERVER: OnceLock<Result<String, String>> = OnceLock::new();

/// The URL of the server's maintenance database (`postgres`), starting the private server on first use.
pub fn admin_url() -> String {
    let server = SERVER.get_or_init(|| match std::env::var(ENV_URL) {
        Ok(url) if !url.trim().is_empty() => Ok(url.trim().to_string()),
        _ => start_private_server(),
    });
    match server {
        Ok(url) => url.clone(),
        Err(e) => panic!("PostgreSQL for tests: {e}"),
    }
}

/// A fresh, empty database, dropped (with its connections) when this is dropped.
pub struct TestDatabase {
    /// URL of the database, with credentials.
    pub url: String,
    name: String,
    admin: String,
}

impl TestDatabase {
    /// Creates a database on the test server.
    pub async fn create() -> TestDatabase {
        let admin = tokio::task::spawn_blocking(admin_url)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let mut rnd = [0u8; 6];
        getrandom::fill(&mut rnd).expect("random database name");
        let name = format!("drafter_test_{}", hex::encode(rnd));
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("connecting to the test PostgreSQL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE on the test PostgreSQL (may this user create databases?)");
        let _ = conn.close().await;
        let mut url = url::Url::parse(&admin).expect("test PostgreSQL URL");
        url.set_path(&format!("/{name}"));
        TestDatabase {
            url: url.to_string(),
            name,
            admin,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside any async context we could borrow: use a thread with its own small runtime.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = dropper.join();
    }
}

/// Finds `initdb` and `pg_ctl`: Debian's versioned directories (newest first), else `PATH`.
fn bin_dir() -> Result<PathBuf, String> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    dirs.sort();
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.into_iter()
        .rev()
        .map(|(_, d)| d)
        .chain(from_path)
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
        .ok_or_else(|| {
            "the PostgreSQL server binaries (initdb, pg_ctl) are not installed (looked in \
             /usr/lib/postgresql/*/bin and PATH): run .ci/install-deps, or set DRAFTER_TEST_POSTGRES_URL"
                .to_string()
        })
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A command for a server binary, run as `postgres` when we are root.
fn server_command(bin: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn run(mut cmd: Command, what: &str, log: Option<&Path>) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let log = log
        .and_then(|l| std::fs::read_to_string(l).ok())
        .unwrap_or_default();
    Err(format!(
        "{what} failed ({}):\n{}{}\n{log}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

fn start_private_server() -> Result<String, String> {
    let bin = bin_dir()?;
    let as_postgres = is_root();
    let root = tempfile::Builder::new()
        .prefix("drafter-pg-")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?
        .keep();
    let data = root.join("data");
    let log = root.join("server.log");
    let pwfile = root.join("pwfile");
    std::fs::write(&pwfile, PASSWORD).map_err(|e| format!("writing the password file: {e}"))?;
    if as_postgres {
        run(
            {
                let mut c = Command::new("chown");
                c.arg("-R").arg("postgres:postgres").arg(&root);
                c
            },
            "chown of the server directory to postgres",
            None,
        )?;
    }

    let mut initdb = server_command(&bin.join("initdb"), as_postgres);
    initdb
        .current_dir(&root)
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            USER,
            "-E",
            "UTF8",
            "--auth=scram-sha-256",
            "--no-sync",
        ])
        .arg(format!("--pwfile={}", pwfile.display()));
    run(initdb, "initdb", None)?;

    // The watchdog first, so even a failed start below is cleaned up.
    let stop = format!(
        "{runas}'{pg_ctl}' -D '{data}' -m immediate -w stop",
        runas = if as_postgres {
            "runuser -u postgres -- "
        } else {
            ""
        },
        pg_ctl = bin.join("pg_ctl").display(),
        data = data.display(),
    );
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf '{root}'",
        pid = std::process::id(),
        root = root.display(),
    );
    Command::new("sh")
        .args(["-c", &watchdog])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting the server watchdog: {e}"))?;

    // A port found free can be taken before the server binds it: try a few.
    let mut last = String::new();
    for _ in 0..5 {
        let port = free_port()?;
        let mut start = server_command(&bin.join("pg_ctl"), as_postgres);
        start
            .current_dir(&root)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c max_connections=300",
                root.display()
            ))
            .arg("start");
        match run(start, "pg_ctl start", Some(&log)) {
            Ok(()) => {
                return Ok(format!(
                    "postgres://{USER}:{PASSWORD}@127.0.0.1:{port}/postgres"
                ))
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}
