//! The report as text for a reader (sections Load, What it takes, First bottleneck,
//! Growth table, then the figures each `[n]` refers to) and as JSON.

use std::fmt::Write as _;

use crate::Report;
use crate::figures::{Figures, Id};
use crate::growth::GrowthRow;
use crate::load::{DAY, HOUR};
use crate::plan::{Engine, Resource, Usage};
use crate::workload::{Compression, Encoding, Subscribers, Workload};

const WIDTH: usize = 100;

/// The whole report as text.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let w = &r.workload;
    let f = &r.figures;
    let l = &r.load;
    let p = &r.plan;
    let _ = writeln!(out, "Capacity plan: {}", describe(w));
    out.push('\n');

    // Load.
    out.push_str("Load\n");
    let mut rows: Vec<[String; 3]> = Vec::new();
    let per_user = if w.connections_per_user == 1.0 {
        "1 connection".to_string()
    } else {
        format!("{} connections", num(w.connections_per_user))
    };
    rows.push([
        "connections".into(),
        count(l.connections),
        format!("users × {per_user}"),
    ]);
    rows.push([
        "publications".into(),
        format!("{}/s", count(l.publications_per_s)),
        format!("users × {}/s", num(w.msg_rate)),
    ]);
    rows.push([
        "deliveries".into(),
        format!("{}/s", count(l.deliveries_per_s)),
        format!("publications × fan-out {}", num(l.fanout)),
    ]);
    rows.push([
        "bytes in, payload".into(),
        bytes_rate(l.payload_in_per_s),
        format!(
            "publications × {} B (the source analysis's figure)",
            count(w.msg_size)
        ),
    ]);
    rows.push([
        "bytes in, wire".into(),
        format!(
            "{} = {}",
            bytes_rate(l.bytes_in_per_s),
            gbps(l.bytes_in_per_s)
        ),
        format!(
            "each + {} B of HTTP request, + {} B of headers {}",
            count(f[Id::PublishRequest]),
            count(f[Id::PacketOverhead]),
            cite(&[Id::PublishRequest, Id::PacketOverhead])
        ),
    ]);
    let (envelope, ratio) = match w.encoding {
        Encoding::Json => (Id::JsonEnvelope, Id::DeflateRatioJson),
        Encoding::Msgpack => (Id::MsgpackEnvelope, Id::DeflateRatioMsgpack),
    };
    let push = if l.compressed {
        let given = matches!(w.compression, Compression::Deflate { ratio: Some(_) });
        format!(
            "a {} B push deflated to {} B {}",
            count(w.msg_size + f[envelope]),
            count(l.push_bytes),
            if given {
                format!("(--compression-ratio) {}", cite(&[envelope]))
            } else {
                cite(&[envelope, ratio])
            }
        )
    } else {
        format!("a {} B push {}", count(l.push_bytes), cite(&[envelope]))
    };
    rows.push([
        "bytes out, wire".into(),
        format!(
            "{} = {}",
            bytes_rate(l.bytes_out_per_s),
            gbps(l.bytes_out_per_s)
        ),
        format!(
            "deliveries × ({push} + {} B of headers {})",
            count(f[Id::PacketOverhead]),
            cite(&[Id::PacketOverhead])
        ),
    ]);
    rows.push([
        "message volume".into(),
        per_hour_day(l.payload_in_per_s),
        "the payload alone (what the source analysis calls logs)".into(),
    ]);
    // A single node logs every publication; a cluster node logs only what it publishes,
    // and only when it archives (its archive journal): the same bytes over all nodes.
    let logged = p.engine == Engine::Memory || p.archive.is_some();
    rows.push([
        if p.engine == Engine::Memory {
            "message log".into()
        } else {
            "archive journal".into()
        },
        if logged {
            per_hour_day(l.log_bytes_per_s)
        } else {
            "none".into()
        },
        if p.engine == Engine::Memory {
            format!(
                "records of size + {} B {} (storage.dir; retention: storage.max_bytes)",
                count(f[Id::LogRecordOverhead]),
                cite(&[Id::LogRecordOverhead])
            )
        } else if logged {
            format!(
                "over all nodes: each keeps what it publishes, records of size + {} B {} \
                 (storage.dir/cluster-archive), until archived and past retention",
                count(f[Id::LogRecordOverhead]),
                cite(&[Id::LogRecordOverhead])
            )
        } else {
            "a cluster node keeps no message log (Redis holds the streams)".into()
        },
    ]);
    rows.push(match &p.archive {
        Some(a) => [
            "archive".into(),
            per_hour_day(l.archive_bytes_per_s),
            format!(
                "{}/s rows of size + {} B (table and indexes) {}; plus about as much WAL \
                 until checkpoints",
                count(a.rows_per_s),
                count(f[Id::ArchiveRowOverhead]),
                cite(&[Id::ArchiveRowOverhead])
            ),
        ],
        None => [
            "archive".into(),
            "off".into(),
            "--archive-days D keeps D days".into(),
        ],
    });
    rows.push(if w.history > 0.0 {
        [
            "history".into(),
            format!("{} entries", count(l.history_entries)),
            format!(
                "{} in {} {} ({} channels)",
                bytes(l.history_bytes),
                if p.engine == Engine::Memory {
                    "the node"
                } else {
                    "Redis"
                },
                cite(&[Id::RedisEntryOverhead]),
                count(l.channels)
            ),
        ]
    } else {
        [
            "history".into(),
            "off".into(),
            "--history N keeps N per channel".into(),
        ]
    });
    if w.presence {
        rows.push([
            "presence".into(),
            bytes(l.presence_bytes),
            format!(
                "{}/s writes {}",
                count(l.presence_writes_per_s),
                cite(&[Id::PresenceBytes, Id::PresenceTtl])
            ),
        ]);
    }
    out.push_str(&table3(&rows));
    out.push('\n');

    // What it takes.
    out.push_str("What it takes\n");
    let mut rows: Vec<[String; 3]> = Vec::new();
    let engine = match p.engine {
        Engine::Memory => "memory engine: one node, no Redis".to_string(),
        Engine::Redis => format!(
            "through Redis; a publication is heard by {} node{} on average",
            num(p.hearing_nodes),
            if p.hearing_nodes == 1.0 { "" } else { "s" }
        ),
    };
    rows.push(["Starling nodes".into(), count(p.nodes as f64), engine]);
    let per_node: Vec<String> = [
        Resource::NodeFiles,
        Resource::NodeMemory,
        Resource::NodeCpu,
        Resource::NodeNetwork,
    ]
    .iter()
    .filter_map(|r| p.usage(*r))
    .map(|u| {
        format!(
            "{} {} {}",
            u.resource.short(),
            used_of(u),
            cite(u.resource.figures())
        )
    })
    .collect();
    rows.push(["  per node".into(), String::new(), per_node.join("; ")]);
    if let Some(holds) = p.node_holds {
        rows.push([
            "  a node carries".into(),
            count(round3(holds)),
            format!(
                "connections of this workload within {} of its first limit (the source \
                 analysis's rule of thumb: 1,000-5,000 per server)",
                pct(f[Id::MaxUtilization])
            ),
        ]);
    }
    match &p.broker {
        Some(b) => {
            rows.push([
                "Redis shards".into(),
                count(p.shards as f64),
                format!(
                    "{} cores of Redis CPU in all, one per shard ({}/s publications × its \
                     cost, {}/s messages: P × (1 + {})), {} of history and presence, {} out \
                     {}; or a Redis Cluster of as many masters",
                    num(b.cpu_cores),
                    count(p_rate(b, p)),
                    count(b.messages_per_s),
                    num(p.hearing_nodes),
                    bytes(b.memory_bytes),
                    gbps(b.net_out_per_s),
                    cite(&[
                        Id::RedisPublicationCpu,
                        Id::ShardMessages,
                        Id::RedisMemory,
                        Id::Nic
                    ])
                ),
            ]);
        }
        None => rows.push([
            "Redis shards".into(),
            "0".into(),
            "one node needs no Redis".into(),
        ]),
    }
    rows.push([
        "load balancer".into(),
        format!(
            "{} process{}",
            count(p.balancers as f64),
            if p.balancers == 1 { "" } else { "es" }
        ),
        format!(
            "{} connections: {} sockets (client and upstream side), {} each way {}",
            count(l.connections),
            count(p.balancer_sockets),
            gbps(l.bytes_out_per_s + l.bytes_in_per_s),
            cite(&[Id::MaxFiles, Id::Nic])
        ),
    ]);
    match &p.archive {
        Some(a) => rows.push([
            "archive storage".into(),
            bytes(a.bytes_kept),
            format!(
                "PostgreSQL: {} rows over {} days, {} a day, about {} daily partitions; {} \
                 writer{} at {}/s {}",
                short(a.rows_kept),
                num(w.archive_days),
                bytes(a.bytes_per_day),
                count(a.partitions),
                count(a.writers_needed as f64),
                plural(a.writers_needed),
                count(f[Id::ArchiveRows]),
                cite(&[Id::ArchiveRows, Id::ArchivePartitionsAhead])
            ),
        ]),
        None => rows.push(["archive storage".into(), "none".into(), String::new()]),
    }
    rows.push([
        "reconnect storm".into(),
        format!("{} s", num(p.storm_s)),
        if p.nodes > 1 {
            format!(
                "a failed node's {} clients re-admitted by the other {} nodes at {}/s each {}",
                count(p.connections_per_node),
                p.nodes - 1,
                count(f[Id::AdmissionRate]),
                cite(&[Id::AdmissionRate])
            )
        } else {
            format!(
                "every client re-admitted after a restart at {}/s {}",
                count(f[Id::AdmissionRate]),
                cite(&[Id::AdmissionRate])
            )
        },
    ]);
    out.push_str(&table3(&rows));
    out.push('\n');

    if let Some(t) = &r.topology {
        topology_text(&mut out, t);
    }

    // First bottleneck.
    let _ = writeln!(
        out,
        "First bottleneck (per machine of each kind, as planned; the plan keeps each under \
         {} {})",
        pct(f[Id::MaxUtilization]),
        cite(&[Id::MaxUtilization])
    );
    let mut rows = vec![vec![
        "resource".to_string(),
        "used".into(),
        "of".into(),
        "use".into(),
        "headroom".into(),
        "alone needs".into(),
        "figures".into(),
    ]];
    let mut usages: Vec<&Usage> = p.usages.iter().collect();
    usages.sort_by(|a, b| b.utilization.total_cmp(&a.utilization));
    for u in usages {
        rows.push(vec![
            u.resource.label().to_string(),
            format!("{} {}", num(u.used), u.unit),
            format!("{} {}", num(u.capacity), u.unit),
            pct(u.utilization),
            u.headroom.map_or("-".into(), |h| format!("{}×", num(h))),
            needs(u),
            cite(u.resource.figures()),
        ]);
    }
    out.push_str(&table(&rows, 2));
    if let Some(first) = p.first() {
        let _ = writeln!(
            out,
            "  {} {}",
            if p.feasible {
                "→"
            } else {
                "→ NOT FEASIBLE:"
            },
            match first.headroom {
                Some(h) if p.feasible => format!(
                    "{} runs out first, at {}× this load with these machines",
                    first.resource.label(),
                    num(h)
                ),
                Some(_) => format!(
                    "{} is over its capacity ({})",
                    first.resource.label(),
                    pct(first.utilization)
                ),
                None => "nothing is used".to_string(),
            }
        );
    }
    out.push('\n');

    out.push_str(&growth_text(&r.growth, false));
    if !p.notes.is_empty() || !r.inputs.is_empty() {
        out.push_str("\nNotes\n");
        for note in p.notes.iter().chain(r.inputs.iter()) {
            out.push_str(&wrap(note, "  - ", "    "));
        }
    }
    out.push('\n');
    out.push_str(&figures_text(f));
    out
}

