"""Errors every part shares.

* :class:`MediaError` -- one input's media is bad; curation records it as a rejection, evaluation as
  a row with its error. Never a crash.
* :class:`UserError` -- an expected failure of a command (missing input, bad config, missing weights,
  no CUDA, no data); ``vividhead`` prints its message as one line and exits with code 2
  (:func:`vividhead.cli.main`; the traceback only with ``--debug`` or ``VIVIDHEAD_DEBUG=1``).
"""

from __future__ import annotations


class MediaError(Exception):
    """A problem with one input's media, recorded as data (``status=rejected``), not a crash.

    Attributes:
        reason: short reason code for the manifest (``unreadable``, ``ffmpeg_timeout``, ...).
        detail: one line of human-readable detail.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class UserError(Exception):
    """An expected failure of a command, stated as one line that names the input and what to do.

    The CLI prints ``error: <message>`` and exits with :attr:`exit_code` (2) without a traceback.
    """

    exit_code = 2


__all__ = ["MediaError", "UserError"]
