"""A compliance report (``compliance.status``) as a standalone HTML page a compliance officer can file.

One file, nothing fetched: the styles are inline, there is no script, and a Content-Security-Policy forbids
loading anything should a value ever slip through unescaped. Every value is escaped, since card text (its
name, approvers, ticket ids) is the tenant's. ``@media print`` rules make a browser's "Print to PDF" give a
clean document. The page shows the report's hash, so the JSON filed next to it can be checked against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from aigos.core.compliance import report_hash

_STYLE = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
  color: #1a1a1a; background: #fff; max-width: 60rem; margin: 2rem auto; padding: 0 1.5rem; }
h1 { font-size: 1.6rem; margin: 0 0 .5rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
code { font: .85em/1.3 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; word-break: break-all; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: .35rem .5rem; text-align: left; vertical-align: top; }
thead th { background: #f2f2f2; }
table.facts th { width: 12rem; background: #f7f7f7; font-weight: 600; }
ul { margin: 0; padding-left: 1.1rem; }
.verdict { display: inline-block; font-weight: 700; padding: .2rem .6rem; border: 2px solid; }
.ok { color: #0a6b2d; }
.fail { color: #a3120c; }
.status { font-weight: 700; white-space: nowrap; }
.source { display: inline-block; min-width: 4.2rem; font-variant: small-caps; color: #555; }
.prohibited { font-weight: 700; color: #a3120c; border: 2px solid #a3120c; padding: .4rem .6rem; }
.muted { color: #555; }
footer { margin-top: 2.5rem; font-size: .85rem; color: #555; border-top: 1px solid #ccc; padding-top: .5rem; }
@page { size: A4; margin: 16mm 14mm; }
@media print {
  body { font-size: 10pt; max-width: none; margin: 0; padding: 0; }
  h2 { break-after: avoid; page-break-after: avoid; }
  tr, li, .prohibited { break-inside: avoid; page-break-inside: avoid; }
  thead { display: table-header-group; }
  .verdict, .ok, .fail, .prohibited, thead th, table.facts th {
    print-color-adjust: exact; -webkit-print-color-adjust: exact; }
}
""".strip()

#: Nothing may be loaded or run; only the inline style applies.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

#: Row labels of the runtime evidence; a key not listed here is shown as it is named.
_RUNTIME_LABELS = {
    "agents_live": "Live agents",
    "decisions_logged": "Policy decisions logged",
    "violations": "Policy violations",
    "kill_switch_triggers": "Kill-switch triggers",
    "kill_switch_acknowledged": "Kill-switch acknowledgements",
    "golden_thread_verified": "Golden Thread verified",
    "human_oversight": "Human oversight configured",
    "last_event_at": "Newest event counted",
}


def _e(value: Any) -> str:
    """Escaped text of a report value (quotes too: some values land in attributes)."""
    if value is None:
        return "\u2014"
    if value is True:
        return "yes"
    if value is False:
        return "no"
    return escape(str(value), quote=True)


def _verdict(compliant: Any) -> str:
    if compliant is True:
        return '<span class="verdict ok">Compliant</span>'
    return '<span class="verdict fail">Not compliant</span>'


def _facts(report: Mapping[str, Any], digest: str) -> list[str]:
    rows = [
        ("Asset", _e(report.get("asset_name"))),
        ("Asset id", f"<code>{_e(report.get('asset_id'))}</code>"),
        ("Risk level", _e(report.get("risk_level"))),
        ("Generated at", _e(report.get("generated_at"))),
        ("Report hash", f"<code>{_e(digest)}</code>"),
    ]
    return [
        '<table class="facts">',
        *(f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in rows),
        "</table>",
    ]


def _summary(report: Mapping[str, Any]) -> list[str]:
    lines = ["<section>", "<h2>Summary</h2>"]
    profiles = report.get("profiles") or []
    if profiles:
        lines += [
            "<table>",
            "<thead><tr><th>Profile</th><th>Level</th><th>Controls met</th><th>Percentage</th>"
            "<th>Result</th></tr></thead>",
            "<tbody>",
        ]
        for part in profiles:
            result = (
                "Prohibited" if part.get("prohibited") else ("Compliant" if part.get("compliant") else "Gaps")
            )
            lines.append(
                f"<tr><td>{_e(part.get('name'))} <code>{_e(part.get('profile'))}</code></td>"
                f"<td>{_e(part.get('level'))}</td>"
                f"<td>{_e(part.get('implemented'))} of {_e(part.get('applicable'))}</td>"
                f"<td>{_e(part.get('percentage'))}&#8239;%</td>"
                f'<td class="{"ok" if part.get("compliant") is True else "fail"}">{_e(result)}</td></tr>'
            )
        lines += ["</tbody>", "</table>"]
    else:
        lines.append('<p class="muted">No known profile was assessed.</p>')
    unknown = report.get("unknown_profiles") or []
    if unknown:
        named = ", ".join(f"<code>{_e(profile_id)}</code>" for profile_id in unknown)
        lines.append(f"<p>Unknown profiles named by the card (not assessed): {named}</p>")
    lines.append("</section>")
    return lines


