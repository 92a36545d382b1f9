"""``vividhead curate`` without ``--verbose`` drops Ray's routine notices ("Progress bars disabled",
"Token authentication is enabled") and nothing else."""

from __future__ import annotations

import logging

from vividhead.curation.ray_adapter import RAY_NOTICES, quiet_ray_notices


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_quiet_ray_notices_drops_only_the_routine_lines():
    quiet_ray_notices()
    quiet_ray_notices()  # installed once
    for name, start in RAY_NOTICES:
        logger = logging.getLogger(name)
        handler = _Collect()
        logger.addHandler(handler)
        try:
            logger.warning(f"{start}. To enable, set ...")
            logger.warning("a real warning")
        finally:
            logger.removeHandler(handler)
        assert handler.messages == ["a real warning"]
        assert len(logger.filters) == 1
