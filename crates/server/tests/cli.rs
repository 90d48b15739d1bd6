//! The command-line tools beside `serve`, run as the real binary: `genconfig`,
//! `checkconfig`, `gentoken`, `gensubtoken`, `checktoken`, `version`.

mod common;

use std::process::{Command, Output};

use common::{Client, SECRET, Server};
use serde_json::json;

fn starling(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(args)
        .env_remove("STARLING_CLIENT_TOKEN_HMAC_SECRET")
        .output()
        .expect("run starling")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn genconfig_writes_a_valid_config_with_fresh_secrets_once() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("starling.toml");
    let file = path.to_str().expect("utf-8 path");
    let o = starling(&["genconfig", "--output", file]);
    assert!(o.status.success(), "{}", stderr(&o));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "secrets are not world-readable");
    }
    let first = std::fs::read_to_string(&path).expect("read");

    let o = starling(&["genconfig", "--output", file]);
    assert_eq!(o.status.code(), Some(2), "no silent overwrite");
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    let o = starling(&["genconfig", "--output", file, "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(std::fs::read_to_string(&path).expect("read"), first);

    let o = starling(&["checkconfig", "--config", file]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("configuration OK"), "{}", stdout(&o));

    // A token made from the file verifies against the file, and not against another secret.
    let o = starling(&["gentoken", "--config", file, "--user", "42", "--ttl", "10m"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o);
    let o = starling(&["checktoken", "--config", file, &token]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("valid connection token for user \"42\", expires in"),
        "{}",
        stdout(&o)
    );
    let o = starling(&[
        "checktoken",
        "--config",
        file,
        "--set",
        "client.token_hmac_secret=\"another\"",
        &token,
    ]);
    assert_eq!(o.status.code(), Some(1), "refused");
    assert!(
        stdout(&o).starts_with("refused: invalid token"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn checkconfig_names_what_is_wrong() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:8000\"\nlisen = 1\n").expect("write");
    let o = starling(&["checkconfig", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("lisen"), "{}", stderr(&o));
    let o = starling(&["checkconfig", "--set", "admin.enabled=true"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("admin.password"), "{}", stderr(&o));
    let o = starling(&["gentoken", "--user", "u"]);
    assert_eq!(o.status.code(), Some(2), "no secret to sign with");
    assert!(
        stderr(&o).contains("client.token_hmac_secret"),
        "{}",
        stderr(&o)
    );
    let o = starling(&["gentoken", "--user", "u", "--ttl", "soon"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn version_prints_the_package_version_commit_and_compiler() {
    let o = starling(&["version"]);
    assert!(o.status.success());
    let line = stdout(&o);
    let head = format!("starling {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&head), "{line}");
    assert!(line.contains(", rustc "), "{line}");
}

/// The tokens the tools make open a real node: a connection token with a channel list,
/// and a subscription token for a private channel.
#[tokio::test]
async fn minted_tokens_open_a_real_node() {
    let server = Server::start(&["--set", "namespaces.secret.private=true"]);
    let secret = format!("client.token_hmac_secret=\"{SECRET}\"");
    let o = starling(&[
        "gentoken",
        "--set",
        &secret,
        "--user",
        "ann",
        "--channels",
        "news,secret:plans",
        "--info",
        r#"{"name":"Ann"}"#,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (mut c, reply) = Client::connect(&server, Some(&stdout(&o))).await;
    assert_eq!(reply["connect"]["expires"], true, "{reply}");
    let r = c.call("subscribe", json!({"channel": "news"})).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let r = c.call("subscribe", json!({"channel": "other"})).await;
    assert_eq!(r["error"]["code"], 103, "not in the token's list: {r}");

    let o = starling(&[
        "gensubtoken",
        "--set",
        &secret,
        "--user",
        "ann",
        "--channel",
        "secret:plans",
        "--ttl",
        "5m",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sub = stdout(&o);
    let r = c
        .call(
            "subscribe",
            json!({"channel": "secret:plans", "token": sub}),
        )
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let o = starling(&["checktoken", "--set", &secret, &sub]);
    assert!(
        stdout(&o)
            .starts_with("valid subscription token for user \"ann\" on channel \"secret:plans\""),
        "{}",
        stdout(&o)
    );
}
