"""The bad inputs of issue 12, sent to the appliance on real boots.

Responsibility: one machine that is given, in turn, what it must refuse or survive, and checked
after each from the outside:

1. a bundle signed by another repository (another product's keys), and the appliance's own
   bundle with its signatures taken off: both refused, naming why;
2. a release larger than the slot, fetched from nginx on the host (``fetch_url``): refused
   before its first byte is written — then, with the machine off, both slot partitions hold
   exactly what they held at the factory (slot A's image, slot B's zeros);
3. the ESP's grubenv made garbage, then removed, each while the machine is off: GRUB falls back
   to slot A, and the device recreates the grubenv (and says so in its log) and comes up good;
4. a release whose health check hangs: the check is cut off at its time limit, counts as failed,
   and the device rolls back to A, saying why.
"""

from __future__ import annotations

import dataclasses
import html
import json
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from sysupd.core.bundle_format import (
    BUNDLE_PREFIX_BYTES,
    decode_bundle_header,
    decode_bundle_prefix,
    encode_bundle_header,
)
from tools.appliance.build import Appliance, release_bundle
from tools.appliance.commands import run
from tools.appliance.grubcfg import ESP_GRUB_DIR
from tools.appliance.layout import DISK
from tools.appliance.online import GUEST_HOST
from tools.appliance.scenarios import (
    Device,
    Report,
    boot_factory,
    expect,
    kernel_slot,
    make_release,
    powered_on,
)
from tools.appliance.vm import read_grubenv, replace_esp_file, slot_digest
from tools.nginx import access_log, nginx_serving

__all__ = ["refuse_bad_input", "stripped_of_signatures"]

GRUBENV = f"{ESP_GRUB_DIR}/grubenv"
_SYSUPD = Path(sys.executable).with_name("sysupd")


def stripped_of_signatures(bundle: Path, out: Path) -> Path:
    """``bundle`` with every signature of its timestamp, snapshot, targets and releases
    metadata removed: the same payload and metadata, unsigned (its roots stay as they are: they
    are the device's own chain)."""
    with bundle.open("rb") as source:
        prefix = source.read(BUNDLE_PREFIX_BYTES)
        header = decode_bundle_header(source.read(decode_bundle_prefix(prefix)))
        timestamp, snapshot, targets, releases = (
            json.dumps({**json.loads(text), "signatures": []})
            for text in (header.timestamp, header.snapshot, header.targets, header.releases)
        )
        unsigned = dataclasses.replace(
            header, timestamp=timestamp, snapshot=snapshot, targets=targets, releases=releases
        )
        with out.open("wb") as sink:
            sink.write(encode_bundle_header(unsigned))
            while block := source.read(4 * 1024 * 1024):
                sink.write(block)
    return out


def _small_image(work: Path) -> Path:
    """A small ext4 image: a payload that uploads in a moment."""
    tree = work / "small-tree"
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "hello").write_text("not the appliance\n")
    image = work / "small.img"
    image.unlink(missing_ok=True)
    run(["mke2fs", "-q", "-t", "ext4", "-d", tree, image, "8M"])
    return image


def _foreign_bundle(work: Path, image: Path) -> Path:
    """A bundle of ``image`` from a repository of its own: another product, other keys."""
    repo = work / "foreign"
    run([_SYSUPD, "release", "init", "--repo", repo, "--product", "another-product"])
    run([_SYSUPD, "release", "add", "--repo", repo, "--version", "2.0.0", "--image", image])
    bundle = work / "another-product-2.0.0.bundle"
    run([_SYSUPD, "release", "bundle", "--repo", repo, "--version", "2.0.0", "--output", bundle])
    return bundle


def _oversized_image(work: Path) -> Path:
    """A (sparse) image one MiB larger than a slot partition."""
    image = work / "oversized.img"
    with image.open("wb") as out:
        out.truncate(DISK.partition("slot-b").size_bytes + 1024 * 1024)
    return image


async def _refused(device: Device, source: Path | str, *needles: str) -> str:
    """Start an update of ``source``; it must end in failure saying each of ``needles``;
    the line that says why."""
    final = await device.update(source)
    details = str(final.get("details", ""))
    expect(final.get("result") == "failure", f"{source} was not refused: {final}")
    for needle in needles:
        expect(needle in details, f"the refusal of {source} does not say {needle!r}: {details}")
    return details.rsplit("<br>", maxsplit=1)[-1]


def _good_in_a(report: Report, version: str, after: str) -> None:
    info = report.info
    expect(
        (info["slot"], info["system_version"], info["boot_status"]) == ("A", version, "good"),
        f"after {after}, not {version} in A, good: {info}",
    )


