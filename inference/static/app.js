// vividhead demo page: the WebSocket protocol of inference/server.py in a browser.
//
// Sends s16le mono PCM at the server's sample rate (an uploaded file, paced at real time, or the
// microphone), receives {"type": "video", index, first_frame, frames} + one MP4 per chunk and plays
// the chunks back to back on two <video> elements (one shows while the next loads). With "play the
// audio", the PCM of frames [first_frame, first_frame + frames) starts with the chunk's video, so
// lips and voice stay together whatever the latency. window.vividhead exposes the state for tests.
"use strict";

const $ = (id) => document.getElementById(id);
const S = {
  ws: null, ready: null, sent: [], sentSamples: 0, sendTimes: [],  // sendTimes: [sampleEnd, ms]
  queue: [], pendingMeta: null, front: 0, playing: false,
  chunks: 0, frames: 0, firstArrival: null, lastLatencyMs: null, played: 0, errors: [],
  audioCtx: null, mic: null, streaming: false,
};
window.vividhead = S;

function log(text, cls) {
  const line = document.createElement("div");
  if (cls) line.className = cls;
  line.textContent = new Date().toISOString().slice(11, 23) + " " + text;
  $("log").appendChild(line);
  $("log").scrollTop = $("log").scrollHeight;
}

function setEnabled(on) {
  for (const id of ["streamFile", "micStart", "flush", "reset"]) $(id).disabled = !on;
}

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  S.ws = ws;
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onJson(JSON.parse(ev.data)) : onVideo(ev.data));
  ws.onclose = (ev) => { setEnabled(false); $("status").textContent = `closed (${ev.code} ${ev.reason})`; };
  ws.onerror = () => log("websocket error", "error");
}

function onJson(msg) {
  switch (msg.type) {
    case "ready":
      S.ready = msg;
      $("status").textContent = `ready: ${msg.width}x${msg.height} @ ${msg.fps} fps, audio ${msg.sample_rate} Hz`;
      setEnabled(true);
      break;
    case "video":
      S.pendingMeta = msg;
      break;
    case "error":
      S.errors.push(msg.message);
      log("error: " + msg.message, "error");
      if (msg.reason === "server_full") $("status").textContent = "refused: " + msg.message;
      break;
    case "reference":
      log(`reference set (${msg.width}x${msg.height}); the stream starts again`);
      restartTimeline();
      break;
    case "reset":
      log("reset");
      restartTimeline();
      break;
    case "flushed":
      log(`flushed: ${msg.frames_total} frames in all`);
      break;
    default:
      log("unknown message " + JSON.stringify(msg));
  }
}

function onVideo(buffer) {
  const meta = S.pendingMeta;
  S.pendingMeta = null;
  if (!meta) { log("video data without its header", "error"); return; }
  const now = performance.now();
  S.chunks += 1;
  S.frames += meta.frames;
  if (S.firstArrival === null) S.firstArrival = now;
  // latency: from sending the chunk's last audio sample to receiving its video
  const end = (meta.first_frame + meta.frames) * (S.ready.sample_rate / S.ready.fps);
  const sent = S.sendTimes.find((t) => t[0] >= end);
  if (sent) S.lastLatencyMs = now - sent[1];
  S.queue.push({ meta, url: URL.createObjectURL(new Blob([buffer], { type: "video/mp4" })) });
  updateStats();
  pump();
}

function updateStats() {
  const secs = S.firstArrival === null ? 0 : (performance.now() - S.firstArrival) / 1000;
  const lat = S.lastLatencyMs === null ? "-" : (S.lastLatencyMs / 1000).toFixed(2) + " s";
  $("stats").textContent = `chunks ${S.chunks}, frames ${S.frames}, played ${S.played}, ` +
    `${secs > 0 ? (S.frames / secs).toFixed(1) : "-"} fps received, chunk latency ${lat}`;
}

function restartTimeline() {
  S.sent = []; S.sentSamples = 0; S.sendTimes = []; S.queue = []; S.pendingMeta = null;
}

// Two <video> elements: the front one plays, the back one loads the next chunk.
function pump() {
  if (S.playing || S.queue.length === 0) return;
  const item = S.queue.shift();
  const video = $("v" + S.front);
  S.playing = true;
  video.onended = () => {
    URL.revokeObjectURL(item.url);
    S.played += 1;
    S.playing = false;
    updateStats();
    pump();
  };
  video.onerror = () => { log("cannot play chunk " + item.meta.index, "error"); video.onended(); };
  video.src = item.url;
  video.play().then(() => {
    $("v" + S.front).classList.add("front");
    $("v" + (1 - S.front)).classList.remove("front");
    S.front = 1 - S.front;
    playAudioFor(item.meta);
  }).catch((e) => { log("play failed: " + e, "error"); video.onended(); });
}

// The PCM that drove this chunk, played with its video.
function playAudioFor(meta) {
  if (!$("playAudio").checked || !S.ready) return;
  const spf = S.ready.sample_rate / S.ready.fps;
  const pcm = samplesBetween(meta.first_frame * spf, (meta.first_frame + meta.frames) * spf);
  if (!pcm) return;
  const ctx = audioContext();
  const buf = ctx.createBuffer(1, pcm.length, S.ready.sample_rate);
  buf.copyToChannel(pcm, 0);
  const src = ctx.createBufferSource();
  src.buffer = buf;
  src.connect(ctx.destination);
  src.start();
}

