"""Whether a torch.save file is the one that was written: torch.load does not check it, zipfile does.

torch.save writes a zip archive with a CRC-32 of every entry; torch.load reads the tensors' bytes without
checking them, so a file damaged on disk or in transit (bytes flipped, not cut off) loads without a word and
trains on wrong weights or wrong images. Reading it once more through zipfile checks every entry.
"""
from __future__ import annotations

import os
import zipfile


def torch_file_damage(path: str | os.PathLike) -> str | None:
    """Why the torch.save file at path is damaged ("entry archive/data/3 fails its CRC-32", "not a zip
    archive"), or None when every entry is as written."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as e:
        return f"not a whole zip archive ({type(e).__name__})"
    except (OSError, RuntimeError) as e:  # RuntimeError: an entry zipfile cannot decompress
        return f"unreadable ({type(e).__name__})"
    return None if bad is None else f"entry {bad} fails its CRC-32"