/// The growth table; `standalone` (`--growth`) adds where its figures are listed.
pub fn growth_text(rows: &[GrowthRow], standalone: bool) -> String {
    let mut out = String::from(
        "Growth table (the same per-user workload; network traffic through the balancers)\n",
    );
    let mut cells = vec![vec![
        "users".to_string(),
        "connections".into(),
        "server load".into(),
        "network traffic".into(),
        "data storage".into(),
        "first limit".into(),
    ]];
    for row in rows {
        cells.push(growth_cells(row));
    }
    out.push_str(&table(&cells, 2));
    if standalone {
        out.push_str(
            "  (the model's coefficients and their sources: the same command without --growth)\n",
        );
    }
    out
}

fn growth_cells(row: &GrowthRow) -> Vec<String> {
    let redis = match row.engine {
        Engine::Memory => String::new(),
        Engine::Redis => format!(" + {} Redis", count(row.shards as f64)),
    };
    let load = format!(
        "{}/s deliveries: {} node{} ({} cores){redis}",
        short(row.deliveries_per_s),
        count(row.nodes as f64),
        plural(row.nodes),
        num(row.cores_used),
    );
    let network = format!(
        "in {}, out {}",
        bytes_rate(row.bytes_in_per_s),
        bytes_rate(row.bytes_out_per_s)
    );
    let mut storage = format!("{}/day payload", bytes(row.payload_per_day));
    if let Some(log) = row.log_per_day {
        let _ = write!(storage, ", {}/day log", bytes(log));
    }
    if let Some(archive) = row.archive_per_day {
        let _ = write!(storage, ", {}/day archive", bytes(archive));
    }
    let limit = format!(
        "{}{} {}",
        if row.feasible { "" } else { "over: " },
        row.bottleneck.short(),
        pct(row.utilization)
    );
    vec![
        short(row.users),
        short(row.connections),
        load,
        network,
        storage,
        limit,
    ]
}

