"""How ``ops/bench_fanout.py`` and ``ops/bench_all.py`` print fan-out and memory runs: the line after
each run, the table of every run, the memory rows and issue #14's acceptance figures.

Per run: ``kept`` connections were ready and still open at the end; ``closes`` counts the connections
the server closed, by close code (4409: shed as a slow consumer); ``lost`` is what the kept connections
missed, ``missed`` what the closed ones missed after their close (a real client resumes: not a loss);
``p99 kept`` is the p99 latency over the kept connections' deliveries; ``RSS max`` the largest summed
RSS of the server's processes sampled every 0.5 s during the run (PSS beside it: shared pages counted
once). Reads results saved before these figures existed too (they show as "—").
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "LABELS",
    "acceptance_lines",
    "closes_text",
    "fanout_line",
    "fanout_table",
    "label",
    "memory_table",
]

LABELS = {
    "hub": "hub (ours)",
    "hub-shared": "hub, shared deflate (ours)",
    "hub-sio": "hub Socket.IO (ours)",
    "starlette": "bare Starlette loop",
    "node": "Socket.IO on Node.js",
    "flask": "Flask-SocketIO + Redis",
}
HUBS = ("hub", "hub-shared", "hub-sio")
SHED = "4409"
KEPT_P99_MS = 250.0  # acceptance (3): the p99 of the connections the hub keeps
RSS_PER_CONN_KB = 20.0  # acceptance (4): the aim per idle connection


def fmt(value: Any, digits: int = 1) -> str:
    """A figure for a table: thousands separated, ``digits`` decimals for a float, a dash for none."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def label(r: dict[str, Any]) -> str:
    """The server's name, with its worker count for a hub and the client kind when not plain."""
    name = LABELS.get(r["server"], r["server"])
    if r["server"] in HUBS and r.get("workers"):
        name += f", {r['workers']} worker" + ("s" if r["workers"] != 1 else "")
    return name + (" · deflate clients" if r.get("clients") == "deflate" else "")


def closes_text(closes: dict[str, int] | None) -> str:
    """``{"4409": 812, "1001": 3}`` as "4409×812 1001×3" (most first); "0" when none."""
    if not closes:
        return "0"
    return " ".join(f"{code}×{n:,}" for code, n in sorted(closes.items(), key=lambda kv: -kv[1]))


def _kept(r: dict[str, Any]) -> int:
    return int(r.get("kept", r["ready"]))


def _rss(r: dict[str, Any]) -> str:
    if r.get("rss_max_mb") is None:
        return "—"
    pss = r.get("pss_max_mb")
    return f"{r['rss_max_mb']:,.0f}" + (f" ({pss:,.0f})" if pss is not None else "")


def fanout_line(r: dict[str, Any]) -> str:
    """The line printed after each run."""
    lat, kept_lat = r["latency_ms"], r.get("latency_ms_kept") or {}
    return (
        f"    {label(r)}: {r['ready']:,}/{r['connections']:,} ready, {_kept(r):,} kept, closed by the server "
        f"{closes_text(r['closes'])}"
        + (f" ({r.get('negotiated', 0):,} negotiated deflate)" if r.get("clients") == "deflate" else "")
        + f"; delivered {r['delivered']:,}/{r['expected']:,} ({r['deliveries_per_s']:,.0f}/s), lost on kept "
        f"{r['lost']:,} ({r['lost_pct']}%), missed by closed {fmt(r.get('missed_closed'))}, dup "
        f"{r['duplicates']}; p50 {lat.get('p50')} p95 {lat.get('p95')} p99 {lat.get('p99')} ms (kept: p50 "
        f"{kept_lat.get('p50')} p95 {kept_lat.get('p95')} p99 {kept_lat.get('p99')} ms); server CPU "
        f"{r['server_cpu_us_per_msg']} µs/msg ({r['server_cpu_pct']}%); RSS max {fmt(r.get('rss_max_mb'))} MB "
        f"(PSS max {fmt(r.get('pss_max_mb'))} MB, {r.get('rss_processes', '?')} process(es))"
        + (
            f"; connections by process {', '.join(f'{n:,}' for n in r['connections_by_process'])}"
            if r.get("connections_by_process")
            else ""
        )
        + (f"; hub stored→sent {r['hub_stored_to_sent_ms']}" if r.get("hub_stored_to_sent_ms") else "")
    )


