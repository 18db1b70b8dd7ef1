"""The workloads of the delta benchmark: an OS-root-like file tree, four new versions of it, and
an ext4 image of each, generated from a seed into a cache directory the caller names.

The base tree (``plan_base``) is shaped like a Debian root: a skeleton (``etc``, ``usr/bin``,
``usr/lib/x86_64-linux-gnu``, ``var/lib/dpkg/info``, ...) and about one generated directory per
ten files, about 33,000 files per GiB whose sizes follow a log-normal law (median 4 KiB, so most
are small text or configuration files, some are libraries of a few MiB), and a few large files
scaled with the size (a kernel, an initrd, firmware, a 96 MiB library at 1 GiB: a fifth of the
bytes). The file sizes add up to exactly the size asked for. Content is text-like (a skewed
alphabet, and repeats of what came earlier in the same file), binary-like (that, with random and
zero stretches) or random (what compressed files look like); zstd -3 makes about 2:1 of the
whole. Repeats never reach outside their file and stay far below a 16 KiB chunk, so no file
shares a chunk with another: what a delta tool saves, it saves on unchanged files.

The versions (``plan_case``), each compared with the base:

- ``a``: nothing changed but ``etc/appliance/version`` (6 bytes, same length), which every real
  release rewrites (``tools/appliance/rootfs.py`` writes its own);
- ``b``: that, and 1 % of the files (by count, drawn with the seed) rewritten with new content of
  their kind and 90-110 % of their size;
- ``c``: the same with 10 % (a superset of ``b``'s files, with the same new content);
- ``d``: the version file and a new 30 MiB random file ``boot/vmlinuz-new``.

Rewritten files and the version file get a later mtime, so do the directories holding them;
everything else keeps the base's. A version's unchanged files are hard links to the base's (the
trees are read-only inputs: never write into them).

The images (``mke2fs -d``) follow ``slot_image``, with what keeps unchanged content at the same
offsets across versions: one size for every version (a tenth more than the largest version's
allocated blocks, plus 32 MiB), one UUID and hash seed (the UUID seeds metadata_csum, a new one
would change every metadata block), ``E2FSPROGS_FAKE_TIME``, and the same creation order. mke2fs
1.47.0 copies each source inode's ctime and atime, which no one can set and which reading the
tree changes, so every inode's ctime and atime are set afterwards with ``debugfs`` (about 1 s).
The same seed gives byte-identical trees anywhere, and byte-identical images on one host (mke2fs
reads directories in the host file system's order).

Invariant: a version counts as made only when its ``.json`` exists; it is written last, and
everything before it is built under a ``.partial`` name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from _harness import MIB, BenchError

__all__ = [
    "CASES",
    "CASE_TITLES",
    "FileSpec",
    "Version",
    "VersionPlan",
    "Workload",
    "build_workload",
    "plan_base",
    "plan_case",
    "tree_digest",
]

CASES = ("a", "b", "c", "d")
CASE_TITLES = {
    "a": "nothing changed (the version file only)",
    "b": "1 % of the files rewritten",
    "c": "10 % of the files rewritten",
    "d": "a new 30 MiB random blob",
}
_VERSIONS = {"base": "1.0.0", "a": "1.0.1", "b": "1.1.0", "c": "1.2.0", "d": "1.3.0"}
_SHARES = {"b": 0.01, "c": 0.10}
_BLOB_BYTES = 30 * MIB
_BLOB_PATH = "boot/vmlinuz-new"
_VERSION_PATH = "etc/appliance/version"

# Bump when anything below changes what is generated: it names the cache directory.
_GENERATOR = "g1"
_EPOCH = 1_700_000_000  # the base's mtimes; each version is a day later
_DAY = 86_400
_UUID = "5b5e0d5a-6c1e-4d3b-9a6f-0b1e2d3c4f50"  # the product's, the same for every version
_BLOCK = 4096
_PIECE = 8 * MIB  # content is made and written in pieces of this size
_ZEROS = bytes(_PIECE)

# The directories every version has before the generated ones (those go below the "growing"
# ones), and the "busy" ones, which take 30 % of the files, as usr/bin and dpkg's info do.
_SKELETON = (
    "boot",
    "etc",
    "etc/appliance",
    "opt",
    "opt/appliance",
    "opt/appliance/share",
    "usr",
    "usr/bin",
    "usr/include",
    "usr/lib",
    "usr/lib/firmware",
    "usr/lib/locale",
    "usr/lib/modules",
    "usr/lib/python3",
    "usr/lib/python3/dist-packages",
    "usr/lib/x86_64-linux-gnu",
    "usr/sbin",
    "usr/share",
    "usr/share/doc",
    "var",
    "var/cache",
    "var/cache/debconf",
    "var/lib",
    "var/lib/dpkg",
    "var/lib/dpkg/info",
)
_BUSY = (
    "usr/bin",
    "usr/sbin",
    "usr/lib/x86_64-linux-gnu",
    "usr/share/doc",
    "var/lib/dpkg/info",
)
_GROWING = (
    "etc",
    "opt",
    "usr/include",
    "usr/lib",
    "usr/lib/modules",
    "usr/share",
    "usr/lib/python3",
)
# (path, MiB at 1 GiB, kind): the few large files, scaled with the size.
_LARGE = (
    ("boot/vmlinuz-6.1.0-18-amd64", 8, "blob"),
    ("boot/initrd.img-6.1.0-18-amd64", 32, "blob"),
    ("usr/lib/x86_64-linux-gnu/libLLVM-15.so.1", 96, "binary"),
    ("usr/lib/locale/locale-archive", 12, "text"),
    ("usr/lib/firmware/iwlwifi-ty-a0-gf-a0-77.ucode", 8, "blob"),
    ("usr/lib/firmware/amdgpu-navi10-sos.bin", 8, "blob"),
    ("usr/lib/firmware/i915-tgl-guc-70.bin", 8, "blob"),
    ("opt/appliance/share/model.bin", 24, "binary"),
    ("var/cache/debconf/templates.dat", 4, "text"),
)
_EXTENSIONS = {
    "text": (".conf", ".py", ".txt", ".sh", ".json", ".h", ""),
    "binary": (".so", ".so.1", ".bin", ".ko", ""),
    "blob": (".gz", ".png", ".zst", ".xz"),
}
_SYLLABLES = ("lib", "ga", "ro", "ne", "ti", "sys", "ku", "mo", "da", "xe", "pu", "vi", "lo", "an")
# Segment mixes, as cumulative thresholds: random, then text-like, then a repeat, else zeros.
_MIXES = {"text": (0.0, 0.45, 0.95), "binary": (0.2, 0.45, 0.90)}


def _text_table() -> bytes:
    """A byte map onto a skewed 32-letter alphabet (about 4.3 bits a byte, like text)."""
    letters = b"etaoinshrdlucmfw ypvbgk\n_.=/0123"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 16, 2, 2, 1, 1, 1, 1, 4]
    weights += [1] * (len(letters) - len(weights))
    total = sum(weights)
    table = b"".join(
        bytes([c]) * round(256 * w / total) for c, w in zip(letters, weights, strict=True)
    )
    return (table + b" " * 256)[:256]


_TEXT = _text_table()


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One regular file of a version: its content is a function of the seed and these fields."""

    path: str
    size: int
    kind: str  # "text", "binary", "blob" or "version" (the version string)
    mode: int
    mtime: int
    generation: int = 0  # 0 in the base; a rewrite makes new content under a new generation