def _evidence(items: Any) -> str:
    if not items:
        return '<span class="muted">none</span>'
    entries = "".join(
        f'<li><span class="source">{_e(item.get("source"))}</span> {_e(item.get("detail"))}</li>'
        for item in items
    )
    return f"<ul>{entries}</ul>"


def _profile(part: Mapping[str, Any]) -> list[str]:
    lines = [
        '<section class="profile">',
        f"<h2>{_e(part.get('name'))} <code>{_e(part.get('profile'))}</code></h2>",
        f"<p>Level <strong>{_e(part.get('level'))}</strong>: {_e(part.get('implemented'))} of "
        f"{_e(part.get('applicable'))} applicable controls met ({_e(part.get('percentage'))}&#8239;%). "
        f"{_verdict(part.get('compliant'))}</p>",
    ]
    if part.get("prohibited"):
        lines.append(
            '<p class="prohibited">Prohibited at this level: no control can make this system compliant.</p>'
        )
    controls = part.get("controls") or []
    if not controls:
        lines += ['<p class="muted">No controls apply at this level.</p>', "</section>"]
        return lines
    lines += [
        "<table>",
        "<thead><tr><th>Control</th><th>Status</th><th>Evidence</th></tr></thead>",
        "<tbody>",
    ]
    for control in controls:
        met = control.get("status") == "met"
        lines.append(
            f"<tr><td><code>{_e(control.get('id'))}</code><br>{_e(control.get('title'))}</td>"
            f'<td class="status {"ok" if met else "fail"}">{_e(control.get("status"))}</td>'
            f"<td>{_evidence(control.get('evidence'))}</td></tr>"
        )
    lines += ["</tbody>", "</table>", "</section>"]
    return lines


def _findings(report: Mapping[str, Any]) -> list[str]:
    lines = ["<section>", "<h2>Findings</h2>"]
    findings = report.get("findings") or []
    if findings:
        lines.append("<ul>")
        lines += [
            f"<li><code>{_e(item.get('id'))}</code>: {_e(item.get('detail'))}</li>" for item in findings
        ]
        lines.append("</ul>")
    else:
        lines.append('<p class="muted">None.</p>')
    lines.append("</section>")
    return lines


def _runtime(report: Mapping[str, Any]) -> list[str]:
    runtime = report.get("runtime") or {}
    lines = ["<section>", "<h2>Runtime evidence</h2>", '<table class="facts">']
    # A fixed order (the labels', then any other key sorted), not the dict's: the page must not depend on how
    # the report was built.
    keys = [key for key in _RUNTIME_LABELS if key in runtime] + sorted(set(runtime) - set(_RUNTIME_LABELS))
    for key in keys:
        label = _RUNTIME_LABELS.get(key)
        heading = _e(label) if label else f"<code>{_e(key)}</code>"
        lines.append(f"<tr><th>{heading}</th><td>{_e(runtime[key])}</td></tr>")
    lines += ["</table>", "</section>"]
    return lines


def html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained, printable HTML page (the same report gives the same text)."""
    digest = report_hash(report)
    title = f"Compliance report: {_e(report.get('asset_name') or report.get('asset_id'))}"
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        # Defence in depth: even an unescaped value could load and run nothing.
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title>",
        f"<style>\n{_STYLE}\n</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{title}</h1>",
        f"<p>{_verdict(report.get('compliant'))}</p>",
        *_facts(report, digest),
        "</header>",
        *_summary(report),
    ]
    for part in report.get("profiles") or []:
        lines += _profile(part)
    lines += _findings(report)
    lines += _runtime(report)
    lines += [
        "<footer>",
        "<p>The report hash is SHA-256 over the report's canonical JSON (UTF-8, keys sorted, no whitespace). "
        "Recompute it from the JSON filed with this page to check that neither has changed.</p>",
        "</footer>",
        "</body>",
        "</html>",
    ]
    return "\n".join(lines) + "\n"
