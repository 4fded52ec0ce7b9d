//! TLS between the collector's shipper and the broker: the right CA ships, a wrong CA and a
//! plaintext client are refused with an error that says why.
//!
//! Tansu 0.6.0 does not serve TLS (its broker builds a TLS acceptor and never uses it),
//! so TLS is terminated in front of it by stunnel (OpenSSL, from Debian; `tests/install`
//! installs it) on 127.0.0.1, and the broker advertises stunnel's port: every request of
//! the client, bootstrap and produce alike, goes through TLS. What is under test is
//! Tally's client side: its librdkafka settings and its errors. The certificates are made
//! by the `openssl` command for each run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::ensure;
use tally_tests::{OwnBroker, connect_error, ships_with};

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()?;
    ensure!(
        output.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A CA (`<name>.pem`, `<name>.key`) valid for two days.
fn make_ca(dir: &Path, name: &str) -> anyhow::Result<()> {
    let (cert, key, subject) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("/CN=Tally test {name}"),
    );
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", &key, "-out",
            &cert, "-subj", &subject,
        ],
    )
}

/// `server.pem` / `server.key` for 127.0.0.1, signed by CA `ca`.
fn make_server_cert(dir: &Path) -> anyhow::Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    )?;
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    )
}

/// stunnel terminating TLS on `port`, forwarding to `upstream`; killed on drop.
struct Stunnel(Child);

impl Stunnel {
    fn start(dir: &Path, port: u16, upstream: &str) -> anyhow::Result<Self> {
        let config = dir.join("stunnel.conf");
        std::fs::write(
            &config,
            format!(
                "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{port}\n\
                 connect = {upstream}\ncert = {cert}\nkey = {key}\n",
                cert = dir.join("server.pem").display(),
                key = dir.join("server.key").display(),
            ),
        )?;
        let log = std::fs::File::create(dir.join("stunnel.log"))?;
        let child = Command::new("stunnel")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|error| {
                anyhow::anyhow!("cannot start stunnel (tests/install installs stunnel4): {error}")
            })?;
        let stunnel = Self(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                Instant::now() < deadline,
                "stunnel did not listen on {port}: {}",
                std::fs::read_to_string(dir.join("stunnel.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(stunnel)
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tls(ca: &Path) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("security.protocol".to_owned(), "ssl".to_owned()),
        ("ssl.ca.location".to_owned(), ca.display().to_string()),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_right_ca_ships_and_a_wrong_ca_or_plaintext_is_refused() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    make_ca(dir.path(), "ca")?;
    make_ca(dir.path(), "other-ca")?;
    make_server_cert(dir.path())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let broker = OwnBroker::start_advertising(Some(port))?;
    let _stunnel = Stunnel::start(dir.path(), port, &broker.address())?;
    let brokers = format!("127.0.0.1:{port}");
    let topic = "tally.samples.tls";
    let right = tls(&dir.path().join("ca.pem"));

    ships_with(&brokers, topic, &right, 10).await?;

    for (what, librdkafka, says) in [
        (
            "a CA that did not sign the broker's certificate",
            tls(&dir.path().join("other-ca.pem")),
            "certificate verify failed",
        ),
        (
            "plaintext to the TLS port",
            BTreeMap::new(),
            "security.protocol",
        ),
    ] {
        let error = connect_error(&brokers, topic, librdkafka, what)?;
        assert!(
            error.contains(&brokers) && error.contains(says),
            "{what}: {error}"
        );
        println!("{what}: {error}");
    }
    Ok(())
}