async def refuse_bad_input(appliance: Appliance, work: Path) -> str:
    """The bad inputs, in turn, on one machine (see the module's text)."""
    notes: list[str] = []
    small = _small_image(work)
    foreign = _foreign_bundle(work, small)
    repo = work / "repo"  # one repository for every release here, as a vendor has
    shutil.copytree(appliance.repo, repo)
    oversized = release_bundle(appliance, "2.0.0", work, _oversized_image(work), repo=repo)
    own = release_bundle(appliance, "2.1.0", work, small, repo=repo)
    unsigned = stripped_of_signatures(own, work / "unsigned.bundle")
    www = work / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "oversized.bundle").symlink_to(oversized)
    factory = {label: slot_digest(appliance.disk, label) for label in ("slot-a", "slot-b")}
    with nginx_serving(www, work / "nginx") as url:
        big_url = f"http://{GUEST_HOST}:{urlsplit(url).port}/oversized.bundle"
        async with boot_factory(appliance, work) as device:
            trusted = "is not signed by the keys this device trusts"
            why = await _refused(device, foreign, trusted)
            notes.append(f"another product's bundle refused: {why}")
            why = await _refused(device, unsigned, "timestamp metadata", trusted)
            notes.append(f"an unsigned bundle refused: {why}")
            why = await _refused(device, big_url, "is larger than slot B")
            notes.append(f"a release larger than the slot refused: {why}")
            _good_in_a(await device.report(), appliance.version, "the refusals")
        served = sum(_bytes_sent(line) for line in access_log(work / "nginx"))
    after = {label: slot_digest(device.vm.disk, label) for label in factory}
    expect(after == factory, f"a slot partition changed: {after} (factory: {factory})")
    notes.append(
        f"both slot partitions byte for byte as at the factory; nginx sent {served:,} of the "
        f"oversized bundle's {oversized.stat().st_size:,} bytes"
    )
    for damage, content in (
        ("garbage", b"\x00garbage".ljust(1024, b"\xff")),
        ("removed", None),
    ):
        replace_esp_file(device.vm.disk, work, GRUBENV, content)
        async with powered_on(device):
            expect(
                kernel_slot(device.boot_output()) == "A", f"grubenv {damage}: GRUB did not boot A"
            )
            report = await device.report()
        _good_in_a(report, appliance.version, f"the grubenv {damage}")
        env = read_grubenv(device.vm.disk, work)
        expect(
            (env.get("ORDER"), env.get("A_OK"), env.get("B_OK")) == ("A B", "1", "0"),
            f"grubenv {damage}: not recreated with A good and first: {env}",
        )
        line = _grubenv_line(report.log)
        notes.append(f"grubenv {damage}: recreated, A good ({line})")
    notes.append(await _hanging_check(device, work, repo))
    return "; ".join(notes)


def _grubenv_line(log: str) -> str:
    """The service log's last line about a recreated grubenv (``sys/middleware_log`` joins its
    lines with ``<br>``)."""
    lines = [line for line in log.split("<br>") if "grubenv" in line and "created it with" in line]
    expect(bool(lines), "the service log does not say the grubenv was recreated")
    return html.unescape(lines[-1].split(" ", 2)[-1])


async def _hanging_check(device: Device, work: Path, repo: Path) -> str:
    """A release whose health check hangs: cut off at the limit, rolled back to A."""
    version = "3.0.0"
    bundle = make_release(device.appliance, version, work, repo=repo, check_hangs=True)
    async with powered_on(device):
        await device.install(bundle)
        await device.next_boot()
        began = time.monotonic()
        trial = await device.next_boot()  # B's boot, ended by the failed check's reboot
        expect(kernel_slot(trial) == "B", "GRUB did not boot the new slot B")
        expect("did not finish within" in trial, "B's console does not show the check cut off")
        await device.wait_for_api()
        back_s = time.monotonic() - began
        report = await device.report()
    info, last = report.info, report.last_result
    expect(
        (info["slot"], info["boot_status"]) == ("A", "rolled back"),
        f"not rolled back to A after the hanging check: {info}",
    )
    detail = str(last.get("detail", ""))
    expect("did not finish within" in detail, f"last_result does not say why: {last}")
    return f"a hanging health check: rolled back to A {back_s:.0f} s after B's start: {detail}"


def _bytes_sent(line: str) -> int:
    """The body bytes of one line of nginx's access log (combined format)."""
    parts = line.split('"')
    try:
        return int(parts[2].split()[1])
    except (IndexError, ValueError):
        return 0
