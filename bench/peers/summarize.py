#!/usr/bin/env python3
"""Results of bench/peers.sh: one JSON line per run, and the comparison table.

    summarize.py record KEY=VALUE... [--bench FILE | --wrk FILE | --error TEXT]
        prints one JSON line (appended to runs.jsonl by the script): the run's keys
        (server, scenario, variant, run, server_cpu_s) and its figures: the bench's
        --json document, or wrk's output parsed.
    summarize.py sustained FILE RATE P99_MS
        exit 0 when the fan-out run in FILE (the bench's JSON) sustained RATE
        publications/s: nothing missing, no subscriber failed, p99 <= P99_MS, and the
        publisher reached 90 % of the rate.
    summarize.py table RUNS_JSONL META_JSON
        prints the Markdown comparison table (medians over the runs).

Standard library only.
"""

import json
import re
import statistics
import sys

# Column order and titles (the servers bench/peers.sh knows).
COLUMNS = [
    ("starling", "Starling"),
    ("nchan", "Nchan (2 workers)"),
    ("nats", "NATS {nats} (WebSocket)"),
    ("ws", "Node.js ws"),
    ("socketio", "Socket.IO 4"),
    ("baseline", "baseline (tokio-tungstenite)"),
]


def parse_wrk(text):
    """Requests/s, non-2xx count, socket errors and latency percentiles of wrk --latency."""
    out = {"requests_per_s": None, "requests": None, "non_2xx": 0, "socket_errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["requests_per_s"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["non_2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = sum(int(g) for g in m.groups())
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    for pct in ("50", "99"):
        m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % pct, text, re.M)
        if m:
            out["latency_p%s_ms" % pct] = float(m.group(1)) * units[m.group(2)]
    return out


