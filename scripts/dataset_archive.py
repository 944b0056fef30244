"""An image-folder dataset as one gzipped tar for the trip to the GPU machine, and back into its folders there.

    python scripts/dataset_archive.py pack ../shared/datasets/cifar10-jpeg datasets/cifar10-jpeg.tar.gz
    python scripts/dataset_archive.py unpack datasets/cifar10-jpeg.tar.gz datasets/cifar10-jpeg

Why: what travels to the device is at most 64 MiB, and the CIFAR-10 copy's folders take 52.7 MiB of it. All
60,000 of its JPEGs begin with the same 623 bytes (quantisation and Huffman tables), two thirds of those bytes;
gzip's window holds the previous images, so it stores that header about once rather than 60,000 times and the
archive is 19 MiB. The files come back byte for byte (modification times to the microsecond); gzip's CRC makes a
corrupt or cut-short archive an error, never a partial dataset.
"""
from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """No owner names or ids of this machine in the archive."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack(source: Path, archive: Path) -> int:
    """Writes every file under source (relative paths, sorted) to archive; returns the number of files."""
    files = sorted(p for p in source.rglob("*") if p.is_file())
    if not files:
        raise SystemExit(f"error: no files under {source}; give the dataset's folder (with train/ and test/)")
    raw = io.BytesIO()  # 19 MiB for CIFAR-10: built in memory, then written whole (temporary file, rename)
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False, filter=_normalised)
    # Temporary file, then rename; stdlib only (not experiments.run_files), since device_bundle.sh runs this with a
    # bare python3.
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=archive.parent, prefix=f".{archive.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw.getvalue())
        os.chmod(tmp, 0o644)
        os.replace(tmp, archive)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(files)


def unpack(archive: Path, dest: Path) -> int:
    """Extracts archive into dest, whole or not at all: into a temporary folder beside dest, renamed at the end.
    Returns the number of files. GNU tar, not tarfile: on this project's CPU machines tarfile took 20 times as long
    for CIFAR-10's 60,000 files."""
    if dest.exists():
        raise SystemExit(f"error: {dest} exists; remove it to unpack {archive} again")
    if shutil.which("tar") is None:
        raise SystemExit("error: no tar on this machine's PATH; unpack the archive with any tar -xzf")
    tmp = dest.with_name(f".{dest.name}.unpacking-{os.getpid()}")
    tmp.mkdir(parents=True)
    proc = subprocess.run(["tar", "-xzf", str(archive), "-C", str(tmp), "--no-same-owner"], capture_output=True,
                          text=True)
    if proc.returncode != 0:  # gzip's CRC and length checks fail a corrupt or cut-short archive here
        shutil.rmtree(tmp, ignore_errors=True)
        detail = " ".join(proc.stderr.split())[-300:] or f"tar exited {proc.returncode}"
        raise SystemExit(f"error: {archive} cannot be unpacked ({detail}); make it again with "
                         "scripts/device_bundle.sh")
    count = sum(1 for p in tmp.rglob("*") if p.is_file())
    tmp.rename(dest)
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="a dataset folder into one .tar.gz")
    p.add_argument("source", type=Path)
    p.add_argument("archive", type=Path)
    u = sub.add_parser("unpack", help="a .tar.gz back into a dataset folder")
    u.add_argument("archive", type=Path)
    u.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        if not args.source.is_dir():
            raise SystemExit(f"error: {args.source} is not a folder; give the dataset's folder (with train/ and test/)")
        n = pack(args.source, args.archive)
        print(f"{args.archive}: {n} files, {args.archive.stat().st_size / 2**20:.1f} MiB")
    else:
        if not args.archive.is_file():
            raise SystemExit(f"error: no archive at {args.archive}; make it with scripts/device_bundle.sh")
        n = unpack(args.archive, args.dest)
        print(f"{args.dest}: {n} files from {args.archive}")


if __name__ == "__main__":
    main()
