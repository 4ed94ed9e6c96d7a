"""Two aiortc clients have a group voice call through Convoy, end to end.

Driven by the Rust end-to-end test (tests/tests/e2e.rs), which asserts on what this script records.
Each client signs up over the REST API; the first creates a group and an invite, the second accepts
it; both allocate the group's audio session and join it over WHIP. Once both peer connections are up,
each plays its own WAV file (a sine tone) and records what it receives to a WAV file.

stdout carries one JSON object per line:
  {"event": "connected", ...}  when both clients are connected and the tones start
  {"event": "done", ...}       at the end, with what was sent and where the recordings are
Anything else goes to stderr.
"""

import argparse
import asyncio
import fractions
import json
import sys
import time
import uuid
import wave

import aiohttp
import aioice.ice
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from av import AudioFrame

# aioice never offers loopback candidates; this machine's tests only talk over loopback.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

RATE = 48000
FRAME = 960  # 20 ms


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def emit(obj):
    print(json.dumps(obj), flush=True)


async def read_line():
    """The next line on stdin, without blocking the event loop."""
    return (await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)).strip()


class ToneTrack(MediaStreamTrack):
    """A microphone: silence until `start` is set, then the WAV file once, then silence."""

    kind = "audio"

    def __init__(self, wav_path, start):
        super().__init__()
        with wave.open(wav_path, "rb") as w:
            assert w.getframerate() == RATE and w.getsampwidth() == 2 and w.getnchannels() == 1
            self.samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        self.start = start
        self.done = asyncio.Event()
        self.pos = 0
        self.pts = 0
        self.t0 = None

    async def recv(self):
        # Real-time pacing, like a capture device.
        if self.t0 is None:
            self.t0 = time.monotonic()
        due = self.t0 + self.pts / RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = np.zeros(FRAME, dtype=np.int16)
        if self.start.is_set() and self.pos < len(self.samples):
            part = self.samples[self.pos : self.pos + FRAME]
            chunk[: len(part)] = part
            self.pos += FRAME
            if self.pos >= len(self.samples):
                self.done.set()
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, RATE)
        self.pts += FRAME
        return frame


class Client:
    def __init__(self, name, base, http):
        self.name = name
        self.base = base
        self.http = http
        self.token = None
        self.pc = None
        self.resource = None
        self.received = []
        self.connected = asyncio.Event()
        self.got_track = asyncio.Event()
        self.recording = True

    async def call(self, method, path, body=None, expect=(200, 201)):
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as r:
            data = await r.json(content_type=None)
            if r.status not in expect:
                raise RuntimeError(f"{self.name}: {method} {path} -> {r.status} {data}")
            return r.status, data

    async def register(self):
        tag = uuid.uuid4().hex[:8]
        _, data = await self.call(
            "POST",
            "/v1/auth/register",
            {"username": f"{self.name}_{tag}", "email": f"{self.name}.{tag}@example.com", "password": "correct horse battery"},
        )
        self.token = data["access_token"]

    async def join(self, alloc, wav_path=None, start=None):
        """Joins over WHIP: sending the WAV file from `start` on, or only listening without one."""
        self.pc = RTCPeerConnection()
        if wav_path is None:
            self.pc.addTransceiver("audio", direction="recvonly")
        else:
            self.track = ToneTrack(wav_path, start)
            self.pc.addTransceiver(self.track, direction="sendrecv")

        @self.pc.on("connectionstatechange")
        def on_state():
            log(self.name, "connection", self.pc.connectionState)
            if self.pc.connectionState == "connected":
                self.connected.set()

        @self.pc.on("track")
        def on_track(track):
            self.got_track.set()
            asyncio.ensure_future(self.record(track))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {alloc['join_token']}"}
        whip = alloc["candidates"][0]["whip_url"]
        async with self.http.post(whip, data=self.pc.localDescription.sdp, headers=headers) as r:
            answer = await r.text()
            if r.status != 201:
                raise RuntimeError(f"{self.name}: WHIP POST -> {r.status} {answer}")
            location = r.headers["Location"]
        self.resource = location if location.startswith("http") else whip.split("/v1/")[0] + location
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def record(self, track):
        while self.recording:
            try:
                frame = await track.recv()
            except Exception:
                return
            pcm = frame.to_ndarray().reshape(-1)
            channels = len(frame.layout.channels)
            if channels > 1:
                pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
            if frame.sample_rate != RATE:
                raise RuntimeError(f"unexpected sample rate {frame.sample_rate}")
            self.received.append(pcm.astype(np.int16))

    def save(self, path):
        pcm = np.concatenate(self.received) if self.received else np.zeros(0, dtype=np.int16)
        with wave.open(path, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(pcm.tobytes())
        return len(pcm) / RATE

    async def leave(self):
        if self.resource:
            async with self.http.delete(self.resource) as r:
                log(self.name, "WHIP DELETE", r.status)
        await self.pc.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--wav-a", required=True)
    ap.add_argument("--wav-b", required=True)
    ap.add_argument("--out-a", required=True)
    ap.add_argument("--out-b", required=True)
    ap.add_argument("--tail", type=float, default=1.5, help="seconds recorded after the tones end")
    args = ap.parse_args()

    async with aiohttp.ClientSession() as http:
        a = Client("alice", args.base_url, http)
        b = Client("bob", args.base_url, http)
        await a.register()
        await b.register()
        _, group = await a.call("POST", "/v1/groups", {"name": "Road trip"})
        _, invite = await a.call("POST", f"/v1/groups/{group['id']}/invites")
        await b.call("POST", f"/v1/invites/{invite['code']}/accept")
        status_a, alloc_a = await a.call("POST", f"/v1/groups/{group['id']}/sessions", {"kind": "audio"})
        status_b, alloc_b = await b.call("POST", f"/v1/groups/{group['id']}/sessions", {"kind": "audio"})

        start = asyncio.Event()
        await a.join(alloc_a, args.wav_a, start)
        await b.join(alloc_b, args.wav_b, start)
        await asyncio.wait_for(
            asyncio.gather(a.connected.wait(), b.connected.wait(), a.got_track.wait(), b.got_track.wait()),
            timeout=20,
        )
        start.set()
        emit(
            {
                "event": "connected",
                "group_id": group["id"],
                "session_a": alloc_a["session"],
                "session_b": alloc_b["session"],
                "status_a": status_a,
                "status_b": status_b,
                "whip_url": alloc_a["candidates"][0]["whip_url"],
                "used_join_token": alloc_a["join_token"],
            }
        )
        await asyncio.wait_for(asyncio.gather(a.track.done.wait(), b.track.done.wait()), timeout=60)
        # Keep recording a little longer: late packets still count, and silence must follow.
        await asyncio.sleep(args.tail)
        a.recording = b.recording = False
        sent = len(a.track.samples) / RATE
        rec_a = a.save(args.out_a)
        rec_b = b.save(args.out_b)
        await a.leave()
        await b.leave()
        emit({"event": "done", "sent_seconds": sent, "recorded_seconds": {"a": rec_a, "b": rec_b}})


if __name__ == "__main__":
    asyncio.run(main())