/// The figures list: `[n] name = value unit — source`.
pub fn figures_text(f: &Figures) -> String {
    let mut out = String::from("Figures (the model's coefficients; the [n] above refer to them)\n");
    for (id, figure) in f.iter() {
        let _ = writeln!(
            out,
            "  [{}] {} = {} {}",
            id.marker(),
            id.name(),
            num(figure.value),
            figure.unit
        );
        out.push_str(&wrap(&figure.source.text, "       ", "       "));
    }
    out
}

/// The report as pretty JSON.
pub fn json(r: &Report) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(r)
}

/// The section for `--nodes`/`--shards`: what the model predicts for that topology.
fn topology_text(out: &mut String, t: &crate::Prediction) {
    let _ = writeln!(
        out,
        "This topology ({} node{}, {}), as the model predicts it (per node unless said)",
        t.nodes,
        if t.nodes == 1 { "" } else { "s" },
        match t.shards {
            0 => "memory engine".to_string(),
            1 => "1 Redis shard".to_string(),
            s => format!("{s} Redis shards"),
        }
    );
    let rows = vec![
        [
            "connections".into(),
            count(t.connections_per_node),
            String::new(),
        ],
        [
            "process memory".into(),
            format!("{} MiB", num(t.process_memory_mib)),
            format!(
                "the node's RSS: connections × memory per connection + base {}",
                cite(&[
                    Id::MemoryPerConnection,
                    Id::MemoryPerConnectionCluster,
                    Id::NodeBaseMemory
                ])
            ),
        ],
        [
            "kernel memory".into(),
            format!("{} MiB", num(t.kernel_memory_mib)),
            format!(
                "socket buffers, not in the RSS {}",
                cite(&[Id::KernelPerSocket])
            ),
        ],
        [
            "CPU".into(),
            format!("{} cores", num(t.cpu_cores_per_node)),
            format!(
                "deliveries {}, publishes {}, heard from Redis {}, compression {}, upkeep {}",
                num(t.cpu_deliveries),
                num(t.cpu_publications),
                num(t.cpu_heard),
                num(t.cpu_compression),
                num(t.cpu_upkeep)
            ),
        ],
        [
            "network".into(),
            format!(
                "out {}, in {}",
                gbps_of(t.out_gbps_per_node),
                gbps_of(t.in_gbps_per_node)
            ),
            format!(
                "a publication is heard by {} node(s) on average",
                num(t.hearing_nodes)
            ),
        ],
        [
            "Redis, per shard".into(),
            format!(
                "{} cores, {}/s messages",
                num(t.redis_cpu_cores_per_shard),
                count(t.redis_messages_per_shard)
            ),
            format!(
                "publications × their measured cost + one pub/sub message per further \
                 hearing node + presence writes {}",
                cite(&[Id::RedisPublicationCpu, Id::ShardMessages])
            ),
        ],
    ];
    out.push_str(&table3(&rows));
    out.push('\n');
}

