"""One aiortc client that only listens in a Convoy session (tests/tests/music.rs: the music).

The caller has already allocated the session: this script joins over WHIP with the given join
token, offering one receive-only audio m-line. Once connected it waits for the line `start` on
stdin, records what it receives from then on, and stops at the line `stop`: the recording (mono,
48 kHz) goes to `--out`.

stdout carries one JSON object per line:
  {"event": "connected"}  the peer connection is up and the node's track has arrived
  {"event": "started"}    recording from now on
  {"event": "done", ...}  the recording is written; the client left
Anything else goes to stderr.
"""

import argparse
import asyncio
import sys

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from aiortc_call import Client, emit, log  # also keeps aioice on 127.0.0.1


async def read_line():
    return (await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)).strip()


async def join(me, whip_url, join_token):
    me.pc = RTCPeerConnection()
    me.pc.addTransceiver("audio", direction="recvonly")

    @me.pc.on("connectionstatechange")
    def on_state():
        log(me.name, "connection", me.pc.connectionState)
        if me.pc.connectionState == "connected":
            me.connected.set()

    @me.pc.on("track")
    def on_track(track):
        me.got_track.set()
        asyncio.ensure_future(me.record(track))

    await me.pc.setLocalDescription(await me.pc.createOffer())
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {join_token}"}
    async with me.http.post(whip_url, data=me.pc.localDescription.sdp, headers=headers) as r:
        answer = await r.text()
        if r.status != 201:
            raise RuntimeError(f"{me.name}: WHIP POST -> {r.status} {answer}")
        location = r.headers["Location"]
    me.resource = location if location.startswith("http") else whip_url.split("/v1/")[0] + location
    await me.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--whip-url", required=True)
    ap.add_argument("--join-token", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="listener")
    args = ap.parse_args()

    async with aiohttp.ClientSession() as http:
        me = Client(args.name, None, http)
        await join(me, args.whip_url, args.join_token)
        await asyncio.wait_for(asyncio.gather(me.connected.wait(), me.got_track.wait()), timeout=20)
        emit({"event": "connected"})

        line = await read_line()
        if line != "start":
            raise RuntimeError(f"expected 'start' on stdin, got {line!r}")
        me.received = []
        emit({"event": "started"})
        line = await read_line()
        if line != "stop":
            raise RuntimeError(f"expected 'stop' on stdin, got {line!r}")
        me.recording = False
        recorded = me.save(args.out)
        await me.leave()
        log(args.name, "left")
        emit({"event": "done", "recorded_seconds": recorded})


if __name__ == "__main__":
    asyncio.run(main())
