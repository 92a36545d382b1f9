"""Keep foreign native log lines (MediaPipe's LiteRT ``INFO: [...]`` lines, absl's "Logging before
InitGoogle()" notice and its tensor-alignment warning) off the terminal unless ``--verbose``.

These lines are written by C++ straight to file descriptor 2, so neither Python's ``logging`` nor
environment variables (``GLOG_minloglevel``, ``TF_CPP_MIN_LOG_LEVEL`` were tried: no effect on
mediapipe 1.2.2) reach them. :func:`native_log_filter` sends descriptor 2 to a temporary file while
the face detector is created, runs and is closed, then writes back every line that is not such
noise: real errors and warnings still show, once the block ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

#: Lines dropped unless verbose: LiteRT's INFO lines, absl INFO lines, absl's pre-InitGoogle notice,
#: and LiteRT's "input tensor memory is not aligned ... copying data" warning.
NOISE = re.compile(
    r"^(INFO: |WARNING: Logging before InitGoogle\(\)|I\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+\] "
    r"|W\d{4} \d\d:\d\d:[\d.]+ +\d+ inference_runner_litert\.cc:\d+\] Input tensor memory is not aligned)"
)

_verbose = False


def set_verbose(verbose: bool) -> None:
    """``--verbose``: let every native line through (also ``VIVIDHEAD_VERBOSE=1``)."""
    global _verbose
    _verbose = bool(verbose)


def verbose() -> bool:
    """True with ``--verbose`` or ``VIVIDHEAD_VERBOSE`` set to anything but ``0`` / empty."""
    return _verbose or os.environ.get("VIVIDHEAD_VERBOSE", "0") not in ("", "0")


@contextlib.contextmanager
def native_log_filter() -> Iterator[None]:
    """Drop :data:`NOISE` lines written to descriptor 2 inside the block (nothing when verbose)."""
    if verbose():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 (embedded interpreters): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
