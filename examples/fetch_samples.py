"""Fetch the public sample clips listed in ``examples/samples.csv`` into a folder, checking SHA-256.

Offline, files are taken from ``$VIVIDHEAD_SAMPLES_DIR`` (same names) when their checksum matches.

    python examples/fetch_samples.py out/samples
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

LIST = Path(__file__).with_name("samples.csv")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(dest: Path) -> int:
    """Place every sample in ``dest``; returns the number of samples that could not be fetched."""
    dest.mkdir(parents=True, exist_ok=True)
    local = Path(os.environ["VIVIDHEAD_SAMPLES_DIR"]) if os.environ.get("VIVIDHEAD_SAMPLES_DIR") else None
    failed = 0
    with open(LIST, newline="") as f:
        for rec in csv.DictReader(f):
            target = dest / rec["name"]
            if target.exists() and sha256(target) == rec["sha256"]:
                continue
            if local and (local / rec["name"]).is_file() and sha256(local / rec["name"]) == rec["sha256"]:
                shutil.copyfile(local / rec["name"], target)
                continue
            try:
                fd, tmp = tempfile.mkstemp(dir=dest, prefix=".part-")
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(rec["url"], timeout=60) as resp:
                    shutil.copyfileobj(resp, out)
                if sha256(Path(tmp)) != rec["sha256"]:
                    raise ValueError("checksum mismatch")
                os.replace(tmp, target)
            except Exception as exc:  # report and go on: the curation job handles what is there
                failed += 1
                print(f"sample {rec['name']}: not fetched ({type(exc).__name__}: {exc}); "
                      "set VIVIDHEAD_SAMPLES_DIR to a folder holding it", file=sys.stderr)
                if os.path.exists(tmp):
                    os.unlink(tmp)
    return failed


if __name__ == "__main__":
    sys.exit(1 if fetch(Path(sys.argv[1] if len(sys.argv) > 1 else "out/samples")) else 0)