/// Publications per second through Redis, from the broker's messages (P × (1 + H)).
fn p_rate(b: &crate::plan::Broker, p: &crate::Plan) -> f64 {
    b.messages_per_s / (1.0 + p.hearing_nodes)
}

/// A Gbit/s figure as text.
fn gbps_of(x: f64) -> String {
    gbps(x * crate::plan::GBPS)
}

/// The workload in one line.
pub fn describe(w: &Workload) -> String {
    format!("{} users × {}", count(w.users), describe_per_user(w))
}

/// The workload of one user (the plot's title).
pub fn describe_per_user(w: &Workload) -> String {
    let mix = if w.mix.len() == 1 {
        format!("fan-out {}", subscribers(w.mix[0].subscribers))
    } else {
        let classes: Vec<String> = w
            .mix
            .iter()
            .map(|c| {
                format!(
                    "{} {} × {}",
                    c.name,
                    pct(c.share),
                    subscribers(c.subscribers)
                )
            })
            .collect();
        format!("channel mix {}", classes.join(", "))
    };
    let encoding = match w.encoding {
        Encoding::Json => "JSON",
        Encoding::Msgpack => "MessagePack",
    };
    let compression = match w.compression {
        Compression::None => "no compression".to_string(),
        Compression::Deflate { ratio: None } => "deflate".to_string(),
        Compression::Deflate { ratio: Some(r) } => format!("deflate to {}", num(r)),
    };
    format!(
        "{} publication{}/s × {} B, {mix}, {encoding}, {compression}",
        num(w.msg_rate),
        if w.msg_rate == 1.0 { "" } else { "s" },
        count(w.msg_size)
    )
}

