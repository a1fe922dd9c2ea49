"""Keep the four development environments small on disk by hard-linking what they share.

Every environment installs the same torch wheel (and often the same sympy, playwright, ...), about 0.8 GB
each; CI machines with little free disk ran out while the fourth one installed. Two steps, both stdlib only:

  seed SRC DST DIST...   before pip runs in DST: link the installed files of DIST (from its RECORD) from SRC's
                         site-packages into DST's, so pip finds DIST already installed at that version and
                         skips it. Same Python, same wheel: the files are the ones pip would have written.
  dedupe SRC DST         after pip: replace every file in DST's site-packages that is byte-identical to the
                         file at the same path in SRC's by a hard link to it.

Hard links are safe here: pip and Python replace files (unlink, write new) rather than write into them. Where
the file system refuses a link, the copy stays as it is.
"""

from __future__ import annotations

import csv
import filecmp
import os
import sys
from pathlib import Path


def site_packages(venv: Path) -> Path:
    found = sorted((venv / "lib").glob("python3*/site-packages"))
    if not found:
        raise SystemExit(f"no site-packages under {venv}")
    return found[0]


def _link(src: Path, dst: Path) -> bool:
    tmp = dst.with_name(dst.name + ".llmcond-link")
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False


def _dist_info(site: Path, dist: str) -> Path:
    norm = dist.lower().replace("-", "_")
    for info in site.glob("*.dist-info"):
        if info.name.lower().split("-")[0] == norm:
            return info
    raise SystemExit(f"{dist} is not installed in {site}")


def seed(src_venv: Path, dst_venv: Path, dists: list[str]) -> int:
    """Link DISTS' installed files from SRC into DST (skipping console scripts outside site-packages)."""
    src, dst = site_packages(src_venv), site_packages(dst_venv)
    linked = 0
    for dist in dists:
        info = _dist_info(src, dist)
        with (info / "RECORD").open(newline="") as f:
            paths = [row[0] for row in csv.reader(f) if row]
        for rel in paths:
            if rel.startswith(".."):
                continue
            source, target = src / rel, dst / rel
            if not source.is_file() or target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                target.write_bytes(source.read_bytes())
            linked += 1
    return linked


def dedupe(src_venv: Path, dst_venv: Path) -> int:
    """Hard-link DST's files that equal SRC's at the same path; returns the bytes saved."""
    src, dst = site_packages(src_venv), site_packages(dst_venv)
    saved = 0
    for root, _dirs, files in os.walk(dst):
        for name in files:
            target = Path(root) / name
            source = src / target.relative_to(dst)
            try:
                a, b = source.lstat(), target.lstat()
            except OSError:
                continue
            if a.st_ino == b.st_ino or a.st_size != b.st_size or not source.is_file() or target.is_symlink():
                continue
            if filecmp.cmp(source, target, shallow=False) and _link(source, target):
                saved += b.st_size
    return saved


def main(argv: list[str]) -> None:
    if len(argv) >= 3 and argv[0] == "seed":
        n = seed(Path(argv[1]), Path(argv[2]), argv[3:])
        print(f"{argv[2]}: {n} files of {' '.join(argv[3:])} linked from {argv[1]}")
    elif len(argv) == 3 and argv[0] == "dedupe":
        saved = dedupe(Path(argv[1]), Path(argv[2]))
        print(f"{argv[2]}: {saved / 2**20:.0f} MB shared with {argv[1]}")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
