"""``sysupd inspect`` and ``sysupd mark``: looking at a bundle and marking slots, on the device.

``inspect`` formats what ``engine.inspection`` found (as text or one JSON object) and exits 1,
with the reason, when the device would not install the bundle; it changes nothing on disk.
``mark`` applies ``engine.marks`` (RAUC's ``mark-good``/``mark-bad``/``mark-active``). Both use the
engine ``sysupd install`` would use: the configuration file, then the settings stored over the
API, in the same state directory, which must exist: looking at a device that is not there is
refused rather than making an empty one.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from sysupd.cli.options import config_options, device_engine, fail
from sysupd.core.units import human_size
from sysupd.engine.inspection import Inspection, inspect_bundle
from sysupd.engine.marks import MARKS, MarkResult, mark_slot
from sysupd.errors import SysupdError

__all__ = ["inspect", "mark"]


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--trust-root",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Verify against this root.json instead of the device's trust.",
)
@click.option(
    "--check-payload", is_flag=True, help="Also check every payload chunk against its hash."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@config_options
def inspect(
    bundle: Path,
    trust_root: Path | None,
    check_payload: bool,
    as_json: bool,
    config_file: Path | None,
    state_dir: Path | None,
) -> None:
    """Show what BUNDLE holds and whether this device would install it; installs nothing.

    Exits 0 when it verifies and would be accepted, 1 (with the reason) when not.
    """
    engine = device_engine(config_file, state_dir, create=False)
    report = inspect_bundle(engine, bundle, trust_root=trust_root, check_payload=check_payload)
    if as_json:
        click.echo(json.dumps(_inspection_json(report), indent=2))
    else:
        for line in _inspection_lines(report):
            click.echo(line)
    if report.reason is not None:
        fail(report.reason)


@click.command()
@click.argument("how", metavar="good|bad|active", type=click.Choice(MARKS))
@click.argument("slot")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@config_options
def mark(
    how: str, slot: str, as_json: bool, config_file: Path | None, state_dir: Path | None
) -> None:
    """Mark SLOT (a slot name, 'booted' or 'other') good, bad or active, as RAUC does.

    good: bootable, attempts reset (settles the booted slot's trial); bad: not bootable;
    active: good and first to boot (reboot to boot it).
    """
    engine = device_engine(config_file, state_dir, create=False)
    try:
        result = mark_slot(engine, how, slot)
    except SysupdError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(_mark_json(result), indent=2))
    else:
        click.echo(result.message)


def _mark_json(result: MarkResult) -> dict[str, Any]:
    document = asdict(result)
    document["settled"] = asdict(result.settled) if result.settled else None
    return document


def _inspection_json(report: Inspection) -> dict[str, Any]:
    m, header = report.manifest, report.header
    return {
        "path": report.path,
        "product": m.product if m else None,
        "version": str(m.version) if m else None,
        "payload": m.payload if m else None,
        "compression": m.compression if m else None,
        "size": m.length if m else None,
        "installed_size": m.installed_size if m else None,
        "notes": m.notes if m else None,
        "target": header.target if header else None,
        "sha256": m.sha256 if m else None,
        "chunk_size": m.chunk_size if m else None,
        "file_size": report.file_size,
        "payload_in_file": report.payload_in_file,
        "keys": [
            {"keyid": k.keyid, "keytype": k.keytype, "scheme": k.scheme, "roles": list(k.roles)}
            for k in (header.keys if header else ())
        ],
        "roles": {
            r.name: {
                "threshold": r.threshold,
                "keyids": list(r.keyids),
                "version": r.version,
                "expires": r.expires.isoformat() if r.expires else None,
                "expired": r.expired,
            }
            for r in (header.roles if header else ())
        },
        "root_versions": list(header.root_versions) if header else [],
        "problems": list(header.problems) if header else [],
        "trust": {
            "ok": report.trust.ok,
            "detail": report.trust.detail,
            "against": report.trusted_by,
            "new_roots": list(report.new_roots),
        },
        "policy": {
            "ok": report.policy.ok,
            "detail": report.policy.detail,
            "device_product": report.device_product,
            "floor": report.floor,
            "allow_downgrade": report.allow_downgrade,
            "downgrade": report.downgrade,
        },
        "payload_check": {
            "ok": report.payload.ok,
            "detail": report.payload.detail,
            "chunks_checked": report.chunks_checked,
        },
        "verified": report.verified,
        "accepted": report.accepted,
        "reason": report.reason,
    }


def _inspection_lines(report: Inspection) -> list[str]:
    size = f", {_size(report.file_size)}" if report.file_size is not None else ""
    lines = [f"bundle:      {report.path}{size}"]
    header, m = report.header, report.manifest
    if header is None:
        return [*lines, f"result:      not readable: {report.read_error}"]
    if m is not None:
        if not report.trust.ok:
            lines.append("             (UNVERIFIED: what the header claims; it is not trusted)")
        lines += [
            f"product:     {m.product}",
            f"version:     {m.version}",
            f"payload:     {m.payload}, compression {m.compression}",
            f"size:        {_size(m.length)}",
            f"installed:   {_size(m.installed_size)}",
            f"notes:       {m.notes or '-'}",
            f"sha256:      {m.sha256}",
            f"chunks:      {-(-m.length // m.chunk_size)} of {_size(m.chunk_size, exact=False)}",
        ]
    lines.append(f"target:      {header.target}")
    lines += [f"problem:     {problem}" for problem in header.problems]
    lines.append(f"roots:       v{', v'.join(map(str, header.root_versions)) or '-'}")
    lines.append("metadata:")
    for role in header.roles:
        fresh = "not in the bundle"
        if role.version is not None and role.expires is not None:
            state = "EXPIRED" if role.expired else "expires"
            fresh = f"v{role.version}, {state} {role.expires:%Y-%m-%d %H:%M} UTC"
        count = len(role.keyids)
        lines.append(f"  {role.name:<10} threshold {role.threshold} of {count} key(s); {fresh}")
    lines.append("keys:")
    lines += [f"  {k.keyid}  {k.keytype}/{k.scheme}  {', '.join(k.roles)}" for k in header.keys]
    lines.append(f"trust:       {_verdict(report.trust.ok)}: {report.trust.detail}")
    if report.trusted_by:
        lines.append(f"             against {report.trusted_by}")
    if report.new_roots:
        lines.append(f"             it brings root v{', v'.join(map(str, report.new_roots))}")
    lines += [
        f"policy:      {_verdict(report.policy.ok)}: {report.policy.detail}",
        f"payload:     {_verdict(report.payload.ok)}: {report.payload.detail}",
        "result:      "
        + ("accepted: this device would install it" if report.accepted else "REFUSED"),
    ]
    return lines


def _verdict(ok: bool) -> str:
    return "ok" if ok else "FAILED"


def _size(count: int, *, exact: bool = True) -> str:
    """A size for people, then the exact byte count."""
    human = human_size(count)
    return f"{human} ({count:,} bytes)" if exact and count >= 1024 else human
