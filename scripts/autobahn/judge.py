#!/usr/bin/env python3
"""Judge an Autobahn|Testsuite fuzzingclient report (OUTDIR/index.json). Stdlib only.

  judge.py OUTDIR --expect N [--agent NAME] [--cases-file FILE] [--summary FILE.md]

wstest always exits 0 (an unreachable server gives an empty index.json, a server that dies
mid-run a partial one), so this script is the verdict:
  * index.json must exist and hold exactly N case results for the agent
    (and, with --cases-file, exactly the listed case ids);
  * every case's `behavior` must be OK, NON-STRICT or INFORMATIONAL;
  * every case's `behaviorClose` must be OK or INFORMATIONAL.
Values wstest can produce: behavior OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED (12.*/13.*
when the server does not negotiate permessage-deflate), FAILED; behaviorClose OK,
INFORMATIONAL, FAILED, UNCLEAN, WRONG CODE, FAILED BY CLIENT.

Exit status: 0 pass, 1 fail, 2 usage error.
"""
import argparse
import collections
import datetime
import html
import json
import os
import re
import sys

GOOD_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
GOOD_CLOSE = {"OK", "INFORMATIONAL"}
COLUMNS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
GROUPS = {
    1: "Framing", 2: "Pings/Pongs", 3: "Reserved Bits", 4: "Opcodes", 5: "Fragmentation",
    6: "UTF-8 Handling", 7: "Close Handling", 8: "Misc", 9: "Limits/Performance", 10: "Misc",
    11: "", 12: "WebSocket Compression (different payloads)",
    13: "WebSocket Compression (different parameters)",
}


def case_key(case_id):
    return tuple(int(x) for x in case_id.split("."))


def clean(text, limit=None):
    """Strip HTML and collapse whitespace (wstest descriptions contain markup)."""
    text = html.unescape(re.sub(r"<[^>]+>", " ", str(text or "")))
    text = " ".join(text.split())
    if limit and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def column(behavior):
    return behavior if behavior in COLUMNS[:-1] else "FAILED"