fn subscribers(s: Subscribers) -> String {
    match s {
        Subscribers::Count(n) => num(n),
        Subscribers::All(_) => "all".into(),
    }
}

fn used_of(u: &Usage) -> String {
    match u.resource {
        Resource::NodeFiles => format!("{} of {}", count(u.used), count(u.capacity)),
        _ => format!("{} of {} {}", num(u.used), num(u.capacity), u.unit),
    }
}

fn needs(u: &Usage) -> String {
    let kind = match u.resource {
        Resource::NodeFiles | Resource::NodeMemory | Resource::NodeCpu | Resource::NodeNetwork => {
            "node"
        }
        Resource::ShardCpu | Resource::ShardMemory | Resource::ShardNetwork => "shard",
        Resource::HotChannel => "shard",
        Resource::BalancerSockets | Resource::BalancerNetwork => "balancer",
        Resource::ArchiveWriter => "writer",
    };
    match u.needs {
        Some(n) => format!("{} {kind}{}", count(n as f64), plural(n)),
        None => "no number".into(),
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `[3,5]`: the markers of `ids`.
pub fn cite(ids: &[Id]) -> String {
    let mut marks: Vec<usize> = ids.iter().map(|id| id.marker()).collect();
    marks.sort_unstable();
    marks.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < marks.len() {
        let mut j = i;
        while j + 1 < marks.len() && marks[j + 1] == marks[j] + 1 {
            j += 1;
        }
        parts.push(match j - i {
            0 => marks[i].to_string(),
            1 => format!("{},{}", marks[i], marks[j]),
            _ => format!("{}-{}", marks[i], marks[j]),
        });
        i = j + 1;
    }
    format!("[{}]", parts.join(","))
}

/// An integer with thousands separators (rounded).
pub fn count(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    if x.abs() < 100.0 && x.fract().abs() > 1e-9 {
        return num(x);
    }
    let digits = format!("{:.0}", x.abs());
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if x < 0.0 {
        grouped.insert(0, '-');
    }
    grouped
}

/// `x` rounded to three significant digits (for estimates that are not exact).
pub fn round3(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let scale = 10f64.powi(x.abs().log10().floor() as i32 - 2);
    (x / scale).round() * scale
}

/// A number with about three significant digits.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() {
        "-".into()
    } else if a >= 1000.0 {
        count(x)
    } else if a >= 100.0 || (x.fract() == 0.0) {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 0.01 {
        format!("{x:.2}")
    } else if a >= 0.001 {
        format!("{x:.3}")
    } else if a == 0.0 {
        "0".into()
    } else {
        "<0.001".into()
    }
}

/// A count in short form: 950, 10k, 1.5M, 2.0bn.
pub fn short(x: f64) -> String {
    for (size, suffix) in [(1e9, "bn"), (1e6, "M"), (1e3, "k")] {
        if x >= size {
            let v = x / size;
            return if v >= 10.0 || v.fract() == 0.0 {
                format!("{v:.0}{suffix}")
            } else {
                format!("{v:.1}{suffix}")
            };
        }
    }
    num(x)
}

/// Bytes in decimal units (the source analysis's MB and GB).
pub fn bytes(x: f64) -> String {
    for (size, unit) in [
        (1e15, "PB"),
        (1e12, "TB"),
        (1e9, "GB"),
        (1e6, "MB"),
        (1e3, "kB"),
    ] {
        if x >= size {
            return format!("{} {unit}", num(x / size));
        }
    }
    format!("{} B", num(x))
}

/// Bytes per second.
pub fn bytes_rate(x: f64) -> String {
    format!("{}/s", bytes(x))
}

/// Bytes per second as Gbit/s.
pub fn gbps(x: f64) -> String {
    format!("{} Gbit/s", num(x * 8.0 / 1e9))
}

/// Per hour and per day.
fn per_hour_day(per_s: f64) -> String {
    format!("{}/h, {}/day", bytes(per_s * HOUR), bytes(per_s * DAY))
}

/// A fraction as a percentage.
pub fn pct(x: f64) -> String {
    let p = x * 100.0;
    if p >= 10.0 || p == 0.0 {
        format!("{p:.0} %")
    } else if p >= 0.1 {
        format!("{p:.1} %")
    } else {
        "<0.1 %".into()
    }
}

/// Three columns: name, value, explanation (wrapped).
fn table3(rows: &[[String; 3]]) -> String {
    let w0 = rows.iter().map(|r| width(&r[0])).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| width(&r[1])).max().unwrap_or(0);
    let mut out = String::new();
    for r in rows {
        let head = format!("  {}  {}  ", pad(&r[0], w0), pad(&r[1], w1));
        let indent = " ".repeat(width(&head));
        if r[2].is_empty() {
            out.push_str(head.trim_end());
            out.push('\n');
        } else {
            out.push_str(&wrap(&r[2], &head, &indent));
        }
    }
    out
}

