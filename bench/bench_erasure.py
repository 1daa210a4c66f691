"""Reed-Solomon k+m on this machine: pyeclib (ISA-L) against zfec, same data, same run.

The measurement behind the choice recorded in docs/erasure-coding.md. Encodes
and decodes 1 MiB segments (the vault's default) with the m data blocks lost,
the worst case for decode, on one thread.
"""

from __future__ import annotations

import argparse
import os
import time

import zfec
from pyeclib.ec_iface import ECDriver

from shardvault.allocator import tune_allocator

MIB = 1 << 20


def rate(func, rounds: int) -> float:  # type: ignore[no-untyped-def]
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(rounds):
            func()
        best = max(best, rounds / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--m", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    print(f"allocator tuned: {tune_allocator()}; RS {args.k}+{args.m}, 1 MiB segments, 1 thread")
    k, n = args.k, args.k + args.m
    segment = os.urandom(MIB)

    for backend in ("isa_l_rs_vand", "isa_l_rs_cauchy", "liberasurecode_rs_vand"):
        driver = ECDriver(k=k, m=args.m, ec_type=backend)
        blocks = driver.encode(segment)
        survivors = blocks[args.m :]  # lose the first m (data) blocks
        enc = rate(lambda d=driver: d.encode(segment), args.rounds)
        dec = rate(lambda d=driver, s=survivors: d.decode(s), args.rounds)
        print(f"pyeclib {backend:24s} encode {enc:7,.0f} MiB/s  worst decode {dec:7,.0f} MiB/s")

    encoder, decoder = zfec.Encoder(k, n), zfec.Decoder(k, n)
    size = -(-MIB // k)
    parts = [segment[i * size : (i + 1) * size].ljust(size, b"\0") for i in range(k)]
    shares = encoder.encode(parts)
    kept = list(range(args.m, n))
    enc = rate(lambda: encoder.encode(parts), args.rounds)
    dec = rate(lambda: decoder.decode([shares[i] for i in kept], kept), args.rounds)
    print(
        f"zfec    {'(Vandermonde, GF(2^8))':24s} encode {enc:7,.0f} MiB/s  worst decode "
        f"{dec:7,.0f} MiB/s"
    )


if __name__ == "__main__":
    main()