def _order(r: dict[str, Any]) -> tuple[int, int, bool]:
    names = list(LABELS)
    return (
        r["connections"],
        names.index(r["server"]) if r["server"] in names else len(names),
        r.get("clients") == "deflate",
    )


def fanout_table(runs: list[dict[str, Any]], skipped: list[dict[str, Any]] | None = None) -> list[str]:
    """Every fan-out run, one row each."""
    lines: list[str] = []
    head = (
        f"  {'server':<46} {'conns':>6} {'ready':>6} {'kept':>6} {'closed (code×n)':>16} {'deliveries/s':>12} "
        f"{'lost':>7} {'missed':>8} {'dup':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'p99 kept':>8} "
        f"{'CPU µs/msg':>10} {'server CPU':>10} {'RSS max MB':>13}"
    )
    lines.append(head)
    lines.append("  " + "-" * (len(head) - 2))
    for r in sorted(runs, key=_order):
        lat, kept_lat = r["latency_ms"], r.get("latency_ms_kept") or {}
        lost = f"{r['lost_pct']:.1f}%" if r["lost"] else "0"
        lines.append(
            f"  {label(r):<46} {r['connections']:>6,} {r['ready']:>6,} {_kept(r):>6,} "
            f"{closes_text(r['closes']):>16} {r['deliveries_per_s']:>12,.0f} {lost:>7} "
            f"{fmt(r.get('missed_closed')):>8} {r['duplicates']:>4} {fmt(lat.get('p50')):>8} "
            f"{fmt(lat.get('p95')):>8} {fmt(lat.get('p99')):>8} {fmt(kept_lat.get('p99')):>8} "
            f"{fmt(r['server_cpu_us_per_msg']):>10} {r['server_cpu_pct']:>9.0f}% {_rss(r):>13}"
        )
    for sk in skipped or []:
        lines.append(
            f"  {LABELS.get(sk['server'], sk['server']):<46} {sk['connections']:>6,}  not run: {sk['why']}"
        )
    lines.append(
        "  kept: ready and still open at the end; closed: connections the server closed, by close code; lost: "
        "what the kept ones missed; missed: what the closed ones missed after their close (they would resume); "
        "p99 kept: over the kept ones' deliveries; CPU and RSS: the server's processes (a hub's supervisor "
        "and workers); RSS max: summed RSS sampled every 0.5 s, in parentheses summed PSS (shared pages once)"
    )
    return lines


def memory_table(mem: list[dict[str, Any]]) -> list[str]:
    """RSS (summed over the server's processes) and PSS per idle connection, the hub's as a ratio."""
    lines: list[str] = []
    hub = next((x for x in mem if x["server"] == "hub"), None)
    for x in sorted(mem, key=lambda x: list(LABELS).index(x["server"]) if x["server"] in LABELS else 99):
        if x["rss_per_conn_kb"] is None:
            lines.append(f"  {label(x):<34} {x['ready']:>6,}/{x['connections']:,} connected: no figure")
            continue
        ratio = (
            ""
            if x["server"] == "hub" or not hub or not hub["rss_per_conn_kb"]
            else f"   hub ÷ this: {hub['rss_per_conn_kb'] / x['rss_per_conn_kb']:.2f}×"
            if x["rss_per_conn_kb"]
            else ""
        )
        pss = (
            f"; PSS {x['pss_before_mb']:,.0f} → {x['pss_after_mb']:,.0f} MB: {x['pss_per_conn_kb']:.1f} KB"
            if x.get("pss_per_conn_kb") is not None
            else ""
        )
        procs = x.get("processes") or []
        spread = (
            " (connections by process: " + ", ".join(f"{p['connections']:,}" for p in procs) + ")"
            if len(procs) > 1
            else ""
        )
        lines.append(
            f"  {label(x):<34} {x['ready']:>6,}/{x['connections']:,} connected, RSS {x['rss_before_mb']:,.0f} → "
            f"{x['rss_after_mb']:,.0f} MB: {x['rss_per_conn_kb']:.1f} KB/connection{pss}{spread}{ratio}"
        )
    if any(len(x.get("processes") or []) > 1 for x in mem):
        lines.append(
            "  RSS: summed over the server's processes (shared pages once per process); PSS: shared pages once"
        )
    return lines


