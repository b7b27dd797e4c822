"""Dataset archives: one folder per class, as a zip or a tar, checked before any training.

An archive is someone else's file list and sizes, and unpacking it as it says is how zip
bombs, ``../../etc/cron.d`` names and symlinks to ``/`` get in. Nothing here writes to
disk: ``inspect`` reads the member list alone and refuses absolute names, ``..``, links,
devices, nested or missing class folders, too many files or unpacked bytes, a member whose
unpacked size is far over its packed size (a zip bomb by ratio), and fewer than two
classes; ``images`` then reads each member into memory, bounded by the size it declared,
and decodes it only if its header names an allowed format within the pixel bound. Every
refusal is an ``InvalidArchive`` that names the member.

The layout: ``<class>/<image>``, optionally under one top folder (``cats-dogs/cat/1.png``);
macOS' ``__MACOSX/`` and ``.DS_Store`` entries are passed over. No torch here: the API
checks the listing of an upload at submission, the worker the images.
"""

from __future__ import annotations

import io
import re
import stat
import tarfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Literal

from PIL import Image

from models.predictor import InvalidRequest

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP", "BMP"}
CONTENT_TYPES = {"zip": "application/zip", "tar": "application/x-tar"}
_DRIVE = re.compile(r"^[A-Za-z]:")
_SKIPPED = ("__MACOSX", ".DS_Store")
_LABEL = re.compile(r"^[^\x00-\x1f]{1,100}$")
_SMALL = 64 * 1024  # members below this are never a bomb (headers dominate their ratio)


class InvalidArchive(InvalidRequest):
    """A dataset archive refused: the message names the member and the reason."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_files: int = 20_000  # images in one archive
    max_unpacked_bytes: int = 512 * 1024 * 1024  # the sum of the members' sizes
    max_member_bytes: int = 16 * 1024 * 1024  # one image file
    max_ratio: float = 100.0  # unpacked over packed bytes, per zip member and per archive
    max_pixels: int = 2048 * 2048  # one image, read from its header before decoding
    max_classes: int = 1000  # class folders


@dataclass(frozen=True)
class Member:
    name: str  # the member's name in the archive
    label: str  # its class folder
    size: int  # unpacked bytes, as the archive declares them


@dataclass(frozen=True)
class Listing:
    kind: Literal["zip", "tar"]
    labels: list[str]  # sorted class names: the new model's labels
    members: list[Member]
    unpacked_bytes: int

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.labels, 0)
        for m in self.members:
            out[m.label] += 1
        return out


def archive_kind(head: bytes, file: IO[bytes]) -> Literal["zip", "tar"] | None:
    """'zip', 'tar' (plain or gzip/bzip2/xz-compressed) or None, from the first bytes."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    pos = file.tell()
    try:
        file.seek(0)
        return "tar" if tarfile.is_tarfile(file) else None
    finally:
        file.seek(pos)


