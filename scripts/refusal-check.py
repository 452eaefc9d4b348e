#!/usr/bin/env python3
"""Counts how aiohttp clients fare when the server refuses them: each refusal should arrive as an
HTTP answer, never as a transport error ("Can not write request body", a reset).

    pip install aiohttp
    virtualfit serve --bind 127.0.0.1:8000 --api-key s3cret --queue-capacity 1 --max-batch-size 1 &
    python3 scripts/refusal-check.py http://127.0.0.1:8000 assets/samples [--concurrency 30]

It sends the sample pairs, first with a wrong bearer token (401 before the body is read), then
with the right one at a concurrency that overflows the queue (some 429), and prints the answers
by status and the transport errors.
"""
import argparse
import asyncio
import collections
import pathlib

import aiohttp


async def one(session, url, person, cloth, token):
    form = aiohttp.FormData()
    form.add_field("person_image", person, filename="p.jpg", content_type="image/jpeg")
    form.add_field("cloth_image", cloth, filename="c.jpg", content_type="image/jpeg")
    try:
        async with session.post(url, data=form, headers={"authorization": f"Bearer {token}"}) as r:
            await r.read()
            return str(r.status)
    except aiohttp.ClientError as e:
        return f"transport error: {type(e).__name__}: {e}"


async def round_(url, pairs, token, concurrency):
    async with aiohttp.ClientSession() as session:
        jobs = [one(session, url, *pairs[i % len(pairs)], token) for i in range(concurrency)]
        return collections.Counter(await asyncio.gather(*jobs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("samples")
    ap.add_argument("--token", default="s3cret")
    ap.add_argument("--concurrency", type=int, default=30)
    args = ap.parse_args()
    root = pathlib.Path(args.samples)
    pairs = []
    for line in (root / "pairs.txt").read_text().split("\n"):
        if line.strip():
            p, c = line.split()
            pairs.append(((root / "person" / p).read_bytes(), (root / "cloth" / c).read_bytes()))
    url = args.base.rstrip("/") + "/tryon"
    for name, token in [("wrong token", "wrong"), ("right token", args.token)]:
        counts = asyncio.run(round_(url, pairs, token, args.concurrency))
        errors = sum(n for k, n in counts.items() if k.startswith("transport"))
        print(f"{name}: {dict(counts)}; transport errors: {errors}/{args.concurrency}")


if __name__ == "__main__":
    main()