def load_case_report(outdir, entry):
    try:
        with open(os.path.join(outdir, entry.get("reportfile", "")), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def judge(outdir, expect, agent, cases_file):
    """Return (results, problems, failing) where results maps case id -> index entry."""
    problems = []
    index_path = os.path.join(outdir, "index.json")
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        return {}, [f"{index_path} does not exist (wstest did not finish?)"], []
    except ValueError as e:
        return {}, [f"{index_path} is not valid JSON: {e}"], []

    if agent is None and len(index) == 1:
        agent = next(iter(index))
    if agent not in index:
        if index:
            problems.append(f"agent {agent!r} not in index.json (agents: {', '.join(sorted(index))})")
        else:
            problems.append("index.json is empty: no case ran (server unreachable or refused the handshake?)")
        results = {}
    else:
        results = index[agent]

    if len(results) != expect:
        problems.append(f"expected {expect} case results, got {len(results)}"
                        + (" (wstest aborted or the server died mid-run?)" if len(results) < expect else ""))
    if cases_file:
        with open(cases_file, encoding="utf-8") as f:
            wanted = {line.strip() for line in f if line.strip()}
        missing = sorted(wanted - set(results), key=case_key)
        extra = sorted(set(results) - wanted, key=case_key)
        if missing:
            problems.append(f"{len(missing)} selected case(s) have no result: " + ", ".join(missing[:30])
                            + (" ..." if len(missing) > 30 else ""))
        if extra:
            problems.append(f"{len(extra)} unexpected case result(s): " + ", ".join(extra[:30])
                            + (" ..." if len(extra) > 30 else ""))

    failing = [cid for cid in sorted(results, key=case_key)
               if results[cid].get("behavior") not in GOOD_BEHAVIOR
               or results[cid].get("behaviorClose") not in GOOD_CLOSE]
    return results, problems, failing


def write_summary(path, outdir, agent, results, problems, failing):
    groups = collections.OrderedDict()
    for cid in sorted(results, key=case_key):
        groups.setdefault(case_key(cid)[0], collections.Counter())[column(results[cid].get("behavior"))] += 1
    total = collections.Counter()
    for c in groups.values():
        total.update(c)
    bad_close = collections.Counter(case_key(cid)[0] for cid in results
                                    if results[cid].get("behaviorClose") not in GOOD_CLOSE)

    out = []
    verdict = "PASS" if not problems and not failing else "FAIL"
    out.append("# WebSocket conformance (Autobahn|Testsuite)\n")
    out.append(f"Generated {datetime.date.today().isoformat()} by `scripts/autobahn/run.sh` "
               f"(wstest fuzzingclient, agent `{agent}`): **{verdict}**, {len(results)} cases.\n")
    out.append("Per top-level case group; columns count the case `behavior`, *Bad close* counts cases "
               "whose `behaviorClose` is not OK/INFORMATIONAL.\n")
    out.append("| Group | Cases | " + " | ".join(COLUMNS) + " | Bad close |")
    out.append("|---|---:|" + "---:|" * (len(COLUMNS) + 1))
    for g, c in groups.items():
        name = f"{g} {GROUPS.get(g, '')}".strip()
        out.append(f"| {name} | {sum(c.values())} | " + " | ".join(str(c[k]) for k in COLUMNS)
                   + f" | {bad_close[g]} |")
    out.append(f"| **Total** | **{sum(total.values())}** | "
               + " | ".join(f"**{total[k]}**" for k in COLUMNS) + f" | **{sum(bad_close.values())}** |")
    out.append("")

    def case_rows(ids):
        rows = ["| Case | Behavior | Close | Description | Result |", "|---|---|---|---|---|"]
        for cid in ids:
            e = results[cid]
            rep = load_case_report(outdir, e)
            result = clean(rep.get("result"))
            if e.get("behaviorClose") not in GOOD_CLOSE:
                result += f" / close: {clean(rep.get('resultClose'))} (code {e.get('remoteCloseCode')})"
            rows.append(f"| {cid} | {e.get('behavior')} | {e.get('behaviorClose')} | "
                        f"{clean(rep.get('description'), 300).replace('|', '&#124;')} | "
                        f"{result.replace('|', '&#124;')} |")
        return rows

    for label in ("NON-STRICT", "INFORMATIONAL"):
        ids = [cid for cid in sorted(results, key=case_key)
               if results[cid].get("behavior") == label and cid not in failing]
        out.append(f"## {label} cases ({len(ids)})\n")
        out.extend(case_rows(ids) if ids else ["None."])
        out.append("")
    if problems or failing:
        out.append(f"## Failing cases ({len(failing)})\n")
        out.extend(f"- {p}" for p in problems)
        if failing:
            if problems:
                out.append("")
            out.extend(case_rows(failing))
        out.append("")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--expect", type=int, required=True, help="required number of case results")
    ap.add_argument("--agent", help="agent name (default: the only one in index.json)")
    ap.add_argument("--cases-file", help="file with the selected case ids, one per line")
    ap.add_argument("--summary", help="write a Markdown summary to this file")
    args = ap.parse_args()

    results, problems, failing = judge(args.outdir, args.expect, args.agent, args.cases_file)
    agent = args.agent or "?"

    by_behavior = collections.Counter(e.get("behavior") for e in results.values())
    by_close = collections.Counter(e.get("behaviorClose") for e in results.values())
    fmt = lambda c: ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1])) or "-"
    print(f"autobahn: {os.path.join(args.outdir, 'index.json')} agent={agent}")
    print(f"autobahn: cases {len(results)} (expected {args.expect})")
    print(f"autobahn: behavior      {fmt(by_behavior)}")
    print(f"autobahn: behaviorClose {fmt(by_close)}")
    for p in problems:
        print(f"autobahn: PROBLEM: {p}")
    if failing:
        print(f"autobahn: {len(failing)} failing case(s):")
        for cid in failing:
            e = results[cid]
            rep = load_case_report(args.outdir, e)
            print(f"  {cid:<9} behavior={e.get('behavior'):<13} close={e.get('behaviorClose'):<13} "
                  f"code={e.get('remoteCloseCode')}  {clean(rep.get('description'), 90)}")
    if args.summary:
        write_summary(args.summary, args.outdir, agent, results, problems, failing)
        print(f"autobahn: summary written to {args.summary}")
    ok = not problems and not failing
    print(f"autobahn: RESULT {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