@dataclass(frozen=True, slots=True)
class VersionPlan:
    """What a version's tree holds, in creation order."""

    name: str  # "base" or a case
    version: str
    dirs: tuple[str, ...]
    files: tuple[FileSpec, ...]

    @property
    def tree_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def allocated_bytes(self) -> int:
        """What ext4 allocates for the content: whole blocks, one per directory."""
        blocks = sum(-(-f.size // _BLOCK) for f in self.files) + len(self.dirs)
        return blocks * _BLOCK


@dataclass(frozen=True, slots=True)
class Version:
    """A made version: its tree, its image and what sets it apart from the base."""

    name: str
    version: str
    tree: Path
    image: Path
    files: int
    dirs: int
    tree_bytes: int
    changed_files: int  # rewritten or added, the version file included
    changed_bytes: int  # the sizes of those files
    tree_sha256: str  # ``tree_digest`` of the tree
    image_bytes: int
    image_sha256: str
    tree_s: float  # what making the tree took, and the image (when it was made)
    image_s: float


@dataclass(frozen=True, slots=True)
class Workload:
    """The base and the versions asked for, all in ``root``."""

    root: Path
    mib: int
    seed: int
    base: Version
    versions: dict[str, Version]  # by case
    made_s: float  # what ``build_workload`` took this time (little when all was cached)


# -- plans (pure) ------------------------------------------------------------------------------


def plan_base(mib: int, seed: int) -> VersionPlan:
    """The base tree of ``mib`` MiB (its file sizes add up to exactly that)."""
    rng = random.Random(f"base/{seed}")
    scale = mib / 1024
    total = mib * MIB
    version = _VERSIONS["base"]
    files = [FileSpec(_VERSION_PATH, len(version) + 1, "version", 0o644, _EPOCH)]
    files += [
        FileSpec(path, max(_BLOCK, round(size * MIB * scale)), kind, 0o644, _EPOCH)
        for path, size, kind in _LARGE
    ]
    left = total - sum(f.size for f in files)
    sizes: list[int] = []
    while left > 0:
        size = min(left, 1 + int(min(8 * MIB, rng.lognormvariate(math.log(4096), 1.9))))
        sizes.append(size)
        left -= size
    dirs = list(_SKELETON)
    for _ in range(max(30, len(sizes) // 10)):
        parent = rng.choice([d for d in dirs[-200:] if d.count("/") < 6] + list(_GROWING))
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randrange(1, 4)))
        dirs.append(f"{parent}/{name}-{len(dirs)}")
    generated = dirs[len(_SKELETON) :]
    for index, size in enumerate(sizes):
        kind = rng.choices(
            ("text", "binary", "blob"), (55, 40, 5) if size < 65536 else (10, 75, 15)
        )[0]
        folder = rng.choice(_BUSY) if rng.random() < 0.3 else rng.choice(generated)
        stem = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randrange(1, 4)))
        name = f"{stem}-{index}{rng.choice(_EXTENSIONS[kind])}"
        mode = 0o755 if folder.endswith("bin") and kind == "binary" else 0o644
        files.append(FileSpec(f"{folder}/{name}", size, kind, mode, _EPOCH))
    return VersionPlan("base", version, tuple(sorted(dirs)), tuple(sorted(files, key=_path)))


