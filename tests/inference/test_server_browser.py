"""The demo page in a real headless Chromium: upload a reference image and an audio file, stream it,
and watch the chunks play (tiny random models; a screenshot is written).

Needs the ``playwright`` package and a Chromium binary (``apt-get install chromium`` on Debian; or
``VIVIDHEAD_CHROMIUM=/path``); skipped without them. ``VIVIDHEAD_SCREENSHOT=path.png`` keeps the
screenshot."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading

import pytest
import soundfile as sf

from vividhead.inference.server import FlashHeadServer

CHROMIUM = os.environ.get("VIVIDHEAD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


class _ServerThread:
    """The server on a loopback port, its event loop in a thread."""

    def __init__(self, server: FlashHeadServer) -> None:
        self.server, self.port = server, None
        self._ready, self._stop = threading.Event(), None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._stop = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()
        async with self.server.listen("127.0.0.1", 0) as srv:
            self.port = srv.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(60), "server did not start"
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(30)
        self.server.close()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (apt-get install chromium)")
def test_demo_page_streams_in_chromium(tiny_pro_fast_vae, ref_image, image_dir, audio_dir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    speech, sr = sf.read(str(audio_dir / "speech_jfk_16k.wav"), dtype="float32")
    clip = tmp_path / "speech.wav"
    sf.write(str(clip), speech[: int(2.5 * sr)], sr)  # 2.5 s: 2 chunks of 28 frames + a 7-frame flush
    shot = tmp_path / "demo.png"
    with _ServerThread(FlashHeadServer(tiny_pro_fast_vae, ref_image)) as srv, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--autoplay-policy=no-user-gesture-required", "--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            console = []
            page.on("console", lambda m: console.append(m.text))
            page.goto(f"http://127.0.0.1:{srv.port}/")
            page.wait_for_function("window.vividhead.ready !== null", timeout=60_000)
            assert page.evaluate("document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.64001e\"')")
            page.set_input_files("#imageFile", str(image_dir / "face_frontal_happy_256.png"))
            page.wait_for_function("document.getElementById('log').textContent.includes('reference set (256x256)')",
                                   timeout=60_000)
            page.set_input_files("#audioFile", str(clip))
            page.click("#streamFile")
            page.wait_for_function("document.getElementById('log').textContent.includes('flushed: 63 frames')",
                                   timeout=120_000)
            page.wait_for_function("window.vividhead.played >= 3", timeout=60_000)
            state = page.evaluate("""() => ({chunks: vividhead.chunks, frames: vividhead.frames,
                errors: vividhead.errors, latency: vividhead.lastLatencyMs,
                width: Math.max(v0.videoWidth, v1.videoWidth), height: Math.max(v0.videoHeight, v1.videoHeight)})""")
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert state["errors"] == [], (state, console)
    assert (state["chunks"], state["frames"]) == (3, 63)
    assert (state["width"], state["height"]) == (32, 32)  # the tiny model's frames, decoded by Chromium
    assert state["latency"] is not None and state["latency"] >= 0
    assert shot.stat().st_size > 10_000
    if os.environ.get("VIVIDHEAD_SCREENSHOT"):
        shutil.copy(shot, os.environ["VIVIDHEAD_SCREENSHOT"])
