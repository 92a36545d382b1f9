"""Video decoding on the GPU's NVDEC engines through PyAV's CUDA hwaccel, for scene detection.

PyAV's wheels (>= 14) carry an FFmpeg built with the ``cuda`` hwaccel and the NVDEC decoders, and load
``libcuda`` at run time: a GPU node decodes a source's H.264 / HEVC / VP9 / AV1 frames on NVDEC
instead of its CPUs, and FFmpeg downloads each frame to host memory (NV12), where PySceneDetect's
detectors read it as before. A codec NVDEC cannot decode falls back to FFmpeg's software decoder
(``allow_software_fallback``). H.264 and HEVC decoding is bit-exact by their standards, so the
detectors see the pixels of the software decode; the frame conversion to BGR (from NV12 instead of
planar YUV) may round differently, which ``benchmarks/scene_decode_gpu.py`` checks on real videos.

Importing this module imports PyAV and PySceneDetect; the scene_split stage imports it only when
``scene_split.nvdec`` is on.
"""

from __future__ import annotations

from pathlib import Path

import av
from av.codec.hwaccel import HWAccel
from scenedetect.backends.pyav import VideoStreamAv


class NvdecUnavailable(RuntimeError):
    """This process cannot open a CUDA device for NVDEC (no GPU, no driver, or a CPU-only FFmpeg)."""


def cuda_hwaccel() -> HWAccel:
    """PyAV's CUDA hwaccel settings: the primary CUDA context (``primary_ctx``: every open shares
    the process's context instead of creating one, about 0.1-0.3 s each), frames downloaded to host
    memory, software decode for codecs NVDEC lacks."""
    return HWAccel("cuda", allow_software_fallback=True, options={"primary_ctx": "1"})


class NvdecVideoStream(VideoStreamAv):
    """PySceneDetect's PyAV video stream (``scenedetect.backends.pyav.VideoStreamAv``) with the decode
    on NVDEC: the container is opened with :func:`cuda_hwaccel`; frames come out as uint8
    ``[H, W, 3]`` BGR like the base class's.

    Args:
        path: a local video file.
        threading_mode: PyAV ``thread_type`` for the software fallback (``"NONE"``, ``"SLICE"``, ...;
            ``None``: FFmpeg's default).

    Raises:
        NvdecUnavailable: the CUDA device cannot be opened in this process while the file opens in
            software (the file is fine; the machine has no usable NVDEC).
        OSError, scenedetect.VideoOpenFailure: the file cannot be opened at all (as the base class).
    """

    def __init__(self, path: str | Path, threading_mode: str | None = None) -> None:
        super().__init__(str(path), threading_mode=threading_mode)  # opens in software: reads the rate, duration
        self._thread_type = threading_mode
        self._container.close()
        self._container = self._open_nvdec()

    def _open_nvdec(self):
        try:
            container = av.open(self._path, hwaccel=cuda_hwaccel())
        except (OSError, av.error.FFmpegError) as exc:  # FFmpeg's EPERM / ENODEV when no CUDA device
            raise NvdecUnavailable(f"{type(exc).__name__}: {exc}"[:200]) from exc
        if self._thread_type:
            container.streams.video[0].thread_type = self._thread_type.upper()
        return container

    def reset(self) -> None:
        """Close and re-open on NVDEC (the base class re-opens in software)."""
        self._container.close()
        self._frame = None
        self._decoder = None
        self._container = self._open_nvdec()


__all__ = ["NvdecUnavailable", "NvdecVideoStream", "cuda_hwaccel"]