def plan_case(base: VersionPlan, case: str, seed: int) -> VersionPlan:
    """The version of ``case`` (see the module's docstring), made from ``base``."""
    version = _VERSIONS[case]
    mtime = _EPOCH + _DAY * (1 + CASES.index(case))
    files = [
        replace(f, size=len(version) + 1, mtime=mtime) if f.kind == "version" else f
        for f in base.files
    ]
    if case in _SHARES:
        rng = random.Random(f"changes/{seed}")
        candidates = [i for i, f in enumerate(files) if f.kind != "version"]
        order = rng.sample(candidates, len(candidates))
        factors = [rng.uniform(0.9, 1.1) for _ in order]  # the same draws for b and c
        count = max(1, round(_SHARES[case] * len(order)))
        for index, factor in zip(order[:count], factors[:count], strict=True):
            old = files[index]
            size = max(1, round(old.size * factor))
            files[index] = replace(old, size=size, mtime=mtime, generation=1)
    if case == "d":
        files.append(FileSpec(_BLOB_PATH, _BLOB_BYTES, "blob", 0o644, mtime, generation=1))
    return VersionPlan(case, version, base.dirs, tuple(sorted(files, key=_path)))


def _path(spec: FileSpec) -> str:
    return spec.path


def _image_mib(base: VersionPlan, seed: int) -> int:
    """One image size for every version: the largest one's blocks, a tenth more, 32 MiB."""
    largest = max(plan_case(base, case, seed).allocated_bytes for case in CASES)
    return -(-largest * 11 // 10 // MIB) + 32


# -- content -----------------------------------------------------------------------------------


def _content(seed: int, spec: FileSpec, version: str) -> Iterator[bytes]:
    """The file's bytes, in pieces of at most 8 MiB.

    AES-128-CTR under a key drawn from the seed, the path and the generation is the byte source:
    seeded like ``random.Random``, but 7 GB/s instead of 0.3.
    """
    if spec.kind == "version":
        yield f"{version}\n".encode()
        return
    key = hashlib.sha256(f"{seed}/{spec.path}/{spec.generation}".encode()).digest()
    stream = Cipher(algorithms.AES(key[:16]), modes.CTR(bytes(16))).encryptor()
    rng = random.Random(key)
    left = spec.size
    while left:
        count = min(left, _PIECE)
        raw = stream.update(memoryview(_ZEROS)[:count])
        yield raw if spec.kind == "blob" else _mixed(raw, rng, _MIXES[spec.kind])
        left -= count


def _mixed(raw: bytes, rng: random.Random, mix: tuple[float, float, float]) -> bytes:
    """``raw`` made into stretches of random bytes, text-like bytes, repeats of an earlier
    stretch of this piece (within 32 KiB, so zstd finds them) and zeros."""
    random_to, text_to, repeat_to = mix
    out = bytearray()
    size = len(raw)
    while (pos := len(out)) < size:
        draw = rng.random()
        count = min(rng.randrange(64, 4096), size - pos)
        if draw < random_to:
            out += raw[pos : pos + count]
        elif draw < text_to or pos < 4096:
            out += raw[pos : pos + count].translate(_TEXT)
        elif draw < repeat_to:
            start = rng.randrange(max(0, pos - 32768), pos - count + 1)
            out += out[start : start + count]
        else:
            out += bytes(count // 8)  # short, so a zero run never fills a chunk
    return bytes(out[:size])


# -- making ------------------------------------------------------------------------------------


def _write_tree(
    plan: VersionPlan, seed: int, dest: Path, base: tuple[VersionPlan, Path] | None
) -> None:
    """The tree of ``plan`` at ``dest`` (new); files equal to the base's are hard links."""
    same = {f.path: f for f in base[0].files} if base is not None else {}
    dest.mkdir()
    for folder in plan.dirs:
        (dest / folder).mkdir()
    dir_mtimes = dict.fromkeys(("", *plan.dirs), _EPOCH)
    for spec in plan.files:
        target = dest / spec.path
        if base is not None and same.get(spec.path) == spec:
            os.link(base[1] / spec.path, target)
            continue
        folder = spec.path.rpartition("/")[0]
        dir_mtimes[folder] = max(dir_mtimes[folder], spec.mtime)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            for piece in _content(seed, spec, plan.version):
                os.write(fd, piece)
            os.fchmod(fd, spec.mode)
            os.utime(fd, (spec.mtime, spec.mtime))
        finally:
            os.close(fd)
    for folder, mtime in dir_mtimes.items():
        os.chmod(dest / folder, 0o755)  # noqa: S103 - an OS root's directories are readable
        os.utime(dest / folder, (mtime, mtime))


def _run(cmd: Sequence[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, env=env, check=False)
    if done.returncode != 0:
        text = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
        raise BenchError(f"{' '.join(cmd)} exited with {done.returncode}: {text}")


def _make_image(plan: VersionPlan, tree: Path, out: Path, size_mib: int) -> None:
    """The ext4 image of ``tree`` at ``out`` (see the module's docstring for what is fixed)."""
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(_EPOCH)}
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    _run(
        [
            *("mke2fs", "-q", "-t", "ext4", "-m", "0", "-L", "sysupd-bench", "-U", _UUID),
            *("-E", f"root_owner=0:0,hash_seed={_UUID}", "-d", str(tree), str(partial)),
            f"{size_mib}M",
        ],
        env,
    )
    script = partial.with_name(partial.name + ".debugfs")
    paths = [*plan.dirs, *(f.path for f in plan.files)]
    script.write_text(
        "".join(f'sif "/{p}" ctime {_EPOCH}\nsif "/{p}" atime {_EPOCH}\n' for p in paths)
    )
    try:
        _run(["debugfs", "-w", "-f", str(script), str(partial)], env)
    finally:
        script.unlink()
    _run(["e2fsck", "-fn", str(partial)])
    partial.rename(out)


def tree_digest(tree: Path) -> str:
    """SHA-256 over the tree's listing: each entry's path, type and mode, each file's size and
    content (not times or owners: a tar or a copy need not keep them)."""
    digest = hashlib.sha256()
    for path in sorted(tree.rglob("*")):
        stat = path.lstat()
        name = path.relative_to(tree).as_posix()
        if path.is_dir():
            digest.update(f"d {name} {stat.st_mode & 0o7777:o}\n".encode())
            continue
        content = hashlib.sha256()
        with path.open("rb") as source:
            while block := source.read(MIB):
                content.update(block)
        line = f"f {name} {stat.st_mode & 0o7777:o} {stat.st_size} {content.hexdigest()}\n"
        digest.update(line.encode())
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def _make_tree(
    plan: VersionPlan, root: Path, seed: int, base: tuple[VersionPlan, Path] | None
) -> tuple[Path, float]:
    """The tree of ``plan`` at ``root/tree-NAME``, made unless there; the seconds it took."""
    tree = root / f"tree-{plan.name}"
    if tree.is_dir():
        return tree, 0.0
    partial = tree.with_name(tree.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    began = time.perf_counter()
    _write_tree(plan, seed, partial, base)
    partial.rename(tree)
    return tree, time.perf_counter() - began


def _finish(
    plan: VersionPlan, base: VersionPlan, tree: Path, tree_s: float, size_mib: int
) -> Version:
    """The image of a made tree, and the version's record."""
    image = tree.with_name(f"image-{plan.name}.img")
    began = time.perf_counter()
    _make_image(plan, tree, image, size_mib)
    image_s = time.perf_counter() - began
    old = {f.path: f for f in base.files}
    changed = [f for f in plan.files if old.get(f.path) != f] if plan is not base else []
    return Version(
        name=plan.name,
        version=plan.version,
        tree=tree,
        image=image,
        files=len(plan.files),
        dirs=len(plan.dirs),
        tree_bytes=plan.tree_bytes,
        changed_files=len(changed),
        changed_bytes=sum(f.size for f in changed),
        tree_sha256=tree_digest(tree),
        image_bytes=image.stat().st_size,
        image_sha256=_sha256(image),
        tree_s=tree_s,
        image_s=image_s,
    )


def _load(record: Path) -> Version | None:
    try:
        fields = json.loads(record.read_text())
        version = Version(
            **{**fields, "tree": Path(fields["tree"]), "image": Path(fields["image"])}
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return version if version.tree.is_dir() and version.image.is_file() else None


def _store(record: Path, version: Version) -> None:
    fields = {**asdict(version), "tree": str(version.tree), "image": str(version.image)}
    partial = record.with_name(record.name + ".partial")
    partial.write_text(json.dumps(fields, indent=1) + "\n")
    partial.rename(record)


def build_workload(
    work: Path, mib: int = 1024, seed: int = 1, cases: Sequence[str] = CASES
) -> Workload:
    """The base and the versions of ``cases`` under ``work/delta-workload-…``, made unless
    already there (a cache: remove the directory to start afresh).

    The trees are written one after another (they share the base's files), then the images
    are made side by side, one per core: mke2fs and debugfs are most of the time.

    Raises:
        BenchError: mke2fs, debugfs or e2fsck failed, or a case or the size is invalid.
    """
    unknown = set(cases) - set(CASES)
    if unknown or mib <= 0:
        raise BenchError(f"unknown cases {sorted(unknown)} or a size of {mib} MiB")
    began = time.perf_counter()
    root = work / f"delta-workload-{mib}m-seed{seed}-{_GENERATOR}"
    root.mkdir(parents=True, exist_ok=True)
    base_plan = plan_base(mib, seed)
    size_mib = _image_mib(base_plan, seed)
    made = {name: _load(root / f"{name}.json") for name in ("base", *cases)}
    todo: list[tuple[VersionPlan, Path, float]] = []
    for name, version in made.items():
        if version is None:
            plan = base_plan if name == "base" else plan_case(base_plan, name, seed)
            linked = None if name == "base" else (base_plan, root / "tree-base")
            tree, tree_s = _make_tree(plan, root, seed, linked)
            todo.append((plan, tree, tree_s))
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        jobs = [
            pool.submit(_finish, plan, base_plan, tree, tree_s, size_mib)
            for plan, tree, tree_s in todo
        ]
        for job in jobs:
            version = job.result()
            _store(root / f"{version.name}.json", version)
            made[version.name] = version
    done = {name: version for name, version in made.items() if version is not None}
    return Workload(
        root,
        mib,
        seed,
        done["base"],
        {case: done[case] for case in cases},
        time.perf_counter() - began,
    )
