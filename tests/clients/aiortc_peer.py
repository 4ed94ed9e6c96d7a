"""One aiortc client in a Convoy call with someone else (tests/tests/chromium.rs: a Chromium page).

The caller has already allocated the session: this script only joins over WHIP with the given join
token, using the client of aiortc_call.py. Once connected it waits for the line `start` on stdin,
then plays its WAV file (a sine tone) once and records what it receives from that moment on, for
the length of the tone plus `--tail` seconds, to `--out`.

stdout carries one JSON object per line:
  {"event": "connected"}  the peer connection is up (silence is being sent)
  {"event": "started"}    the tone starts, and the recording with it
  {"event": "done", ...}  the tone was sent and the recording written; the client left
Anything else goes to stderr.
"""

import argparse
import asyncio

import aiohttp

from aiortc_call import RATE, Client, emit, log, read_line  # also keeps aioice on 127.0.0.1


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--whip-url", required=True)
    ap.add_argument("--join-token", required=True)
    ap.add_argument("--wav", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="aiortc")
    ap.add_argument("--tail", type=float, default=1.0, help="seconds recorded after the tone ends")
    args = ap.parse_args()

    async with aiohttp.ClientSession() as http:
        me = Client(args.name, None, http)
        start = asyncio.Event()
        alloc = {"join_token": args.join_token, "candidates": [{"whip_url": args.whip_url}]}
        await me.join(alloc, args.wav, start)
        await asyncio.wait_for(asyncio.gather(me.connected.wait(), me.got_track.wait()), timeout=20)
        emit({"event": "connected"})

        line = await read_line()
        if line != "start":
            raise RuntimeError(f"expected 'start' on stdin, got {line!r}")
        # Only what arrives from now on counts.
        me.received = []
        start.set()
        emit({"event": "started"})
        await asyncio.wait_for(me.track.done.wait(), timeout=60)
        # Keep recording a little longer: late packets still count.
        await asyncio.sleep(args.tail)
        me.recording = False
        sent = len(me.track.samples) / RATE
        recorded = me.save(args.out)
        await me.leave()
        log(args.name, "left")
        emit({"event": "done", "sent_seconds": sent, "recorded_seconds": recorded})


if __name__ == "__main__":
    asyncio.run(main())