def acceptance_lines(runs: list[dict[str, Any]], mem: list[dict[str, Any]]) -> list[str]:
    """Issue #14's figures from whatever was run: CPU per delivered message side by side per connection
    count; (2) at 5,000 with every connection getting everything; (3) at 10,000 and above; (4) memory
    at 10,000 idle connections. "met"/"missed" only where the run has the shape the item names."""
    lines: list[str] = []
    plain = [r for r in runs if r.get("clients", "plain") == "plain"]
    for n in sorted({r["connections"] for r in plain}):
        at = {r["server"]: r for r in plain if r["connections"] == n}
        hub = at.get("hub")
        side = [
            f"{label(at[s])} {fmt(at[s]['server_cpu_us_per_msg'])} µs"
            for s in ("hub", "hub-sio", "starlette", "node", "flask")
            if s in at
        ]
        if len(side) > 1 or hub:
            lines.append(f"  {n:,} connections, server CPU per delivered message: " + " · ".join(side))
        if hub is None:
            continue
        closed = sum((hub["closes"] or {}).values())
        p99 = hub["latency_ms"].get("p99")
        node = at.get("node")
        node_p99 = node["latency_ms"].get("p99") if node else None
        everyone = hub.get("filters") == "all"
        if n == 5000:
            met = (
                hub["lost"] == 0
                and closed == 0
                and hub["ready"] == n
                and p99 is not None
                and node_p99 is not None
                and p99 <= node_p99
            )
            verdict = (": " + ("met" if met else "missed")) if everyone and node else ""
            lines.append(
                f"  (2) {n:,}: hub {hub['ready']:,}/{n:,} ready, lost {hub['lost']:,} on {_kept(hub):,} kept, "
                f"closed by the server {closes_text(hub['closes'])}; p99 {fmt(p99)} ms vs Node's "
                f"{fmt(node_p99)} ms{verdict}"
                + ("" if everyone else " (hub filters mixed: (2) asks for --hub-filters all)")
            )
        if n >= 10000:
            kept_p99 = (hub.get("latency_ms_kept") or {}).get("p99")
            shed = (hub["closes"] or {}).get(SHED, 0)
            lines.append(
                f"  (3) {n:,}: hub RSS max {fmt(hub.get('rss_max_mb'))} MB (summed over "
                f"{hub.get('rss_processes', '?')} processes; PSS max {fmt(hub.get('pss_max_mb'))} MB); shed with "
                f"4409: {shed:,}, other closes: {closes_text({k: v for k, v in hub['closes'].items() if k != SHED})}; "
                f"p99 of the {_kept(hub):,} kept {fmt(kept_p99)} ms (< {KEPT_P99_MS:g} ms: "
                + ("met" if kept_p99 is not None and kept_p99 < KEPT_P99_MS else "missed")
                + f"); lost on kept {hub['lost']:,}"
            )
            if hub.get("p99_ms_kept_by_tenth"):
                lines.append(
                    "      kept p99 by tenth of the run (ms): "
                    + " ".join(fmt(x) for x in hub["p99_ms_kept_by_tenth"])
                )
    idle = {x["server"]: x for x in mem}
    if "hub" in idle:
        side = [
            f"{label(idle[s])} {fmt(idle[s]['rss_per_conn_kb'])} KB (PSS {fmt(idle[s].get('pss_per_conn_kb'))})"
            for s in ("hub", "hub-sio", "starlette", "node", "flask")
            if s in idle
        ]
        hub_kb = idle["hub"]["rss_per_conn_kb"]
        n = idle["hub"]["connections"]
        verdict = (
            f"; the hub's ≤ {RSS_PER_CONN_KB:g} KB: "
            + ("met" if hub_kb is not None and hub_kb <= RSS_PER_CONN_KB else "missed")
            if n >= 10000
            else ""
        )
        lines.append(f"  (4) {n:,} idle connections, RSS per connection: " + " · ".join(side) + verdict)
    return lines
