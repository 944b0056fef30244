"""An image-folder dataset as one gzipped tar for the trip to the GPU machine, and back into its folders there.

    python scripts/dataset_archive.py pack ../shared/datasets/cifar10-jpeg datasets/cifar10-jpeg.tar.gz
    python scripts/dataset_archive.py unpack datasets/cifar10-jpeg.tar.gz datasets/cifar10-jpeg
    python scripts/dataset_archive.py fresh ../shared/datasets/cifar10-jpeg datasets/cifar10-jpeg.tar.gz

Why: what travels to the device is at most 64 MiB, and the CIFAR-10 copy's folders take 52.7 MiB of it. All
60,000 of its JPEGs begin with the same 623 bytes (quantisation and Huffman tables), two thirds of those bytes;
gzip's window holds the previous images, so it stores that header about once rather than 60,000 times and the
archive is 19 MiB. The files come back byte for byte (modification times to the microsecond); gzip's CRC makes a
corrupt or cut-short archive an error, never a partial dataset. Beside the archive, ARCHIVE.source records what it
was packed from (every file's path, size and modification time, as one digest), so `fresh` tells whether the
source folder has changed since and the archive must be made again.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
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


def _files(source: Path) -> list[Path]:
    return sorted(p for p in source.rglob("*") if p.is_file())


def source_signature(source: Path, files: list[Path] | None = None) -> dict:
    """What an archive of source holds, without reading the files: their number, bytes and one digest of every
    relative path, size and modification time (a changed, added, removed or renamed file changes the digest)."""
    files = _files(source) if files is None else files
    digest, total = hashlib.sha256(), 0
    for path in files:
        st = path.stat()
        total += st.st_size
        digest.update(f"{path.relative_to(source).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"files": len(files), "bytes": total, "sha256": digest.hexdigest()}


def _signature_path(archive: Path) -> Path:
    return archive.with_name(archive.name + ".source")


def _write_atomically(path: Path, data: bytes) -> None:
    # Temporary file, then rename; stdlib only (not experiments.run_files), since device_bundle.sh runs this with a
    # bare python3.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pack(source: Path, archive: Path) -> int:
    """Writes every file under source (relative paths, sorted) to archive, and its signature to ARCHIVE.source;
    returns the number of files."""
    files = _files(source)
    if not files:
        raise SystemExit(f"error: no files under {source}; give the dataset's folder (with train/ and test/)")
    signature = source_signature(source, files)
    raw = io.BytesIO()  # 19 MiB for CIFAR-10: built in memory, then written whole (temporary file, rename)
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False, filter=_normalised)
    # The signature is written after the archive: an archive without one, or with an older one, is never fresh.
    _signature_path(archive).unlink(missing_ok=True)
    _write_atomically(archive, raw.getvalue())
    _write_atomically(_signature_path(archive), (json.dumps(signature, indent=1) + "\n").encode())
    return len(files)


def stale_reason(source: Path, archive: Path) -> str | None:
    """None when archive was packed from source as it is now; otherwise why it must be packed again."""
    if not archive.is_file():
        return f"no archive at {archive}"
    try:
        recorded = json.loads(_signature_path(archive).read_text())
    except (OSError, ValueError):
        return f"{archive} has no readable record of its source ({_signature_path(archive).name})"
    now = source_signature(source)
    if recorded != now:
        return (f"{source} has changed since {archive} was packed ({recorded.get('files')} files, "
                f"{recorded.get('bytes')} bytes then; {now['files']} files, {now['bytes']} bytes now)")
    return None


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
    f = sub.add_parser("fresh", help="exit 0 when the archive was packed from the folder as it is now, else 1")
    f.add_argument("source", type=Path)
    f.add_argument("archive", type=Path)
    args = parser.parse_args(argv)
    if args.command == "fresh":
        reason = stale_reason(args.source, args.archive)
        print(f"{args.archive}: up to date with {args.source}" if reason is None else f"stale: {reason}")
        raise SystemExit(0 if reason is None else 1)
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
