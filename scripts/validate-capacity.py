#!/usr/bin/env python3
"""The capacity model against measurements: the tables of scripts/validate-capacity.sh.

    validate-capacity.py table REPORT_DIR STARLING
        reads REPORT_DIR/settings.json and REPORT_DIR/runs.jsonl (the measured runs and
        the files of their raw outputs), derives the calibrated figures from the
        calibration rows, runs `STARLING capacity ... --nodes N [--shards S] --json` for
        every measured topology and workload, once with the default figures and once
        with the calibrated ones (`--figure NAME=VALUE`), and writes
          capacity/*.json  every call's output (capacity/calls.txt: their command lines)
          figures.json     the default figures, the calibrated ones and how each was derived
          rows.json        every row of the table as data
          table.md         the table predicted against measured, with the error
        then prints table.md.

What each row compares (docs/SCALING.md, "Validation: predicted against measured"):
  idle    each node's RSS growth (settled, after - before) against the topology's
          process_memory_mib less node_base_memory_mib (the base is what the node had
          before any connection, which the growth leaves out);
  fanout, users
          each node's CPU (cores = CPU seconds / wall seconds over the publishing, from
          starling-bench --server-pid) against cpu_cores_per_node; the nodes' sum and
          Redis's CPU and commands/s are reference rows (no error counted).

The calibration rule: the single-node figures come from the T1 rows (1 node, memory
engine): memory_per_connection_kib from T1 idle; deliveries_per_core_s and
publishes_per_core_s from T1 fanout and T1 users solved together (the model's CPU is
linear in their inverses); the cluster-only figures (memory_per_connection_cluster_kib,
heard_publication_cpu_us) from T2 idle and T2 users when CLUSTER_CALIBRATION is 1 (else
they keep their defaults). The rows they come from are calibration rows; every other
measured row is a validation row, and only those count in the error.

Standard library only.
"""

import json
import os
import statistics
import subprocess
import sys

MIB = 1024.0 * 1024.0
LIMIT = 0.15  # the error the issue allows on the validation rows

# TOPOLOGIES' words: nodes, Redis shards, what the table calls it.
TOPOLOGIES = {
    "1": (1, 0, "1 node, memory engine"),
    "2": (2, 1, "2 nodes, 1 Redis"),
    "3": (3, 1, "3 nodes, 1 Redis"),
    "3s": (3, 3, "3 nodes, 3 Redis shards"),
}


def label(topology):
    return f"T{topology}"
NODE_NAMES = "ABCDEFGHIJ"

# The figures the calibration may set, in the order the table lists them.
CALIBRATED = [
    "memory_per_connection_kib",
    "deliveries_per_core_s",
    "publishes_per_core_s",
    "memory_per_connection_cluster_kib",
    "deliveries_per_core_cluster_s",
    "heard_publication_cpu_us",
    "redis_publication_cpu_us",
]
CLUSTER_ONLY = [
    "memory_per_connection_cluster_kib",
    "deliveries_per_core_cluster_s",
    "heard_publication_cpu_us",
    "redis_publication_cpu_us",
]


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_bench(path):
    """The last JSON object line of a bench's stdout (None when it printed none)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.lstrip().startswith("{")]
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def figure(value):
    """A coefficient for the figures table: whole above 1,000, else 4 digits."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def fmt(value, digits):
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


# ---------------------------------------------------------------- the measurements


def cpu_by_pid(doc):
    """{pid: (cpu seconds, cores)} of a bench's server_cpu list."""
    out = {}
    for p in (doc or {}).get("server_cpu") or []:
        secs, pct = p.get("cpu_s"), p.get("percent_of_core")
        if secs is not None and pct is not None:
            out[p["pid"]] = (secs, pct / 100.0)
    return out


def window_seconds(cpu):
    """The wall time of the bench's CPU window (CPU seconds / cores of any process)."""
    walls = [secs / cores for secs, cores in cpu.values() if secs > 0 and cores > 0]
    return max(walls) if walls else None


