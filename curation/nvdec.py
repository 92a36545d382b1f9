"""Scene detection's source decode on the GPU's NVDEC engines, the frames kept on the GPU.

PySceneDetect's detectors read each source frame as BGR, downscaled so its longer side is about 256
pixels (``SceneManager``'s auto downscale, ``cv2.INTER_LINEAR``). On the CPU that costs a full decode,
a full-resolution YUV-to-BGR conversion and a resize per frame. :class:`NvdecVideoStream` decodes on
NVDEC through PyAV's CUDA hwaccel with ``is_hw_owned`` (PyAV >= 18: the NV12 surface stays in GPU
memory and reaches torch through DLPack), converts and downscales it there
(:func:`bgr_thumbnail`) and copies only the small BGR frame to the host: the CPU's share per frame
is PyAV's demux and the kernel launches.

The conversion and the resize repeat swscale's and OpenCV's integer arithmetic, so the detectors see
the frames they see on the CPU, bit for bit on every fixture video (``tests/curation/test_nvdec.py``).

An earlier version downloaded every full-resolution frame to the host and converted it there; on one
H100 node that cost 1.68x the CPU of the software decode (docs/benchmarks.md, "VAE part buckets ...;
scene detection on NVDEC measured, not taken"), which is why the frames now stay on the GPU.

Importing this module imports PyAV and PySceneDetect, not torch; the scene_split stage imports it only
when ``scene_split.nvdec`` is on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import av
import numpy as np
from av.codec.hwaccel import HWAccel
from scenedetect.backends.pyav import VideoStreamAv
from scenedetect.scene_manager import compute_downscale_factor

if TYPE_CHECKING:
    import torch

#: swscale's YUV-to-RGB coefficients (``ff_yuv2rgb_coeffs``: crv, cbu, cgu, cgv in 16.16 fixed point),
#: indexed like that table by the frame's FFmpeg ``AVColorSpace`` (what swscale reads from the frame);
#: BT.601 for the rest, unspecified included. Only BT.601 and BT.709 occur in the fixtures.
_SWS_COEFFS = {
    0: (117489, 138438, 13975, 34925),  # "no sequence_display_extension": BT.709's
    1: (117489, 138438, 13975, 34925),  # BT.709
    4: (104448, 132798, 24759, 53109),  # FCC
    7: (117579, 136230, 16907, 35559),  # SMPTE 240M
    9: (110013, 140363, 12277, 42626),  # BT.2020 non-constant luminance
    10: (110013, 140363, 12277, 42626),  # BT.2020 constant luminance
}
_BT601 = (104597, 132201, 25675, 53279)
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG


def _sws_coefficients(colorspace: int, color_range: int) -> tuple[int, int, int, int, int, int]:
    """``(y, vr, ub, vg, ug, y_offset)``: swscale's 16-bit multipliers of its SIMD ``yuv420 -> bgr24``
    path (``libswscale`` ``ff_yuv2rgb_c_init_tables``, default brightness, contrast and saturation)."""
    crv, cbu, cgu, cgv = _SWS_COEFFS.get(int(colorspace), _BT601)
    cgu, cgv = -cgu, -cgv
    cy, oy = 1 << 16, 0
    if int(color_range) != _FULL_RANGE:
        cy, oy = (cy * 255) // 219, 16 << 16
    else:
        crv, cbu, cgu, cgv = ((c * 224) // 255 for c in (crv, cbu, cgu, cgv))

    def to16(x: int) -> int:
        return (x + (1 << 15)) >> 16

    return to16(cy * 8192), to16(crv * 8192), to16(cbu * 8192), to16(cgv * 8192), to16(cgu * 8192), to16(oy * 8)


class NvdecUnavailable(RuntimeError):
    """This process cannot decode on NVDEC: no CUDA device, no CUDA torch, or an FFmpeg without CUDA."""


def thumbnail_size(width: int, height: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of the frames PySceneDetect's detectors see for a source of
    ``width x height``: ``SceneManager``'s auto downscale (longer side to about 256 px; sources
    narrower than that unchanged)."""
    factor = compute_downscale_factor(max(width, height))
    if factor <= 1.0:
        return width, height
    return max(1, round(width / factor)), max(1, round(height / factor))


def _linear_taps(src: int, dst: int, device) -> tuple[torch.Tensor, ...]:
    """OpenCV's ``INTER_LINEAR`` taps along one axis: source indices and 11-bit fixed-point weights
    (``resize.cpp``: ``fx = (dx + 0.5) * scale - 0.5``, clamped at the edges, each weight rounded
    from float32 on its own)."""
    import torch

    fx = (torch.arange(dst, dtype=torch.float64, device=device) + 0.5) * (1.0 / (dst / src)) - 0.5
    sx = torch.floor(fx)
    fx = (fx - sx).float()
    sx = sx.long()
    edge = (sx < 0) | (sx >= src - 1)
    fx = torch.where(edge, torch.zeros_like(fx), fx)
    sx = sx.clamp(0, src - 1)
    w0 = torch.round((1.0 - fx) * 2048.0).to(torch.int32)
    w1 = torch.round(fx * 2048.0).to(torch.int32)
    return sx, (sx + 1).clamp(max=src - 1), w0, w1


