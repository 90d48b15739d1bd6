//! The message log on a hostile disk: a full filesystem (a size-limited tmpfs, as root),
//! recovery when space returns, and the epoch rule across clean and unclean stops.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{API_KEY, Client, Server, WAIT};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A tmpfs of a given size, unmounted (lazily, so a leftover process cannot block it) and
/// removed on drop, also when the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts one, or returns `None` when the test must be skipped (not root and
    /// `STARLING_SKIP_TMPFS_TEST=1`). Not root without that variable is a failure.
    fn mount(size: &str) -> Option<Tmpfs> {
        let uid = Command::new("id").arg("-u").output().expect("run id -u");
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            if std::env::var("STARLING_SKIP_TMPFS_TEST").as_deref() == Ok("1") {
                eprintln!("skipping the tmpfs test: not root (STARLING_SKIP_TMPFS_TEST=1)");
                return None;
            }
            panic!(
                "the disk-full test mounts a size-limited tmpfs and must run as root; \
                 run the tests as root, or set STARLING_SKIP_TMPFS_TEST=1 to skip it"
            );
        }
        let dir = common::storage_dir();
        std::fs::create_dir_all(&dir).expect("mount point");
        let guard = Tmpfs(dir);
        guard.run(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]);
        Some(guard)
    }

    fn run(&self, args: &[&str]) {
        let status = Command::new("mount")
            .args(args)
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount {args:?} {} failed",
            self.0.display()
        );
    }

    fn resize(&self, size: &str) {
        self.run(&["-o", &format!("remount,size={size}")]);
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `POST /api/publish`, returning status, `Retry-After` and the JSON body.
async fn publish_raw(server: &Server, body: Value) -> (u16, Option<String>, Value) {
    let body = body.to_string();
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {}\r\nAuthorization: apikey {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.addr,
        body.len()
    );
    let text = common::raw_exchange(server.addr, request.as_bytes()).await;
    let (head, body) = text.split_once("\r\n\r\n").expect("response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let retry_after = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("retry-after: ")
                .or(l.strip_prefix("Retry-After: "))
        })
        .map(str::to_string);
    (
        status,
        retry_after,
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

async fn metric(server: &Server, name: &str) -> u64 {
    server
        .metric(name)
        .await
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

/// Polls `/ready` until it answers `want` (bounded by 3 x [`WAIT`]).
async fn ready_becomes(server: &Server, want: u16) -> String {
    let deadline = Instant::now() + 3 * WAIT;
    loop {
        let (status, body) = server.get("/ready").await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/ready stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes ~1 KB publications into `channel` until `/ready` reports the log degraded
/// (bounded by 3 x [`WAIT`]); returns the last offset given out. The log retries every
/// second and may resume for a moment whenever cutting back its unsynced tail frees
/// room, so "failed" is a state to drive into, not to wait for.
async fn publish_until_degraded(server: &Server, channel: &str) -> (u64, String) {
    let data = "z".repeat(1000);
    let deadline = Instant::now() + 3 * WAIT;
    let mut last = 0;
    loop {
        let (status, _, r) = publish_raw(server, json!({"channel": channel, "data": data})).await;
        match status {
            200 => last = r["result"]["offset"].as_u64().expect("offset"),
            503 => assert_eq!(r["error"]["code"], 116, "{r}"),
            _ => panic!("{status} {r}"),
        }
        let (status, body) = server.get("/ready").await;
        if status == 503 {
            return (last, body);
        }
        assert!(Instant::now() < deadline, "the log never failed");
    }
}

/// Reads publications in the background and keeps the highest offset seen, so that the
/// subscriber's queue never overflows while the test publishes.
fn read_in_background(mut client: Client) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let top = Arc::new(AtomicU64::new(0));
    let seen = top.clone();
    let task = tokio::spawn(async move {
        while let Some(Ok(frame)) = client.ws.next().await {
            let Message::Text(text) = frame else { continue };
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let msg: Value = serde_json::from_str(line).expect("json");
                if let Some(offset) = msg["push"]["pub"]["offset"].as_u64() {
                    seen.fetch_max(offset, Ordering::SeqCst);
                }
            }
        }
    });
    (top, task)
}

const ARGS: [&str; 3] = ["--dev", "--set", "namespaces.feed.history_size=100000"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_degrades_the_log_then_it_recovers_and_the_epoch_changes() {
    let Some(fs) = Tmpfs::mount("2m") else {
        return;
    };
    let dir = fs.path().join("log");
    let mut server = Server::start_with_storage(&dir, &ARGS);
    let (mut sub, _) = Client::connect(&server, None).await;
    let reply = sub.call("subscribe", json!({"channel": "feed:t"})).await;
    let epoch = reply["subscribe"]["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    let (seen, reader) = read_in_background(sub);

    // 4,000 publications of ~1 KB into a 2 MiB filesystem: the log fills it and fails.
    let data = "x".repeat(1000);
    let mut last = 0;
    for i in 0..4_000 {
        let (status, retry, r) =
            publish_raw(&server, json!({"channel": "feed:t", "data": data})).await;
        match status {
            200 => last = r["result"]["offset"].as_u64().expect("offset"),
            503 => {
                assert_eq!(r["error"]["code"], 116, "{r}");
                assert_eq!(retry.as_deref(), Some("1"), "{r}");
            }
            _ => panic!("publication {i}: {status} {r}"),
        }
    }
    assert!(
        last > 3_000,
        "live delivery goes on while the log is failed: {last}"
    );
    assert!(metric(&server, "starling_journal_errors_total").await > 0);
    assert!(metric(&server, "starling_journal_failures_total").await >= 1);
    let (last, body) = publish_until_degraded(&server, "feed:t").await;
    assert!(body.contains("degraded"), "{body}");
    assert_eq!(metric(&server, "starling_journal_failed").await, 1);
    // A durable publish is refused while the log is failed, and uses no offset.
    let (status, retry, r) = publish_raw(
        &server,
        json!({"channel": "feed:t", "data": "d", "durable": true}),
    )
    .await;
    assert_eq!(
        (status, r["error"]["code"].as_u64()),
        (503, Some(116)),
        "{r}"
    );
    assert_eq!(retry.as_deref(), Some("1"));

    // Space comes back: the log resumes on its own.
    fs.resize("64m");
    ready_becomes(&server, 200).await;
    assert!(metric(&server, "starling_journal_recoveries_total").await >= 1);
    let (status, _, r) = publish_raw(
        &server,
        json!({"channel": "feed:t", "data": "after", "durable": true}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let durable_offset = r["result"]["offset"].as_u64().expect("offset");
    assert_eq!(durable_offset, last + 1, "refused publishes used no offset");
    let deadline = Instant::now() + WAIT;
    while seen.load(Ordering::SeqCst) < durable_offset {
        assert!(Instant::now() < deadline, "subscriber missed publications");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen_top = seen.load(Ordering::SeqCst);

    // An orderly stop after a run that lost records is not clean: new epoch at start.
    server.signal("TERM");
    assert_eq!(server.wait_exit(), Some(0));
    reader.abort();
    drop(server);
    let server = Server::start_with_storage(&dir, &ARGS);
    let (_, r) = server
        .api(
            "history",
            json!({"channel": "feed:t", "limit": 1, "reverse": true}),
        )
        .await;
    let new_epoch = r["result"]["epoch"].as_str().expect("epoch").to_string();
    let top = r["result"]["offset"].as_u64().expect("offset");
    assert_ne!(new_epoch, epoch, "records were lost: the epoch must change");
    assert_eq!(
        top, durable_offset,
        "the durable publication is the log's top"
    );
    assert!(top <= seen_top);
    // A client that saw an offset lost from the log cannot recover it in the old epoch.
    let (mut c, _) = Client::connect(&server, None).await;
    let sub = c
        .call(
            "subscribe",
            json!({"channel": "feed:t", "recover": true, "offset": last - 10, "epoch": epoch}),
        )
        .await;
    assert!(sub["subscribe"].get("recovered").is_none(), "{sub}");
    assert_eq!(sub["subscribe"]["epoch"], new_epoch.as_str());
    let (status, _, r) = publish_raw(&server, json!({"channel": "feed:t", "data": 1})).await;
    assert_eq!(status, 200);
    assert_eq!(r["result"]["offset"], top + 1);
    assert_eq!(
        r["result"]["epoch"],
        new_epoch.as_str(),
        "never the old epoch"
    );
    drop(c);
    drop(server);
}

#[tokio::test]
async fn a_clean_stop_keeps_the_epoch_and_a_kill_renews_it() {
    let dir = common::storage_dir();
    let mut server = Server::start_with_storage(&dir, &ARGS);
    let mut epoch = String::new();
    for i in 1..=20 {
        let (_, _, r) = publish_raw(&server, json!({"channel": "feed:c", "data": i})).await;
        epoch = r["result"]["epoch"].as_str().expect("epoch").to_string();
    }
    server.signal("TERM");
    assert_eq!(server.wait_exit(), Some(0));
    drop(server);

    // Clean: same epoch, a client at offset 5 recovers 6..20.
    let mut server = Server::start_with_storage(&dir, &ARGS);
    let (mut c, _) = Client::connect(&server, None).await;
    let sub = c
        .call(
            "subscribe",
            json!({"channel": "feed:c", "recover": true, "offset": 5, "epoch": epoch}),
        )
        .await;
    assert_eq!(sub["subscribe"]["recovered"], true, "{sub}");
    assert_eq!(
        sub["subscribe"]["publications"].as_array().map(Vec::len),
        Some(15)
    );
    drop(c);
    // Durable: a kill loses what is not yet written, and this one must survive it.
    let (_, _, r) = publish_raw(
        &server,
        json!({"channel": "feed:c", "data": 21, "durable": true}),
    )
    .await;
    assert_eq!(r["result"]["epoch"], epoch.as_str());
    server.kill();
    drop(server);

    // Unclean: a new epoch, offsets continue.
    let mut server = Server::start_with_storage(&dir, &ARGS);
    let (_, _, r) = publish_raw(&server, json!({"channel": "feed:c", "data": 22})).await;
    let renewed = r["result"]["epoch"].as_str().expect("epoch").to_string();
    assert_ne!(renewed, epoch);
    assert_eq!(r["result"]["offset"], 22);
    server.signal("TERM");
    assert_eq!(server.wait_exit(), Some(0));
    drop(server);

    // The renewed epoch was written to the log: it holds across a clean restart.
    let server = Server::start_with_storage(&dir, &ARGS);
    let (_, r) = server.api("history", json!({"channel": "feed:c"})).await;
    assert_eq!(r["result"]["epoch"], renewed.as_str(), "{r}");
    assert_eq!(r["result"]["offset"], 22);
    assert_eq!(
        r["result"]["publications"].as_array().map(Vec::len),
        Some(22),
        "history stays readable"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_corrupt_record_is_skipped_and_never_recovered_across() {
    let dir = common::storage_dir();
    let mut server = Server::start_with_storage(&dir, &ARGS);
    let mut epoch = String::new();
    for i in 1..=20 {
        let (_, _, r) = publish_raw(
            &server,
            json!({"channel": "feed:r", "data": format!("record-{i:02}")}),
        )
        .await;
        epoch = r["result"]["epoch"].as_str().expect("epoch").to_string();
    }
    server.signal("TERM");
    assert_eq!(server.wait_exit(), Some(0));
    drop(server);

    // Damage publication 10 in the middle of the segment (one byte of its data).
    let segment = dir.join("00000000000000000000.seg");
    let mut bytes = std::fs::read(&segment).expect("segment");
    let at = bytes
        .windows(9)
        .position(|w| w == b"record-10")
        .expect("publication 10 in the segment");
    bytes[at + 3] ^= 0x20;
    std::fs::write(&segment, &bytes).expect("write segment");

    let server = Server::start_with_storage(&dir, &ARGS);
    let (_, r) = server.api("history", json!({"channel": "feed:r"})).await;
    let offsets: Vec<u64> = r["result"]["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| p["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(
        offsets,
        (11..=20).collect::<Vec<_>>(),
        "the records after it survive"
    );
    assert_eq!(r["result"]["offset"], 20, "offsets are not reused");
    let new_epoch = r["result"]["epoch"].as_str().expect("epoch").to_string();
    assert_ne!(new_epoch, epoch, "a repaired log is an unclean start");
    // No position before the lost record can be recovered, in either epoch.
    let (_, r) = server
        .api(
            "history",
            json!({"channel": "feed:r", "since": {"offset": 5, "epoch": new_epoch}}),
        )
        .await;
    assert_eq!(r["error"]["code"], 112, "{r}");
    let (mut c, _) = Client::connect(&server, None).await;
    let sub = c
        .call(
            "subscribe",
            json!({"channel": "feed:r", "recover": true, "offset": 5, "epoch": epoch}),
        )
        .await;
    assert!(sub["subscribe"].get("recovered").is_none(), "{sub}");
    drop(c);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_node_killed_on_a_full_disk_starts_again_with_new_epochs() {
    let Some(fs) = Tmpfs::mount("1m") else {
        return;
    };
    let dir = fs.path().join("log");
    let mut server = Server::start_with_storage(&dir, &ARGS);
    let (_, _, r) = publish_raw(&server, json!({"channel": "feed:f", "data": 0})).await;
    let epoch = r["result"]["epoch"].as_str().expect("epoch").to_string();
    publish_until_degraded(&server, "feed:f").await;
    server.kill();
    drop(server);

    // Still full (cutting off a torn tail frees a few bytes at most): the node starts
    // instead of refusing to, with new epochs, and goes on publishing, degraded again
    // once those bytes are used.
    let server = Server::start_with_storage(&dir, &ARGS);
    let (_, r) = server
        .api("history", json!({"channel": "feed:f", "limit": 1}))
        .await;
    let new_epoch = r["result"]["epoch"].as_str().expect("epoch");
    assert_ne!(new_epoch, epoch, "{r}");
    let (status, _, r) = publish_raw(&server, json!({"channel": "feed:f", "data": 1})).await;
    assert_eq!(status, 200, "{r}");
    let (_, body) = publish_until_degraded(&server, "feed:f").await;
    assert!(body.contains("degraded"), "{body}");
    drop(server);
}

/// A durable publish that reached its subscribers and then failed to reach the disk
/// records its error under its idempotency key: the retry gets the same answer and the
/// publication is not delivered a second time (it was, when a failure freed the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_publish_that_failed_after_delivery_is_not_delivered_again_on_retry() {
    let Some(fs) = Tmpfs::mount("1m") else {
        return;
    };
    let dir = fs.path().join("log");
    let server = Server::start_with_storage(
        &dir,
        &[
            "--dev",
            "--set",
            "namespaces.feed.history_size=100000",
            "--set",
            "client.max_queue_bytes=16777216",
        ],
    );
    let (mut sub, _) = Client::connect(&server, None).await;
    sub.call("subscribe", json!({"channel": "feed:i"})).await;
    // Durable publications one at a time until the disk is full: the first failure is
    // necessarily one the log had accepted (and the hub delivered), since only a write
    // error puts the log in its failed state.
    let filler = "y".repeat(50_000);
    let mut failed = None;
    for i in 0..100 {
        let data = format!("{i}-{filler}");
        let body = json!({"channel": "feed:i", "data": data, "durable": true, "idempotency_key": format!("k{i}")});
        let (status, _, r) = publish_raw(&server, body.clone()).await;
        match status {
            200 => {}
            503 => {
                failed = Some((i, body, r));
                break;
            }
            _ => panic!("publication {i}: {status} {r}"),
        }
    }
    let (failed_i, body, first) = failed.expect("a 1 MiB disk fills up within 100 x 50 KB");
    assert_eq!(first["error"]["code"], 116, "{first}");
    assert!(
        first["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("delivered but not persisted")),
        "{first}"
    );
    let (status, _, again) = publish_raw(&server, body).await;
    assert_eq!(
        (status, &again),
        (503, &first),
        "the recorded answer, replayed"
    );
    // A marker (not durable: delivered live while the log is failed) ends the stream.
    let (status, _, marker) =
        publish_raw(&server, json!({"channel": "feed:i", "data": "marker"})).await;
    assert_eq!(status, 200, "{marker}");
    let marker_offset = marker["result"]["offset"].as_u64().expect("offset");
    let mut expected = 1;
    let mut copies = 0;
    let prefix = format!("{failed_i}-");
    loop {
        let (_, p) = sub.next_publication().await;
        assert_eq!(p["offset"], expected, "each offset once, in order");
        if p["data"] == "marker" {
            break;
        }
        if p["data"].as_str().is_some_and(|d| d.starts_with(&prefix)) {
            copies += 1;
        }
        expected += 1;
    }
    assert_eq!(
        copies, 1,
        "the failed publication was delivered exactly once"
    );
    assert_eq!(expected, marker_offset);
    assert_eq!(marker_offset, failed_i + 2, "no offset for a second copy");
    drop(server);
}
