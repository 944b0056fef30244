"""Which commit a copy of the repo without its git history is: a stamp made here, checked there.

The device tool sends a copy of the working tree to the GPU machine, and whatever `.git` arrives with
it is not the one here (a device run once recorded an older commit than the code that ran). So
scripts/device_bundle.sh writes a stamp of HEAD: the commit and the git blob hash of every file it
tracks. On the device, `check` hashes the same files the way git does and prints the commit when
every file is HEAD's, or the commit with "-dirty" when any differs (listed on stderr), as
experiments.run_info.git_commit() says of a checkout with uncommitted changes. scripts/device_check.sh
puts that in DNM_GIT_COMMIT, which every summary and benchmark file then records.

    python scripts/source_stamp.py write .whl/source_stamp.json     # here, in the git checkout
    python scripts/source_stamp.py check .whl/source_stamp.json     # there, in the copy
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path


def blob_hash(path: Path) -> str:
    """The object id git gives the file's content (sha1 of 'blob <size>\\0' + content)."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write(stamp: Path, root: Path) -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout

    files = {}
    for line in git("ls-tree", "-r", "HEAD").splitlines():
        meta, path = line.split("\t", 1)
        mode, kind, sha = meta.split()
        if kind == "blob" and mode != "120000":  # a symbolic link travels as a link; its target is not content
            files[path] = sha
    payload = {"commit": git("rev-parse", "HEAD").strip(), "files": files}
    # Its own atomic write, not experiments.run_files': device_bundle.sh runs this with a plain python3,
    # which need not have torch, and the device runs it before anything else.
    stamp.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_name(stamp.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=0, sort_keys=True))
    os.replace(tmp, stamp)
    return payload


def check(stamp: Path, root: Path) -> tuple[str, list[str]]:
    """(the commit, with -dirty unless every stamped file is there unchanged; the files that differ)."""
    payload = json.loads(stamp.read_text())
    differ = [path for path, sha in sorted(payload["files"].items())
              if not (root / path).is_file() or blob_hash(root / path) != sha]
    return payload["commit"] + ("-dirty" if differ else ""), differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("write", "check"))
    parser.add_argument("stamp", type=Path)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    if args.action == "write":
        try:
            payload = write(args.stamp, args.root)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"error: cannot read HEAD of {args.root} with git ({exc}); run this in the git checkout",
                  file=sys.stderr)
            return 2
        print(f"{args.stamp}: commit {payload['commit']}, {len(payload['files'])} files")
        return 0
    try:
        commit, differ = check(args.stamp, args.root)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot read the source stamp {args.stamp} ({exc}); make it with scripts/device_bundle.sh",
              file=sys.stderr)
        return 2
    if differ:
        shown = ", ".join(differ[:10]) + (f" and {len(differ) - 10} more" if len(differ) > 10 else "")
        print(f"warning: {len(differ)} files differ from the stamped commit ({shown}); results are recorded as "
              f"{commit} (run scripts/device_bundle.sh after committing to stamp the code that runs)",
              file=sys.stderr)
    print(commit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
