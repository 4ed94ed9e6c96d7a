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

import aiohttp

from aiortc_call import Client, emit, log, read_line  # also keeps aioice on 127.0.0.1


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--whip-url", required=True)
    ap.add_argument("--join-token", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="listener")
    args = ap.parse_args()

    async with aiohttp.ClientSession() as http:
        me = Client(args.name, None, http)
        alloc = {"join_token": args.join_token, "candidates": [{"whip_url": args.whip_url}]}
        await me.join(alloc)
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