def record(argv):
    doc = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--bench", "--wrk", "--error"):
            if i + 1 >= len(argv):
                sys.exit("%s needs a value" % a)
            v = argv[i + 1]
            i += 2
            if a == "--error":
                doc["ok"] = False
                doc["error"] = v
                continue
            try:
                with open(v, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                doc["ok"] = False
                doc["error"] = str(e)
                continue
            if a == "--wrk":
                figures = parse_wrk(text)
                doc["ok"] = figures["requests_per_s"] is not None
                doc["result"] = figures
                if not doc["ok"]:
                    doc["error"] = "no Requests/sec in wrk's output"
            else:
                # The bench prints one JSON document (its last non-empty line).
                lines = [l for l in text.splitlines() if l.strip().startswith("{")]
                try:
                    doc["result"] = json.loads(lines[-1])
                    doc["ok"] = True
                except (IndexError, ValueError):
                    doc["ok"] = False
                    doc["error"] = "no JSON from the bench"
            continue
        key, _, value = a.partition("=")
        try:
            doc[key] = json.loads(value)
        except ValueError:
            doc[key] = value
        i += 1
    print(json.dumps(doc, sort_keys=True))


def sustained_ok(result, rate, p99_ms):
    """Whether one fan-out result sustained `rate` publications/s."""
    if not result:
        return False
    pubs = result.get("publications", {})
    return (
        pubs.get("accepted", 0) >= result.get("messages", 1)
        and result.get("missing", 1) == 0
        and result.get("failed", 1) == 0
        and result.get("setup_failed", 1) == 0
        and pubs.get("refused", 1) == 0
        and pubs.get("per_s", 0) >= 0.9 * rate
        and result.get("latency_us", {}).get("p99", 10**12) <= p99_ms * 1000
    )


def sustained(argv):
    path, rate, p99_ms = argv[0], float(argv[1]), float(argv[2])
    try:
        with open(path, encoding="utf-8") as f:
            lines = [l for l in f.read().splitlines() if l.strip().startswith("{")]
        result = json.loads(lines[-1])
    except (OSError, IndexError, ValueError):
        sys.exit(1)
    sys.exit(0 if sustained_ok(result, rate, p99_ms) else 1)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_int(v):
    return "{:,.0f}".format(v)


def fmt_ms(us):
    ms = us / 1000.0
    return "{:,.1f} ms".format(ms) if ms < 100 else "{:,.0f} ms".format(ms)


def users_cells(servers, select, ok_results, failed_note):
    """The users rows' cells: latency (with what was lost) and the server's CPU."""
    lat_cells, cpu_cells = [], []
    for s in servers:
        rs = select(s, "users")
        res = ok_results(rs)
        if not res:
            note = failed_note(rs) or "no result"
            lat_cells.append(note)
            cpu_cells.append(note)
            continue
        lat = [r.get("latency_us", {}) for r in res]
        p50 = median([l.get("p50") for l in lat])
        p99 = median([l.get("p99") for l in lat])
        cell = "{} / {}".format(fmt_ms(p50), fmt_ms(p99)) if p50 and p99 else "no samples"
        loss = median([r.get("loss") for r in res])
        if loss:
            cell += ", {:.1f} % undelivered".format(100.0 * loss)
        short = [r for r in res if users_short(r)]
        if short:
            cell += ", publisher short in {} run(s)".format(len(short))
        failed = median([r.get("setup_failed", 0) for r in res])
        if failed:
            cell += ", {} users not subscribed".format(fmt_int(failed))
        lat_cells.append(cell)
        # The bench's figure: every server process (Nchan's master and workers) over
        # the publishing and the drain, as a share of one core.
        pct = median([users_cpu_percent(r) for r in res])
        cpu_cells.append("{:.0f} %".format(pct) if pct is not None else "n/a")
    return lat_cells, cpu_cells


def users_short(result):
    """Whether the users publisher got fewer than 90 % of its publications accepted."""
    pubs = result.get("publications", {})
    asked = pubs.get("asked_per_s", 0) * result.get("duration_s", 0)
    return asked > 0 and pubs.get("accepted", 0) < 0.9 * asked


def users_cpu_percent(result):
    """The server processes' CPU in a users result, summed; None if one is missing."""
    procs = result.get("server_cpu") or []
    values = [p.get("percent_of_core") for p in procs]
    if not values or any(v is None for v in values):
        return None
    return sum(values)


def table(runs_path, meta_path):
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    runs = []
    with open(runs_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                runs.append(json.loads(line))
    servers = [s for s, _ in COLUMNS if s in meta.get("servers", [])]
    titles = dict(COLUMNS)
    nats_version = meta.get("versions", {}).get("nats_short", "2.9")

    def select(server, scenario, variant=None):
        return [
            r for r in runs
            if r.get("server") == server and r.get("scenario") == scenario
            and (variant is None or str(r.get("variant", "")) == variant)
        ]

    def ok_results(rs):
        return [r["result"] for r in rs if r.get("ok") and r.get("result")]

    def failed_note(rs):
        bad = [r for r in rs if not r.get("ok")]
        if not rs:
            return "not run"
        if len(bad) == len(rs):
            return "failed (%s)" % (bad[0].get("error", "?")[:60])
        return None

    rows = []
    conns = meta.get("idle_connections")
    first = meta.get("rate_first")

    # Idle memory and connect rate.
    mem, rate = [], []
    for s in servers:
        rs = select(s, "idle")
        res = ok_results(rs)
        note = failed_note(rs)
        per = []
        pss = []
        for r in res:
            node = (r.get("nodes") or [{}])[0]
            held = r.get("held", 0)
            if held < r.get("connections", 0):
                continue
            per.append(node.get("rss_delta_per_connection"))
            pss.append(node.get("pss_delta_per_connection"))
        m = median(per)
        if m is None:
            mem.append(note or "incomplete (not every connection held)")
        else:
            cell = "{:.1f} KiB".format(m / 1024.0)
            if s == "nchan" and median(pss) is not None:
                cell += " (PSS {:.1f} KiB)".format(median(pss) / 1024.0)
            mem.append(cell)
        rt = median([(r.get("connect_rate") or {}).get("per_s") for r in res])
        rate.append(note or ("{}/s".format(fmt_int(rt)) if rt else "n/a"))
    rows.append(("Memory per idle subscribed connection, {:,} connections".format(conns or 0), mem))
    rows.append(("Connect + subscribe rate, first {:,}".format(first or 0), rate))

    # Max sustained deliveries/s: per run, the highest rung that held.
    p99_ms = meta.get("sustained_p99_ms", 1000)
    cells = []
    for s in servers:
        rs = select(s, "sustained")
        if not rs:
            cells.append("not run")
            continue
        best_by_run = {}
        for r in rs:
            run = r.get("run")
            best_by_run.setdefault(run, None)
            res = r.get("result") if r.get("ok") else None
            rate_v = float(r.get("rate", 0))
            if res and sustained_ok(res, rate_v, p99_ms):
                cur = best_by_run[run]
                if cur is None or rate_v > cur[0]:
                    best_by_run[run] = (rate_v, res.get("deliveries_per_s"))
        held = [v for v in best_by_run.values() if v is not None]
        if not held:
            cells.append("none held (lowest rung {} pub/s)".format(meta.get("ladder", ["?"])[0]))
            continue
        d = median([v[1] for v in held])
        pr = median([v[0] for v in held])
        cell = "{}/s ({:g} pub/s)".format(fmt_int(d), pr)
        if len(held) < len(best_by_run):
            cell += ", {} of {} runs held none".format(len(best_by_run) - len(held), len(best_by_run))
        cells.append(cell)
    rows.append(("Fan-out to {:,}: max sustained deliveries/s (no loss, p99 <= {:g} ms)".format(
        meta.get("subscribers", 0), p99_ms), cells))

    for rate_v in meta.get("rates", []):
        cells = []
        for s in servers:
            rs = select(s, "fanout", "rate=%s" % rate_v)
            res = ok_results(rs)
            note = failed_note(rs)
            if not res:
                cells.append(note or "no result")
                continue
            p99 = median([r.get("latency_us", {}).get("p99") for r in res])
            p50 = median([r.get("latency_us", {}).get("p50") for r in res])
            cell = "{} (p50 {})".format(fmt_ms(p99), fmt_ms(p50)) if p99 else "no samples"
            missing = median([r.get("missing") for r in res])
            expected = median([r.get("expected") for r in res])
            if missing:
                pct = 100.0 * missing / expected if expected else 100.0
                cell += ", {:.1f} % undelivered".format(pct)
            short = [r for r in res
                     if r.get("publications", {}).get("accepted", 0) < r.get("messages", 0)]
            if short:
                cell += ", publisher short of its messages in {} run(s)".format(len(short))
            cells.append(cell)
        rows.append(("Fan-out p99 (p50) at {} publication(s)/s".format(rate_v), cells))

    # HTTP publish without subscribers (wrk).
    cells = []
    for s in servers:
        if s == "nats":
            cells.append("n/a (no HTTP publish API)")
            continue
        variants = ["log", "nolog"] if s == "starling" else [""]
        parts = []
        for v in variants:
            rs = select(s, "http", v)
            res = ok_results(rs)
            note = failed_note(rs)
            if not res:
                parts.append(note or "no result")
                continue
            rps = median([r.get("requests_per_s") for r in res])
            bad = median([r.get("non_2xx", 0) + r.get("socket_errors", 0) for r in res])
            cell = "{}/s".format(fmt_int(rps))
            if bad:
                cell += " ({} errors)".format(fmt_int(bad))
            if v:
                cell += " " + ("with log" if v == "log" else "without log")
            parts.append(cell)
        cells.append("; ".join(parts))
    rows.append(("HTTP publish, no subscribers ({} connections, {} B body)".format(
        meta.get("wrk_connections"), meta.get("size")), cells))

    # users: the application scenario.
    u = meta.get("users") or {}
    what = "{:,} users, {:g} pub/s each".format(u.get("users", 0), u.get("rate", 1))
    if u.get("group_rate"):
        what += " + {:g}/s per group".format(u["group_rate"])
    lat_cells, cpu_cells = users_cells(servers, select, ok_results, failed_note)
    rows.append(("users p50 / p99 ({})".format(what), lat_cells))
    rows.append(("users server CPU (% of one core while publishing)", cpu_cells))

    # Server CPU during the fan-out runs (seconds of CPU over the run).
    cells = []
    top = max(meta.get("rates", [0]) or [0])
    for s in servers:
        rs = [r for r in select(s, "fanout", "rate=%s" % top) if r.get("ok")]
        cpu = median([r.get("server_cpu_s") for r in rs])
        cells.append("{:.1f} s".format(cpu) if cpu is not None else "n/a")
    rows.append(("Server CPU time during the fan-out run at {} /s".format(top), cells))

    head = [titles[s].format(nats=nats_version) for s in servers]
    out = ["| | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name, cells in rows:
        out.append("| " + name + " | " + " | ".join(cells) + " |")
    print("\n".join(out))
    print()
    print("Median of {} run(s) each; {}.".format(meta.get("runs"), meta.get("conditions", "")))
    versions = meta.get("versions", {})
    if versions:
        print("Versions: " + "; ".join("{} {}".format(k, v) for k, v in sorted(versions.items())
                                      if k != "nats_short") + ".")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, argv = sys.argv[1], sys.argv[2:]
    if cmd == "record":
        record(argv)
    elif cmd == "sustained":
        sustained(argv)
    elif cmd == "table":
        table(argv[0], argv[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
