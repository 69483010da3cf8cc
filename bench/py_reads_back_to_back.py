#!/usr/bin/python3
"""Python client reads back to back: Sequence.read_all of one sequence, rep after rep, against a
kvkeepd this script starts (client/python/tests/daemon.py), with or without
kvkeep.tune_worker_process() (docs/api.md "Worker process settings").

  PYTHONPATH=build/client/python:client/python:client/python/tests \\
    /usr/bin/python3 bench/py_reads_back_to_back.py --kvkeepd build/bin/kvkeepd [--tune]

Prints the median [min, max] GB/s of --reps reads (each checked bit-exact against what was
written), over gRPC and over the bulk channel (docs/api.md §5.2) in alternating order, and the
median of the per-rep bulk / gRPC ratios. Small shape (4 layers, 2 KV heads, head_dim 64, fp16, 64 tokens per page)."""

import argparse
import os
import sys
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvkeepd", required=True, help="the kvkeepd binary to start")
    ap.add_argument("--tune", action="store_true", help="call kvkeep.tune_worker_process() first")
    ap.add_argument("--tokens", type=int, default=16384, help="sequence length (default 16384: "
                    "32 MiB of K+V)")
    ap.add_argument("--reps", type=int, default=12, help="reads (default 12)")
    a = ap.parse_args()
    os.environ["KVKEEPD"] = a.kvkeepd
    import kvkeep
    from daemon import Daemon
    if a.tune:
        kvkeep.tune_worker_process()
    layers, kv_heads, dim = 4, 2, 64
    d = Daemon(extra_flags=["--pool_mib=1024", "--arena_mib=64"]).start()
    try:
        _, token = d.create_tenant()
        with kvkeep.Client(d.target, token) as client, client.attach("reader") as session:
            model = session.register_model("m", layers=layers, q_heads=8, kv_heads=kv_heads,
                                           head_dim=dim, dtype="float16", tokens_per_page=64)
            seq = session.create_sequence(model)
            seq.allocate(a.tokens)
            rng = np.random.default_rng(1)
            written = {}
            for l in range(layers):
                for h in range(kv_heads):
                    k = rng.integers(0, 1 << 16, (a.tokens, dim), dtype=np.uint16).view(np.float16)
                    v = rng.integers(0, 1 << 16, (a.tokens, dim), dtype=np.uint16).view(np.float16)
                    seq.write(l, h, k, v)
                    written[(l, h)] = (k, v)
            seq.commit(a.tokens)
            total = layers * kv_heads * 2 * a.tokens * dim * 2
            if not session.bulk_channel_attached:
                sys.exit(f"no bulk channel: {session.bulk_channel_error}")
            rates = {False: [], True: []}  # use_bulk_channel -> GB/s per rep
            for rep in range(a.reps):
                for bulk in ((False, True) if rep % 2 == 0 else (True, False)):
                    session.use_bulk_channel = bulk
                    t0 = time.perf_counter()
                    heads = seq.read_all()
                    rates[bulk].append(total / (time.perf_counter() - t0) / 1e9)
                    for key, (k, v) in written.items():
                        if heads[key][0].tobytes() != k.tobytes() or \
                                heads[key][1].tobytes() != v.tobytes():
                            sys.exit(f"read_all returned different bytes for head {key}")
            ratios = sorted(b / g for b, g in zip(rates[True], rates[False]))
            for bulk, name in ((False, "gRPC"), (True, "bulk channel")):
                r = sorted(rates[bulk])
                print(f"{'tuned' if a.tune else 'default'}, {name}: {a.reps} read_all of "
                      f"{total >> 20} MiB, GB/s median {r[len(r) // 2]:.2f} [{r[0]:.2f}, "
                      f"{r[-1]:.2f}]")
            print(f"bulk / gRPC per rep: median {ratios[len(ratios) // 2]:.2f} "
                  f"[{ratios[0]:.2f}, {ratios[-1]:.2f}]")
    finally:
        d.stop()


if __name__ == "__main__":
    main()