def _parts(name: str) -> list[str]:
    """The member's path segments; absolute names and ``..`` are refused."""
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise InvalidArchive(f"{name!r}: an absolute path; archive members must be relative")
    if "\\" in name or "\x00" in name:
        raise InvalidArchive(f"{name!r}: a backslash or NUL in a member name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArchive(f"{name!r}: '..' in a member name (a path out of the archive)")
    return parts


def _file_kind(mode: int, name: str) -> None:
    if stat.S_ISLNK(mode):
        raise InvalidArchive(f"{name!r}: a symbolic link; only image files are accepted")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        raise InvalidArchive(f"{name!r}: a device, pipe or socket; only image files are accepted")


def _zip_entries(file: IO[bytes], limits: ArchiveLimits) -> Iterator[tuple[str, int, bool]]:
    """(name, declared size, is a directory) of each zip member, refusing odd ones."""
    with zipfile.ZipFile(file) as zf:
        infos = zf.infolist()
        if len(infos) > 2 * limits.max_files:
            raise InvalidArchive(f"the archive has {len(infos)} members, over the limit of "
                                 f"{limits.max_files} images")
        for info in infos:
            mode = info.external_attr >> 16
            if mode:
                _file_kind(mode, info.filename)
            if info.flag_bits & 0x1:
                raise InvalidArchive(f"{info.filename!r}: encrypted; send it unencrypted")
            ratio = info.file_size / max(1, info.compress_size)
            if info.file_size > _SMALL and ratio > limits.max_ratio:
                raise InvalidArchive(f"{info.filename!r}: unpacks to {info.file_size} bytes from "
                                     f"{info.compress_size} ({ratio:.0f}x, over the limit of "
                                     f"{limits.max_ratio:.0f}x): a zip bomb?")
            yield info.filename, info.file_size, info.is_dir()


def _tar_entries(file: IO[bytes]) -> Iterator[tuple[str, int, bool]]:
    with tarfile.open(fileobj=file, mode="r:*") as tf:
        for info in tf:  # streamed: a bomb is refused by the running total, not read whole
            if info.issym() or info.islnk():
                raise InvalidArchive(f"{info.name!r}: a link; only image files are accepted")
            if info.ischr() or info.isblk() or info.isfifo() or not (info.isfile() or info.isdir()):
                raise InvalidArchive(f"{info.name!r}: a device, pipe or special file; only "
                                     "image files are accepted")
            yield info.name, info.size, info.isdir()


def inspect(file: IO[bytes], limits: ArchiveLimits = ArchiveLimits()) -> Listing:
    """Check an archive's member list (nothing is decoded) and return it."""
    file.seek(0, 2)
    packed = file.tell()
    file.seek(0)
    kind = archive_kind(file.read(8), file)
    file.seek(0)
    if kind is None:
        raise InvalidArchive("the dataset is not a zip or tar archive")
    raw: list[tuple[list[str], str, int]] = []
    total = 0
    try:
        entries = _zip_entries(file, limits) if kind == "zip" else _tar_entries(file)
        for name, size, is_dir in entries:
            parts = _parts(name)
            if is_dir or not parts or parts[0] == _SKIPPED[0] or parts[-1] == _SKIPPED[1]:
                continue
            if size > limits.max_member_bytes:
                raise InvalidArchive(f"{name!r}: {size} bytes, over the limit of "
                                     f"{limits.max_member_bytes} per image")
            total += size
            if total > limits.max_unpacked_bytes:
                raise InvalidArchive(f"{name!r}: the archive unpacks to over "
                                     f"{limits.max_unpacked_bytes} bytes")
            if total > _SMALL and total / max(1, packed) > limits.max_ratio:
                raise InvalidArchive(f"{name!r}: the archive unpacks to over {limits.max_ratio:.0f}"
                                     f" times its {packed} bytes: a bomb?")
            raw.append((parts, name, size))
            if len(raw) > limits.max_files:
                raise InvalidArchive(f"{name!r}: over the limit of {limits.max_files} images")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise InvalidArchive(f"the {kind} archive is damaged: {e}") from None
    members = _layout(raw)
    labels = sorted({m.label for m in members})
    if len(labels) < 2:
        raise InvalidArchive(f"the archive has {len(labels)} class folder{'s' * (len(labels) != 1)}"
                             f" ({', '.join(labels) or 'none'}); it needs at least two")
    if len(labels) > limits.max_classes:
        raise InvalidArchive(f"{len(labels)} class folders, over the limit of {limits.max_classes}")
    return Listing(kind, labels, members, total)


def _layout(raw: list[tuple[list[str], str, int]]) -> list[Member]:
    """Members as (class, file): one top folder shared by every member is passed over."""
    roots = {parts[0] for parts, _, _ in raw}
    strip = 1 if len(roots) == 1 and all(len(p) >= 3 for p, _, _ in raw) else 0
    members = []
    for parts, name, size in raw:
        parts = parts[strip:]
        if len(parts) != 2:
            where = "outside any class folder" if len(parts) < 2 else "in a nested folder"
            raise InvalidArchive(f"{name!r}: {where}; the layout is <class>/<image>, one "
                                 "folder per class")
        if not _LABEL.match(parts[0]):
            raise InvalidArchive(f"{name!r}: the class folder name is not a printable label")
        members.append(Member(name, parts[0], size))
    return members


def _read(file: IO[bytes], listing: Listing) -> Iterator[tuple[Member, bytes]]:
    """Each member's bytes, read no further than the size it declared (a lying header does
    not get more)."""
    wanted = {m.name: m for m in listing.members}
    file.seek(0)
    if listing.kind == "zip":
        with zipfile.ZipFile(file) as zf:
            for member in listing.members:
                with zf.open(member.name) as f:
                    data = f.read(member.size + 1)
                yield member, data
        return
    with tarfile.open(fileobj=file, mode="r:*") as tf:
        for info in tf:
            member = wanted.get(info.name)
            if member is None or not info.isfile():
                continue
            f = tf.extractfile(info)
            assert f is not None
            yield member, f.read(member.size + 1)


def _image(member: Member, data: bytes, limits: ArchiveLimits) -> Image.Image:
    if len(data) != member.size:
        raise InvalidArchive(f"{member.name!r}: its size differs from what the archive declares")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            fmt, (w, h) = str(image.format), image.size
            if fmt not in ALLOWED_FORMATS:
                raise InvalidArchive(f"{member.name!r}: {fmt} is not accepted; images must be "
                                     f"{', '.join(sorted(ALLOWED_FORMATS))}")
            if w * h > limits.max_pixels:
                raise InvalidArchive(f"{member.name!r}: {w}x{h} pixels, over the limit of "
                                     f"{limits.max_pixels}")
            image.load()
    except InvalidArchive:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise InvalidArchive(f"{member.name!r}: not a readable image") from None
    return image


def images(file: IO[bytes], listing: Listing, limits: ArchiveLimits = ArchiveLimits()
           ) -> Iterator[tuple[Image.Image, int]]:
    """(decoded image, class index) of every member of an inspected archive."""
    index = {label: i for i, label in enumerate(listing.labels)}
    try:
        for member, data in _read(file, listing):
            yield _image(member, data, limits), index[member.label]
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise InvalidArchive(f"the {listing.kind} archive is damaged: {e}") from None


def pack_folder(folder: str, out: IO[bytes]) -> int:
    """Write a class-per-folder dataset as a zip (the client side); return its image count.
    Files that are not images of an allowed suffix are left out."""
    from pathlib import Path

    root = Path(folder)
    suffixes = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
    count = 0
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(root.glob("*/*")):
            if path.is_file() and not path.is_symlink() and path.suffix.lower() in suffixes:
                zf.write(path, f"{path.parent.name}/{path.name}")
                count += 1
    return count