function samplesBetween(start, end) {
  if (end > S.sentSamples) end = S.sentSamples;
  if (end <= start) return null;
  const out = new Float32Array(end - start);
  let pos = 0;
  for (const block of S.sent) {
    const b0 = pos, b1 = pos + block.length;
    const lo = Math.max(start, b0), hi = Math.min(end, b1);
    if (hi > lo) out.set(block.subarray(lo - b0, hi - b0), lo - start);
    pos = b1;
    if (pos >= end) break;
  }
  return out;
}

function audioContext() {
  if (!S.audioCtx) S.audioCtx = new AudioContext({ sampleRate: S.ready.sample_rate });
  return S.audioCtx;
}

// Float32 [-1, 1] -> s16le, sent and remembered (for the playback above).
function sendPcm(float32) {
  const int16 = new Int16Array(float32.length);
  for (let i = 0; i < float32.length; i++) int16[i] = Math.max(-32768, Math.min(32767, Math.round(float32[i] * 32768)));
  S.ws.send(int16.buffer);
  S.sent.push(Float32Array.from(float32));
  S.sentSamples += float32.length;
  S.sendTimes.push([S.sentSamples, performance.now()]);
}

async function decodeTo16k(file) {
  const data = await file.arrayBuffer();
  const rate = S.ready.sample_rate;
  const tmp = new OfflineAudioContext(1, 1, rate);
  const decoded = await tmp.decodeAudioData(data);
  const off = new OfflineAudioContext(1, Math.ceil(decoded.duration * rate), rate);
  const src = off.createBufferSource();
  src.buffer = decoded;
  src.connect(off.destination);
  src.start();
  return (await off.startRendering()).getChannelData(0);  // mono mix-down, resampled
}

async function streamFile() {
  const file = $("audioFile").files[0];
  if (!file) { log("choose an audio file first", "error"); return; }
  const pcm = await decodeTo16k(file);
  log(`streaming ${file.name}: ${(pcm.length / S.ready.sample_rate).toFixed(2)} s at real-time pace`);
  const step = S.ready.sample_rate / 10;  // 100 ms pieces, paced by the clock
  const t0 = performance.now();
  S.streaming = true;
  for (let pos = 0; pos < pcm.length && S.ws.readyState === WebSocket.OPEN; pos += step) {
    sendPcm(pcm.subarray(pos, Math.min(pos + step, pcm.length)));
    const due = t0 + ((pos + step) / S.ready.sample_rate) * 1000;
    await new Promise((r) => setTimeout(r, Math.max(0, due - performance.now())));
  }
  S.streaming = false;
  S.ws.send(JSON.stringify({ type: "flush" }));
}

const WORKLET = `class Tap extends AudioWorkletProcessor {
  process(inputs) { const x = inputs[0][0]; if (x) this.port.postMessage(x.slice(0)); return true; }
}
registerProcessor("tap", Tap);`;

async function micStart() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
  const ctx = new AudioContext({ sampleRate: S.ready.sample_rate });  // the browser resamples the mic
  await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([WORKLET], { type: "text/javascript" })));
  const node = new AudioWorkletNode(ctx, "tap");
  let pending = [], n = 0;
  node.port.onmessage = (ev) => {  // 128-sample blocks, sent in ~100 ms pieces
    pending.push(ev.data); n += ev.data.length;
    if (n >= S.ready.sample_rate / 10) {
      const out = new Float32Array(n); let o = 0;
      for (const b of pending) { out.set(b, o); o += b.length; }
      pending = []; n = 0;
      sendPcm(out);
    }
  };
  ctx.createMediaStreamSource(stream).connect(node);
  S.mic = { stream, ctx };
  $("playAudio").checked = false;  // your own voice back is confusing
  $("micStop").disabled = false;
  log("microphone on");
}

function micStop() {
  if (!S.mic) return;
  S.mic.stream.getTracks().forEach((t) => t.stop());
  S.mic.ctx.close();
  S.mic = null;
  $("micStop").disabled = true;
  S.ws.send(JSON.stringify({ type: "flush" }));
  log("microphone off");
}

function sendImage() {
  const file = $("imageFile").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    $("refPreview").src = reader.result;
    S.ws.send(JSON.stringify({ type: "reference", image: reader.result }));  // data URL: base64 after the comma
  };
  reader.readAsDataURL(file);
}

$("imageFile").addEventListener("change", sendImage);
$("streamFile").addEventListener("click", () => streamFile().catch((e) => log("audio: " + e, "error")));
$("micStart").addEventListener("click", () => micStart().catch((e) => log("microphone: " + e, "error")));
$("micStop").addEventListener("click", micStop);
$("flush").addEventListener("click", () => S.ws.send(JSON.stringify({ type: "flush" })));
$("reset").addEventListener("click", () => S.ws.send(JSON.stringify({ type: "reset" })));
setInterval(updateStats, 1000);
connect();