def _cv_resize_linear(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)`` for int32 ``[H, W, 3]`` values in
    0..255, in OpenCV's integer arithmetic: an exact 2x reduction is its area average; otherwise a
    horizontal pass with 11-bit weights, then the vertical pass of its SIMD kernel
    (``VResizeLinearVec_32s8u``) and, for the last ``(w * 3) % 8`` values of a row, its scalar one.
    Bit-exact where a row's ``w * 3`` values are a multiple of 8 (every landscape thumbnail, 256 wide,
    and every fixture video's); elsewhere OpenCV's blocks differ and values may be 1 level apart
    (under 1% of them in the test)."""
    h_in, w_in, _ = img.shape
    w, h = size
    if w_in == 2 * w and h_in == 2 * h:
        return (img[0::2, 0::2] + img[0::2, 1::2] + img[1::2, 0::2] + img[1::2, 1::2] + 2) >> 2
    sx0, sx1, a0, a1 = _linear_taps(w_in, w, img.device)
    sy0, sy1, b0, b1 = _linear_taps(h_in, h, img.device)
    rows = img[:, sx0] * a0[None, :, None] + img[:, sx1] * a1[None, :, None]  # [H_in, w, 3], weights sum 2048
    s0, s1 = rows[sy0], rows[sy1]
    b0, b1 = b0[:, None, None], b1[:, None, None]
    out = ((((s0 >> 4) * b0) >> 16) + (((s1 >> 4) * b1) >> 16) + 2) >> 2
    tail = (w * 3) % 8
    if tail:
        scalar = (s0 * b0 + s1 * b1 + (1 << 21)) >> 22
        flat_out, flat_scalar = out.reshape(h, -1), scalar.reshape(h, -1)
        flat_out[:, -tail:] = flat_scalar[:, -tail:]
    return out.clamp_(0, 255)


def bgr_thumbnail(y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, size: tuple[int, int],
                  colorspace: int = 2, color_range: int = 0) -> torch.Tensor:
    """One 4:2:0 frame to the downscaled BGR frame PySceneDetect's detectors read, in the integer
    arithmetic of the libraries that make it on the CPU.

    The conversion is swscale's (its SIMD ``yuv420p -> bgr24`` path: samples times 8, 16-bit
    multiply-high, nearest chroma), the resize OpenCV's ``INTER_LINEAR`` (:func:`_cv_resize_linear`).
    On every frame of the 16 fixture videos checked the result equals PyAV's ``to_ndarray("bgr24")``
    followed by ``cv2.resize`` bit for bit (FFmpeg of PyAV 18.1's wheel, OpenCV 5.1).

    Args:
        y: uint8 ``[H, W]`` luma (any device, any strides).
        u, v: uint8 ``[ceil(H/2), ceil(W/2)]`` chroma (or ``H // 2`` x ``W // 2``: NV12 of odd sizes through
            PyAV's DLPack export).
        size: ``(width, height)`` of the result in pixels (:func:`thumbnail_size`).
        colorspace: the frame's FFmpeg ``AVColorSpace`` (``frame.colorspace``).
        color_range: the frame's ``AVColorRange``: 2 is full range, anything else limited (16-235).

    Returns:
        uint8 ``[height, width, 3]`` BGR on ``y``'s device.

    Raises:
        ValueError: ``u`` / ``v`` are not 4:2:0 chroma of ``y`` (e.g. a 4:4:4 or 4:2:2 source).
    """
    import torch

    h, w = y.shape
    if u.shape != v.shape or u.shape[0] not in (h // 2, (h + 1) // 2) or u.shape[1] not in (w // 2, (w + 1) // 2):
        raise ValueError(f"4:2:0 chroma expected for luma {h}x{w}, got {tuple(u.shape)} and {tuple(v.shape)}")
    cy, vr, ub, vg, ug, y_off = _sws_coefficients(colorspace, color_range)

    def up(c: torch.Tensor) -> torch.Tensor:  # nearest 2x chroma, cut or edge-padded to the luma's size
        c = c.repeat_interleave(2, 0).repeat_interleave(2, 1)
        if c.shape[0] < h:
            c = torch.cat([c, c[-1:].expand(h - c.shape[0], -1)])
        if c.shape[1] < w:
            c = torch.cat([c, c[:, -1:].expand(-1, w - c.shape[1])], dim=1)
        return c[:h, :w]

    luma = (((y.to(torch.int32) << 3) - y_off) * cy) >> 16
    cu, cv = (u.to(torch.int32) << 3) - 1024, (v.to(torch.int32) << 3) - 1024
    b = luma + up((cu * ub) >> 16)
    g = luma + up(((cu * ug) >> 16) + ((cv * vg) >> 16))
    r = luma + up((cv * vr) >> 16)
    bgr = torch.stack([b, g, r], dim=-1).clamp_(0, 255)
    if (w, h) != tuple(size):
        bgr = _cv_resize_linear(bgr, size)
    return bgr.to(torch.uint8)


def cuda_hwaccel() -> HWAccel:
    """PyAV's CUDA hwaccel settings: the primary CUDA context (shared with torch's instead of one per
    open), decoded frames left on the GPU, software decode for codecs NVDEC lacks."""
    return HWAccel("cuda", allow_software_fallback=True, is_hw_owned=True, options={"primary_ctx": "1"})


class NvdecVideoStream(VideoStreamAv):
    """PySceneDetect's PyAV video stream decoding on NVDEC and handing out thumbnails.

    ``read()`` returns uint8 ``[h, w, 3]`` BGR frames already downscaled to :func:`thumbnail_size`
    (and ``frame_size`` reports that size), so the ``SceneManager`` that reads it must not downscale
    again: :func:`vividhead.curation.stages.scene_split.detect_shots` sets ``auto_downscale`` off.
    Frames that FFmpeg decoded in software (a codec NVDEC lacks) take PySceneDetect's own path
    (``to_ndarray("bgr24")`` and ``cv2.resize``).

    Args:
        path: a local video file.
        threading_mode: PyAV ``thread_type`` for a software fallback (``"NONE"``: one thread).
        device: ``"cuda"`` (NVDEC) or ``"cpu"``: the software decode with the same conversion on the
            CPU's planes, which tests the thumbnails on machines without a GPU.

    Raises:
        NvdecUnavailable: ``device`` is CUDA and this process has no CUDA device, a torch without
            CUDA, or PyAV cannot open the CUDA hwaccel (the file is fine; the machine is not).
        OSError, scenedetect.VideoOpenFailure: the file cannot be opened at all (as the base class).
    """

    def __init__(self, path: str | Path, threading_mode: Optional[str] = None, device: str = "cuda") -> None:
        super().__init__(str(path), threading_mode=threading_mode)  # opens in software: rate, duration, size
        self._device = device
        self._thread_type = threading_mode
        self._size = thumbnail_size(*super().frame_size)
        if device != "cpu":
            import torch

            if not torch.cuda.is_available():
                self._container.close()
                raise NvdecUnavailable("torch sees no CUDA device")
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

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(width, height)`` of the frames ``read()`` returns (the thumbnail size)."""
        return self._size

    def read(self, decode: bool = True) -> np.ndarray | bool:
        """The next frame as a uint8 ``[h, w, 3]`` BGR thumbnail, ``True`` when ``decode`` is off,
        ``False`` at the end (PySceneDetect's ``VideoStream.read`` contract)."""
        got = super().read(decode=False)
        if got is False or not decode:
            return got
        return self._thumbnail(self._frame)

    def _thumbnail(self, frame: av.VideoFrame) -> np.ndarray:
        import torch

        name = frame.format.name
        if name == "cuda" or (self._device == "cpu" and name in ("yuv420p", "yuvj420p", "nv12")):
            planes = [torch.from_dlpack(p) for p in frame.planes]
            if len(planes) == 2:  # NV12 (P010 / P016: the high byte of each 16-bit sample)
                y, uv = planes
                if y.dtype != torch.uint8:  # torch has no shifts on uint16
                    y, uv = ((t.to(torch.int32) >> 8).to(torch.uint8) for t in (y, uv))
                u, v = uv[..., 0], uv[..., 1]
            else:
                y, u, v = planes
            full = 2 if name == "yuvj420p" else frame.color_range
            out = bgr_thumbnail(y, u, v, self._size, frame.colorspace, full)
            return out.cpu().numpy()
        import cv2

        bgr = frame.to_ndarray(format="bgr24")
        if (bgr.shape[1], bgr.shape[0]) != self._size:
            bgr = cv2.resize(bgr, self._size, interpolation=cv2.INTER_LINEAR)
        return bgr

    def reset(self) -> None:
        """Close and re-open (on NVDEC when ``device`` is CUDA; the base class re-opens in software)."""
        if self._device == "cpu":
            super().reset()
            return
        self._container.close()
        self._frame = None
        self._decoder = None
        self._container = self._open_nvdec()


__all__ = ["NvdecUnavailable", "NvdecVideoStream", "bgr_thumbnail", "cuda_hwaccel", "thumbnail_size"]