/// Aligned columns, the first row a header.
fn table(rows: &[Vec<String>], indent: usize) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| width(s))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = " ".repeat(indent);
        for (c, cell) in row.iter().enumerate() {
            line.push_str(&pad(cell, widths[c]));
            line.push_str("  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn pad(s: &str, w: usize) -> String {
    let mut p = s.to_string();
    p.push_str(&" ".repeat(w.saturating_sub(width(s))));
    p
}

/// `text` after `first`, wrapped at [`WIDTH`] with `rest` before each next line.
fn wrap(text: &str, first: &str, rest: &str) -> String {
    let mut out = String::new();
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && width(&line) + 1 + width(word) > WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            line = rest.to_string();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report;

    fn example() -> Report {
        report(
            &Workload::new(10_000.0, 1.0, 1024.0, 1.0),
            &Figures::default(),
        )
        .expect("report")
    }

    #[test]
    fn the_text_has_every_section_and_the_key_numbers() {
        let text = text(&example());
        for section in [
            "\nLoad\n",
            "\nWhat it takes\n",
            "\nFirst bottleneck",
            "\nGrowth table",
            "\nFigures",
        ] {
            assert!(text.contains(section), "{section}: {text}");
        }
        for number in [
            "10,000 users × 1 publication/s × 1,024 B",
            "publications       10,000/s",
            "10.2 MB/s",
            "36.9 GB/h",
            "Starling nodes",
            "node CPU runs out first",
            "[35] max_utilization = 0.70",
        ] {
            assert!(text.contains(number), "{number}: {text}");
        }
        // Every marker cited is listed.
        let listed = Id::ALL.len();
        for part in text.split('[').skip(1) {
            let Some(end) = part.find(']') else { continue };
            for item in part[..end].split(',') {
                for bound in item.split('-') {
                    if let Ok(n) = bound.parse::<usize>() {
                        assert!((1..=listed).contains(&n), "[{item}]");
                    }
                }
            }
        }
        let words = text.split(|c: char| !c.is_alphanumeric());
        assert!(words.clone().all(|w| w != "NaN" && w != "inf"), "{text}");
    }

    #[test]
    fn the_growth_table_has_a_row_per_scale() {
        let r = example();
        let table = growth_text(&r.growth, false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 6, "{table}");
        assert!(lines[1].contains("users") && lines[1].contains("data storage"));
        assert!(lines[2].trim_start().starts_with("100 "), "{}", lines[2]);
        assert!(
            lines[3].contains("10k/s deliveries: 1 node"),
            "{}",
            lines[3]
        );
        assert!(
            lines[4].contains("14 nodes") && lines[4].contains("+ 72 Redis"),
            "{}",
            lines[4]
        );
        assert!(lines[5].trim_start().starts_with("100M"), "{}", lines[5]);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(count(1_234_567.4), "1,234,567");
        assert_eq!(count(999.0), "999");
        assert_eq!(count(2.5), "2.50");
        assert_eq!(num(45.61), "45.6");
        assert_eq!(num(0.0004), "<0.001");
        assert_eq!(short(100_000_000.0), "100M");
        assert_eq!(short(1_500.0), "1.5k");
        assert_eq!(bytes(36.9e9), "36.9 GB");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(gbps(125e6), "1 Gbit/s");
        assert_eq!(pct(0.0223), "2.2 %");
        assert_eq!(round3(319_235.0), 319_000.0);
        assert_eq!(
            cite(&[
                Id::NodeCores,
                Id::DeliveriesPerCore,
                Id::PublishesPerCore,
                Id::ConnectCpu
            ]),
            "[5-7,29]"
        );
        assert_eq!(cite(&[Id::PacketOverhead, Id::PublishRequest]), "[19,20]");
    }

    #[test]
    fn the_json_parses() {
        let text = json(&example()).expect("json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("parse");
        assert_eq!(v["load"]["publications_per_s"], 10_000.0);
        assert_eq!(v["plan"]["nodes"], 1);
        assert_eq!(v["plan"]["engine"], "memory");
        assert_eq!(v["growth"].as_array().map(Vec::len), Some(4));
        assert_eq!(v["figures"][0]["name"], "memory_per_connection_kib");
        assert_eq!(v["figures"][0]["source"]["kind"], "measured");
    }
}