def redis_window(report_dir, run):
    """Per shard, over the publishing (two snapshots): commands/s and CPU cores."""
    path = run.get("redis_window")
    if not path:
        return None
    snaps = {}
    try:
        with open(os.path.join(report_dir, path), encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    doc = json.loads(line)
                    snaps[doc["at"]] = doc
    except (OSError, ValueError):
        return None
    start, end = snaps.get("start"), snaps.get("end")
    if not start or not end or end["time_s"] <= start["time_s"]:
        return None
    secs = end["time_s"] - start["time_s"]
    shards = []
    for a, b in zip(start["shards"], end["shards"]):
        ca, cb = a.get("total_commands_processed"), b.get("total_commands_processed")
        before = a.get("calls") or {}
        calls = {
            cmd: (n - before.get(cmd, 0)) / secs
            for cmd, n in (b.get("calls") or {}).items()
            if n > before.get(cmd, 0)
        }
        shards.append({
            "commands_per_s": None if ca is None or cb is None else (cb - ca) / secs,
            "cores": (b["cpu_ticks"] - a["cpu_ticks"]) / end["clk_tck"] / secs,
            "calls_per_s": calls,
        })
    return shards


def redis_calls_note(redis, publications_per_s):
    """The commands Redis ran per publication (all shards), busiest first."""
    total = {}
    for shard in redis:
        for cmd, rate in shard["calls_per_s"].items():
            total[cmd] = total.get(cmd, 0.0) + rate
    if not total or not publications_per_s:
        return None
    top = sorted(total.items(), key=lambda kv: -kv[1])[:8]
    return ", ".join(f"{cmd} {rate / publications_per_s:.2f}" for cmd, rate in top)


def measure_idle(report_dir, run):
    nodes, notes = [], []
    for k, path in enumerate(run["bench"]):
        doc = read_bench(os.path.join(report_dir, path))
        node = (doc or {}).get("nodes", [{}])[0] if doc else {}
        if not doc or "rss_after" not in node:
            notes.append(f"node {NODE_NAMES[k]}: no RSS figure (see {path}.err)")
            nodes.append(None)
            continue
        growth = node["rss_after"] - node["rss_before"]
        held = node.get("held") or 0
        nodes.append({"growth_bytes": growth, "held": held, "rss_before": node["rss_before"]})
        if doc.get("failed") or doc.get("dropped"):
            notes.append(
                f"node {NODE_NAMES[k]}: {doc.get('failed', 0)} connections failed, "
                f"{doc.get('dropped', 0)} dropped ({held} held)"
            )
        if not node.get("rss_settled", True):
            notes.append(f"node {NODE_NAMES[k]}: RSS still growing when read")
    before = [f"{n['rss_before'] / MIB:.1f}" for n in nodes if n]
    if before:
        notes.append(f"RSS before any connection (the model's node_base_memory_mib): "
                     f"{', '.join(before)} MiB")
    return {"nodes": nodes, "notes": notes}


def measure_traffic(report_dir, run):
    """A fanout or users run: each node's CPU, Redis's, the rates over the window."""
    path = run["bench"][0]
    doc = read_bench(os.path.join(report_dir, path))
    notes = []
    if not doc:
        return {"nodes": [None] * run["nodes"], "notes": [f"no result (see {path}.err)"]}
    cpu = cpu_by_pid(doc)
    wall = window_seconds(cpu)
    nodes = []
    for k, pid in enumerate(run["node_pids"]):
        if pid in cpu:
            nodes.append({"cores": cpu[pid][1], "cpu_s": cpu[pid][0]})
        else:
            nodes.append(None)
            notes.append(f"node {NODE_NAMES[k]}: no CPU figure")
    pubs = doc.get("publications") or {}
    if run["workload"] == "fanout":
        deliveries = doc.get("deliveries") or 0
        connections = doc.get("subscribed") or 0
        if doc.get("missing"):
            notes.append(f"{doc['missing']} deliveries missing of {doc.get('expected')}")
        if doc.get("failed") or doc.get("setup_failed"):
            notes.append(
                f"{doc.get('setup_failed', 0)} subscribers failed to subscribe, "
                f"{doc.get('failed', 0)} failed later"
            )
        asked = doc.get("rate")
    else:
        deliveries = doc.get("delivered") or 0
        connections = doc.get("subscribed") or 0
        if doc.get("missing"):
            notes.append(f"{doc['missing']} deliveries missing of {doc.get('expected')}")
        if doc.get("setup_failed"):
            notes.append(f"{doc['setup_failed']} users failed to subscribe")
        asked = pubs.get("asked_per_s")
    if pubs.get("refused"):
        notes.append(f"{pubs['refused']} publications refused")
    if asked and pubs.get("per_s") is not None and pubs["per_s"] < 0.9 * asked:
        notes.append(f"publications at {pubs['per_s']:.0f}/s of {asked:.0f}/s asked")
    if run.get("exit"):
        notes.append(f"starling-bench exited with status {run['exit']}")
    return {
        "nodes": nodes,
        "notes": notes,
        "wall_s": wall,
        "deliveries_per_s": deliveries / wall if wall else None,
        "publications_per_s": (pubs.get("accepted") or 0) / wall if wall else None,
        "connections": connections,
        "redis": redis_window(report_dir, run),
    }


# ---------------------------------------------------------------- the model


class Capacity:
    """`starling capacity` calls, each kept in capacity/."""

    def __init__(self, report_dir, starling, settings):
        self.dir = os.path.join(report_dir, "capacity")
        os.makedirs(self.dir, exist_ok=True)
        self.starling = starling
        self.s = settings
        self.calls = open(os.path.join(self.dir, "calls.txt"), "w", encoding="utf-8")

    def workload_args(self, topology, workload):
        s = self.s
        n = TOPOLOGIES[topology][0]
        if workload == "idle":
            # No publication: the idle connections' memory alone.
            return ["--users", str(s["conns_per_node"] * n), "--msg-rate", "0",
                    "--msg-size", str(s["size"])]
        if workload == "fanout":
            return ["--users", str(s["subs"]), "--msg-rate", repr(s["rate"] / s["subs"]),
                    "--msg-size", str(s["size"]), "--fanout", str(s["subs"])]
        return ["--users", str(s["users"]), "--msg-rate", repr(s["users_rate"]),
                "--msg-size", str(s["size"])]

    def predict(self, topology, workload, variant, figures):
        n, shards, _ = TOPOLOGIES[topology]
        argv = [self.starling, "capacity", *self.workload_args(topology, workload),
                "--nodes", str(n)]
        if shards:
            argv += ["--shards", str(shards)]
        for name, value in figures.items():
            argv += ["--figure", f"{name}={value!r}"]
        argv.append("--json")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        name = f"{topology}.{workload}.{variant}"
        self.calls.write(" ".join(argv) + "\n")
        with open(os.path.join(self.dir, name + ".json"), "w", encoding="utf-8") as f:
            f.write(done.stdout)
        if done.returncode != 0:
            raise SystemExit(f"starling capacity failed ({name}): {done.stderr.strip()}")
        return json.loads(done.stdout)


def figure_values(report):
    """{name: value} of a capacity report's figures list."""
    out = {}
    for f in report["figures"]:
        value = f.get("value", (f.get("figure") or {}).get("value"))
        out[f["name"]] = value
    return out


def predicted(report, workload):
    """What the model predicts per node for the row's quantity, and the rest."""
    t = report["topology"]
    figs = figure_values(report)
    if workload == "idle":
        per_node = t["process_memory_mib"] - figs["node_base_memory_mib"]
    else:
        per_node = t["cpu_cores_per_node"]
    return {
        "per_node": per_node,
        "redis_messages": t["redis_messages_per_shard"] * t["shards"],
        "redis_cpu": t.get("redis_cpu_cores_per_shard", 0.0) * t["shards"],
        "hearing_nodes": t["hearing_nodes"],
    }


# ---------------------------------------------------------------- the calibration


def cpu_equation(m, defaults, nodes_cores):
    """The model's node CPU for a traffic run, summed over the nodes, as
    cores - reconnects = a / deliveries_per_core + b / publishes_per_core (+ heard × h):
    a = deliveries/s + pings/s in deliveries' worth, b = publications/s."""
    c = m["connections"]
    pings = c * defaults["ping_delivery_equivalents"] / defaults["ping_interval_s"]
    reconnects = (
        c * defaults["reconnects_per_connection_hour"] / 3600.0 * defaults["connect_cpu_us"] / 1e6
    )
    return {
        "a": m["deliveries_per_s"] + pings,
        "b": m["publications_per_s"],
        "r": nodes_cores - reconnects,
    }


def traffic_ok(m):
    return (
        m is not None
        and m.get("wall_s")
        and all(n is not None for n in m["nodes"])
        and m["deliveries_per_s"]
    )


def calibrate(measured, defaults, settings, hearing):
    """{name: (value, how)} of the calibrated figures, and the rows they came from."""
    out, sources = {}, set()
    idle = measured.get(("1", "idle"))
    if idle and all(n and n["held"] for n in idle["nodes"]):
        kib = statistics.median(n["growth_bytes"] / n["held"] / 1024.0 for n in idle["nodes"])
        n = idle["nodes"][0]
        out["memory_per_connection_kib"] = (
            kib,
            f"T1 idle: RSS growth {n['growth_bytes'] / MIB:.1f} MiB over {n['held']:,} connections",
        )
        sources.add(("1", "idle"))

    fan, users = measured.get(("1", "fanout")), measured.get(("1", "users"))
    eqs = {}
    for key, m in (("fanout", fan), ("users", users)):
        if traffic_ok(m):
            eqs[key] = cpu_equation(m, defaults, m["nodes"][0]["cores"])
    x0 = 1.0 / defaults["deliveries_per_core_s"]
    y0 = 1.0 / defaults["publishes_per_core_s"]
    x = y = None
    how = ""
    if len(eqs) == 2:
        e1, e2 = eqs["fanout"], eqs["users"]
        det = e1["a"] * e2["b"] - e2["a"] * e1["b"]
        if det != 0:
            x = (e1["r"] * e2["b"] - e2["r"] * e1["b"]) / det
            y = (e1["a"] * e2["r"] - e2["a"] * e1["r"]) / det
            how = "T1 fanout and T1 users solved together"
        if x is None or x <= 0 or y is None or y <= 0:
            # One at a time: the fan-out's deliveries, then the users' publications.
            x = (e1["r"] - e1["b"] * y0) / e1["a"]
            y = (e2["r"] - e2["a"] * x) / e2["b"] if x > 0 else None
            how = ("T1 fanout (with the default publishes_per_core_s), then T1 users "
                   "(solved together gave a value at or below zero)")
    elif "fanout" in eqs:
        e = eqs["fanout"]
        x = (e["r"] - e["b"] * y0) / e["a"]
        how = "T1 fanout (with the default publishes_per_core_s)"
    elif "users" in eqs:
        e = eqs["users"]
        y = (e["r"] - e["a"] * x0) / e["b"]
        how = "T1 users (with the default deliveries_per_core_s)"

    def cpu_text():
        parts = []
        for key in ("fanout", "users"):
            if key in eqs:
                m = fan if key == "fanout" else users
                parts.append(
                    f"{key}: {m['nodes'][0]['cores']:.3f} cores at "
                    f"{m['deliveries_per_s']:,.0f} deliveries/s and "
                    f"{m['publications_per_s']:,.0f} publications/s"
                )
        return f"{how}; {'; '.join(parts)}"

    notes = []
    for name, inverse, workload in (("deliveries_per_core_s", x, "fanout"),
                                    ("publishes_per_core_s", y, "users")):
        if inverse is None:
            continue
        if inverse > 0:
            out[name] = (1.0 / inverse, cpu_text())
            sources.add(("1", workload))
        else:
            notes.append(f"{name}: the T1 measurement gives no positive value (the default "
                         "is kept)")

    if settings.get("cluster_calibration", 1):
        idle2 = measured.get(("2", "idle"))
        if idle2 and all(n and n["held"] for n in idle2["nodes"]):
            kib = statistics.median(n["growth_bytes"] / n["held"] / 1024.0 for n in idle2["nodes"])
            out["memory_per_connection_cluster_kib"] = (
                kib,
                "T2 idle: median over the 2 nodes of RSS growth / connections held",
            )
            sources.add(("2", "idle"))
        yy = 1.0 / out.get("publishes_per_core_s", (defaults["publishes_per_core_s"],))[0]
        h0 = defaults["heard_publication_cpu_us"] / 1e6
        xx = 1.0 / defaults["deliveries_per_core_cluster_s"]
        # A cluster node's fan-out: T2 fanout's deliveries, what its few publications
        # (taken and heard, at the default heard cost) leave.
        fan2 = measured.get(("2", "fanout"))
        if traffic_ok(fan2) and ("2", "fanout") in hearing:
            total = sum(n["cores"] for n in fan2["nodes"])
            e = cpu_equation(fan2, defaults, total)
            heard = fan2["publications_per_s"] * hearing[("2", "fanout")]
            x = (e["r"] - e["b"] * yy - heard * h0) / e["a"]
            if x > 0:
                xx = x
                out["deliveries_per_core_cluster_s"] = (
                    1.0 / x,
                    f"T2 fanout: {total:.3f} cores on the 2 nodes at "
                    f"{fan2['deliveries_per_s']:,.0f} deliveries/s and "
                    f"{fan2['publications_per_s']:,.0f} publications/s",
                )
                sources.add(("2", "fanout"))
        users2 = measured.get(("2", "users"))
        if traffic_ok(users2) and ("2", "users") in hearing:
            total = sum(n["cores"] for n in users2["nodes"])
            e = cpu_equation(users2, defaults, total)
            heard = users2["publications_per_s"] * hearing[("2", "users")]
            h = (e["r"] - e["a"] * xx - e["b"] * yy) / heard if heard > 0 else None
            if h is not None:
                text = (f"T2 users: {total:.3f} cores on the 2 nodes at "
                        f"{users2['publications_per_s']:,.0f} publications/s, each heard by "
                        f"{hearing[('2', 'users')]:.2f} node(s): what the T1 figures and the cluster's "
                        "deliveries per core leave")
                if h < 0:
                    text += (f" is {h * 1e6:.1f} µs per heard publication, below zero: set to 0 "
                             "(a cluster node's publication costs less than the memory engine's)")
                    h = 0.0
                out["heard_publication_cpu_us"] = (h * 1e6, text)
                sources.add(("2", "users"))
        redis = (users2 or {}).get("redis") or []
        if traffic_ok(users2) and redis and all(r.get("cores") is not None for r in redis):
            cores = sum(r["cores"] for r in redis)
            pubs = users2["publications_per_s"]
            out["redis_publication_cpu_us"] = (
                cores / pubs * 1e6,
                f"T2 users: Redis at {cores:.3f} cores under {pubs:,.0f} publications/s "
                "(its presence writes, under 0.3 % of that, not taken out)",
            )
            sources.add(("2", "users"))
    return out, sources, notes


# ---------------------------------------------------------------- the table


def row_kind(key, sources):
    return "calibration" if key in sources else "validation"


def build_rows(measured, preds, sources):
    rows = []
    for (topology, workload), m in measured.items():
        n, shards, _ = TOPOLOGIES[topology]
        pd, pc = preds[(topology, workload)]
        kind = row_kind((topology, workload), sources)
        base = {"topology": topology, "workload": workload}
        if workload == "idle":
            for k, node in enumerate(m["nodes"]):
                rows.append({**base, "quantity": f"RSS growth, node {NODE_NAMES[k]} (MiB)",
                             "measured": node and node["growth_bytes"] / MIB,
                             "default": pd["per_node"], "calibrated": pc["per_node"],
                             "kind": kind, "digits": 1})
            continue
        for k, node in enumerate(m["nodes"]):
            rows.append({**base, "quantity": f"CPU, node {NODE_NAMES[k]} (cores)",
                         "measured": node and node["cores"],
                         "default": pd["per_node"], "calibrated": pc["per_node"],
                         "kind": kind, "digits": 3})
        if n > 1 and all(m["nodes"]):
            rows.append({**base, "quantity": f"CPU, all {n} nodes (cores)",
                         "measured": sum(node["cores"] for node in m["nodes"]),
                         "default": pd["per_node"] * n, "calibrated": pc["per_node"] * n,
                         "kind": "reference", "digits": 3})
        if shards:
            redis = m["redis"] or []
            rates = [s["commands_per_s"] for s in redis]
            redis_cores = sum(s["cores"] for s in redis) if redis else None
            # A fan-out of a few publications a second leaves Redis nearly idle: its own
            # background (cron, presence refreshes) is all there is, and not modelled.
            quiet = redis_cores is not None and redis_cores < 0.05
            rows.append({**base, "quantity": f"Redis CPU, {shards} shard(s) (cores)",
                         "measured": redis_cores,
                         "default": pd["redis_cpu"], "calibrated": pc["redis_cpu"],
                         "kind": "reference" if quiet else kind, "digits": 3})
            rows.append({**base,
                         "quantity": f"Redis commands/s, {shards} shard(s) (model: messages/s)",
                         "measured": sum(rates) if rates and None not in rates else None,
                         "default": pd["redis_messages"], "calibrated": pc["redis_messages"],
                         "kind": "reference", "digits": 0})
    for r in rows:
        meas, cal = r["measured"], r["calibrated"]
        r["error"] = (cal - meas) / meas if meas and cal is not None and meas > 0 else None
        d = r["default"]
        r["default_error"] = (d - meas) / meas if meas and d is not None and meas > 0 else None
    order = list(TOPOLOGIES)
    workloads = ["idle", "fanout", "users"]
    rows.sort(key=lambda r: (order.index(r["topology"]), workloads.index(r["workload"])))
    return rows


def error_summary(rows, key):
    errs = [abs(r[key]) for r in rows if r["kind"] == "validation" and r[key] is not None]
    if not errs:
        return None
    return {
        "rows": len(errs),
        "mean_abs": statistics.mean(errs),
        "max_abs": max(errs),
        "within": sum(1 for e in errs if e <= LIMIT),
    }


def markdown(settings, rows, figures, cal_notes, run_notes, summary, default_summary):
    out = []
    w = out.append
    w(f"# Capacity model: predicted against measured ({settings['started']})")
    w("")
    w(f"Command: `{settings['command']}`{' (SMOKE: tiny sizes, not a validation)' if settings['smoke'] else ''}.")
    w(f"Machine: {settings['machine']}. Commit {settings['commit']}.")
    w(f"Workloads: idle {settings['conns_per_node']:,} connections per node; fanout "
      f"{settings['subs']:,} subscribers, {settings['messages']:,} publications at "
      f"{settings['rate']:g}/s via node A's HTTP API; users {settings['users']:,} users at "
      f"{settings['users_rate']:g}/s each for {settings['duration']} s; {settings['size']} B.")
    w("Topologies: " + "; ".join(f"{label(t)} = {words}" for t, (_, _, words) in TOPOLOGIES.items())
      + ".")
    w("")
    w("| topology | workload | quantity | measured | predicted (default figures) "
      "| predicted (calibrated) | error % | row kind |")
    w("|---|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        err = "–" if r["error"] is None else f"{r['error'] * 100:+.1f}"
        if r["kind"] == "reference" and r["error"] is not None:
            err = f"({err})"
        w(f"| {label(r['topology'])} | {r['workload']} | {r['quantity']} | {fmt(r['measured'], r['digits'])} "
          f"| {fmt(r['default'], r['digits'])} | {fmt(r['calibrated'], r['digits'])} | {err} "
          f"| {r['kind']} |")
    w("")
    w("error = (predicted with the calibrated figures − measured) / measured. Calibration rows "
      "gave the calibrated figures (their error is near zero by construction); reference rows "
      "are not counted (a sum of the node rows; Redis's commands, which are not the model's "
      "messages; Redis's CPU when under 0.05 cores, where its own background, not the "
      "publications, is what it measures).")
    w("")
    for which, s in (("calibrated figures", summary), ("default figures", default_summary)):
        if s is None:
            w(f"- Validation rows, {which}: none measured.")
            continue
        verdict = "within" if s["max_abs"] <= LIMIT else "NOT within"
        w(f"- Validation rows, {which}: {s['rows']} rows, mean |error| "
          f"{s['mean_abs'] * 100:.1f} %, max {s['max_abs'] * 100:.1f} %, {s['within']} of "
          f"{s['rows']} within {LIMIT * 100:.0f} %: {verdict} {LIMIT * 100:.0f} %.")
    w("")
    w("## Figures")
    w("")
    w("| figure | default | calibrated | from |")
    w("|---|---:|---:|---|")
    for name in CALIBRATED:
        default = figures["defaults"][name]
        cal = figures["calibrated"].get(name)
        if cal:
            w(f"| `{name}` | {figure(default)} | {figure(cal['value'])} | {cal['from']} |")
        elif name in CLUSTER_ONLY and not settings.get("cluster_calibration", 1):
            w(f"| `{name}` | {figure(default)} | (default) | CLUSTER_CALIBRATION=0 |")
        else:
            w(f"| `{name}` | {figure(default)} | (default) | no usable run to derive it from |")
    w("")
    w("Every other figure kept its default (figures.json lists them all; "
      "capacity/calls.txt has every `starling capacity` command line).")
    notes = cal_notes + run_notes
    if notes:
        w("")
        w("## Notes")
        w("")
        for note in notes:
            w(f"- {note}")
    w("")
    return "\n".join(out)


def table(report_dir, starling):
    settings = read_json(os.path.join(report_dir, "settings.json"))
    runs = []
    with open(os.path.join(report_dir, "runs.jsonl"), encoding="utf-8") as f:
        runs = [json.loads(line) for line in f if line.strip()]
    measured, run_notes = {}, []
    for run in runs:
        key = (run["topology"], run["workload"])
        if run["workload"] == "idle":
            m = measure_idle(report_dir, run)
        else:
            m = measure_traffic(report_dir, run)
        measured[key] = m
        for note in m["notes"]:
            run_notes.append(f"{label(key[0])} {key[1]}: {note}")
        redis = m.get("redis")
        calls = redis and redis_calls_note(redis, m.get("publications_per_s"))
        if calls:
            run_notes.append(f"{label(key[0])} {key[1]}: Redis calls per publication (background "
                             f"calls included): {calls}")
        if redis and len(redis) > 1:
            rates = ", ".join(fmt(s["commands_per_s"], 0) for s in redis)
            cores = ", ".join(fmt(s["cores"], 3) for s in redis)
            run_notes.append(f"{label(key[0])} {key[1]}: Redis per shard: {rates} commands/s, "
                             f"{cores} cores")
        elif run["workload"] != "idle" and run.get("shards") and not redis:
            run_notes.append(f"{label(key[0])} {key[1]}: no Redis figures (publishing window not seen)")

    cap = Capacity(report_dir, starling, settings)
    default_reports = {key: cap.predict(*key, "default", {}) for key in measured}
    any_report = next(iter(default_reports.values()), None)
    defaults = figure_values(any_report) if any_report else {}
    hearing = {key: r["topology"]["hearing_nodes"] for key, r in default_reports.items()}
    calibrated, sources, cal_notes = calibrate(measured, defaults, settings, hearing)
    figure_args = {name: value for name, (value, _) in calibrated.items()}
    preds = {}
    for key in measured:
        cal_report = cap.predict(*key, "calibrated", figure_args)
        preds[key] = (predicted(default_reports[key], key[1]), predicted(cal_report, key[1]))
    cap.calls.close()

    figures = {
        "defaults": defaults,
        "calibrated": {name: {"value": v, "from": how} for name, (v, how) in calibrated.items()},
        "figure_args": [f"{name}={value!r}" for name, value in figure_args.items()],
        "calibration_rows": sorted(f"{t} {w}" for t, w in sources),
    }
    with open(os.path.join(report_dir, "figures.json"), "w", encoding="utf-8") as f:
        json.dump(figures, f, indent=2)
    rows = build_rows(measured, preds, sources)
    with open(os.path.join(report_dir, "rows.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)
    summary = error_summary(rows, "error")
    default_summary = error_summary(rows, "default_error")
    text = markdown(settings, rows, figures, cal_notes, run_notes, summary, default_summary)
    with open(os.path.join(report_dir, "table.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


def main(argv):
    if len(argv) == 4 and argv[1] == "table":
        table(argv[2], argv[3])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
