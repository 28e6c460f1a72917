"""Where a dataset's official files come from: a `DatasetSource` sits beside each dataset plugin (its
`DatasetEntry.source`), and `shala-bench data sources` / `data prepare NAME --help` print it.

`verify(source, root)` checks what can be checked before converting: the files the layout requires, and
the published checksums of those files when the source ships a checksum list (e.g. PhysioNet's
SHA256SUMS.txt) in the root.
"""

from __future__ import annotations

import hashlib
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from shala_bench.errors import DataError


@dataclass(frozen=True)
class DatasetSource:
    title: str  # the dataset and its paper
    obtain: str  # where and how to get it (URL, registration)
    files: tuple[str, ...]  # what to download, exactly
    layout: str  # the folder layout `--root` must have after unpacking
    licence: str  # licence and access terms
    size: str  # download / unpacked size, counts
    checksums: str = "none published by the source"  # what the source publishes, and what `data prepare` checks
    required: tuple[str, ...] = ()  # glob patterns under --root that must each match at least one path
    checksum_list: str | None = None  # a checksum list (sha256sum format) in --root to verify against
    checksum_globs: tuple[str, ...] = ()  # which listed files to verify (big image folders are not hashed)


def describe(name: str, src: DatasetSource | None, width: int = 100) -> str:
    """The text of `data sources` for one dataset."""
    if src is None:
        return f"{name}: no source information registered"

    def item(label: str, text: str) -> str:
        return textwrap.fill(text, width, initial_indent=f"  {label + ':':<11}", subsequent_indent=" " * 13,
                             break_on_hyphens=False, break_long_words=False)

    lines = [f"{name}: {src.title}", item("obtain", src.obtain), item("files", "; ".join(src.files)),
             "  layout:    " + src.layout.strip().replace("\n", "\n" + " " * 13), item("licence", src.licence),
             item("size", src.size), item("checksums", src.checksums)]
    return "\n".join(lines)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(name: str, src: DatasetSource | None, root: Path) -> list[str]:
    """Check --root against the source before converting; raises DataError (one line) on a missing part or a
    checksum mismatch; returns what was verified, for the report."""
    root = Path(root)
    if src is None:
        return []
    if not root.is_dir():
        raise DataError(f"--root {root}: no such folder; see `shala-bench data prepare {name} --help` for what to "
                        "download and how to lay it out")
    missing = [pat for pat in src.required if not any(root.glob(pat))]
    if missing:
        raise DataError(f"{name}: nothing under {root} matches {', '.join(missing)}; expected layout: "
                        f"{' '.join(src.layout.split())} (see `shala-bench data prepare {name} --help`)")
    done = [f"layout: {len(src.required)} required part(s) present"] if src.required else []
    if src.checksum_list and (root / src.checksum_list).is_file():
        checked = 0
        for line in (root / src.checksum_list).read_text().splitlines():
            parts = line.split()
            if len(parts) != 2:
                continue
            digest, rel = parts[0].lower(), parts[1].lstrip("*")
            if not any(Path(rel).match(g) for g in src.checksum_globs):
                continue
            path = root / rel
            if not path.is_file():
                continue
            if _sha256(path) != digest:
                raise DataError(f"{name}: {path} does not match its sha256 in {src.checksum_list} (a partial or "
                                "corrupt download): download it again")
            checked += 1
        done.append(f"checksums: {checked} file(s) match {src.checksum_list}")
    return done
