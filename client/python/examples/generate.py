#!/usr/bin/python3
"""A worker that generates: a tiny attention model in numpy whose KV cache lives in kvkeepd.

The model (token embeddings, then per layer RMSNorm + grouped-query attention with RoPE + an MLP,
tied unembedding) has FIXED RANDOM WEIGHTS from a seeded generator: it has learned nothing, so the
absolute numbers below only illustrate the mechanism, not the quality of a policy on a real model.
To give the attention some structure, each KV head's key projection is correlated with its query
heads' projections, so a query attends to earlier occurrences of its own token (a crude
retrieval/induction pattern), and the prompt is built so that this matters:

  [sinks] [repeated motifs ... "needles" (key token + 3 value tokens) scattered ... motifs]
  [tail: the needle keys asked again]

What it does, against a running daemon:
  1. creates its own tenant through the admin API (deleted at the end), attaches a worker,
     registers the model (fp16 pages, RoPE theta 5e5, and the W_O Gram matrices for laprox);
  2. prefills the prompt locally, once, and for the uncompressed reference and for each policy
     writes the K/V of every (layer, KV head) into a fresh sequence (WriteKV), commits it and
     sends the query statistics (PutStats): post-RoPE window queries (snapkv, laprox), pre-RoPE
     query moments (capkv, capkv-dot, expected) and the attention mass of every key (h2o);
  3. compresses each copy with its policy to --keep of the tokens, reads back the kept K/V
     (ReadKV) and decodes --steps tokens using only them plus the tokens it appends
     (AllocatePages / WriteKV / CommitTokens at the next position), teacher-forced with the
     same inputs as the reference (the needle keys, each followed by the reference's own
     greedy token), and checks at the end that its local cache equals the daemon's bit-exactly;
  4. prints a drift table against the uncompressed run: mean relative error of the final hidden
     states and of the logits, top-1 agreement, and KL(reference || policy) of the next-token
     distribution.

One command against `./deploy/demo`-style defaults (socket ./kvkeep-data/kvkeepd.sock, admin
token ./kvkeep-data/admin.token):

  PYTHONPATH=build/client/python:client/python /usr/bin/python3 client/python/examples/generate.py
"""

import argparse
import sys
import time
import uuid

import numpy as np

import kvkeep

POLICIES = ("snapkv", "capkv", "capkv-dot", "expected", "h2o", "laprox", "streaming", "knorm")

VOCAB = 256
Q_HEADS = 8
KV_HEADS = 2
HEAD_DIM = 32
D_MODEL = Q_HEADS * HEAD_DIM
D_FF = 2 * D_MODEL
ROPE_THETA = 5e5
TOKENS_PER_PAGE = 16
SINKS = 4
WINDOW = 32
N_KEYS, VALUE_LEN = 16, 3          # needle key tokens 0..15; values from 16..63
FILLER_LO = 64                     # motif tokens 64..255
CONTENT_DIMS = 12                  # size of the retrieval subspace (the 6 slowest RoPE pairs)


# ---------------------------------------------------------------------------------- the model
class TinyModel:
    def __init__(self, layers, seed):
        rng = np.random.default_rng(seed)
        self.layers = layers
        # A "content" subspace: the needle key tokens carry a strong component in it, and every
        # layer maps it into the slowest RoPE pairs of queries and keys, so a key token's query
        # finds the key's earlier occurrence at any distance (a learned-looking retrieval head).
        content = np.linalg.qr(rng.standard_normal((D_MODEL, CONTENT_DIMS)))[0]
        slow = np.r_[HEAD_DIM // 2 - CONTENT_DIMS // 2:HEAD_DIM // 2,
                     HEAD_DIM - CONTENT_DIMS // 2:HEAD_DIM]
        to_slow = np.zeros((D_MODEL, HEAD_DIM))
        to_slow[:, slow] = content
        self.embed = rng.standard_normal((VOCAB, D_MODEL))
        signature = rng.standard_normal((N_KEYS, CONTENT_DIMS))
        signature *= 12.0 / np.linalg.norm(signature, axis=1, keepdims=True)
        self.embed[:N_KEYS] += signature @ content.T
        self.embed = self.embed.astype(np.float32)
        self.unembed = (rng.standard_normal((D_MODEL, VOCAB)) * (2.0 / np.sqrt(D_MODEL))).astype(
            np.float32)
        self.blocks = []
        for _ in range(layers):
            wq = rng.standard_normal((D_MODEL, Q_HEADS, HEAD_DIM)) * (0.8 / np.sqrt(D_MODEL))
            wk = rng.standard_normal((D_MODEL, KV_HEADS, HEAD_DIM)) * (0.8 / np.sqrt(D_MODEL))
            wq += 0.8 * to_slow[:, None, :]
            # Keys see the content of the PREVIOUS token (an induction head): a key token's query
            # lands on the token that followed the key's earlier occurrence (its value).
            wkc = np.repeat(0.8 * to_slow[:, None, :], KV_HEADS, axis=1)
            wv = rng.standard_normal((D_MODEL, KV_HEADS, HEAD_DIM)) / np.sqrt(D_MODEL)
            wo = rng.standard_normal((Q_HEADS * HEAD_DIM, D_MODEL)) / np.sqrt(Q_HEADS * HEAD_DIM)
            w1 = rng.standard_normal((D_MODEL, D_FF)) / np.sqrt(D_MODEL)
            w2 = rng.standard_normal((D_FF, D_MODEL)) / np.sqrt(D_FF)
            self.blocks.append({k: v.astype(np.float32).reshape(v.shape[0], -1) for k, v in
                                dict(wq=wq, wk=wk, wkc=wkc, wv=wv, wo=wo, w1=w1,
                                     w2=w2).items()})
        self.inv_freq = ROPE_THETA ** (-np.arange(0, HEAD_DIM, 2, dtype=np.float64) / HEAD_DIM)

    def wo_grams(self):
        """W_O^h W_O^hᵀ per (layer, query head), for the laprox scorer."""
        grams = np.empty((self.layers, Q_HEADS, HEAD_DIM, HEAD_DIM), np.float32)
        for l, b in enumerate(self.blocks):
            for h in range(Q_HEADS):
                rows = b["wo"][h * HEAD_DIM:(h + 1) * HEAD_DIM]
                grams[l, h] = rows @ rows.T
        return grams

    def rope(self, x, positions):
        """Half-split RoPE (pairs i, i + d/2) of x [..., T, HEAD_DIM] at positions [T]."""
        angles = np.asarray(positions, np.float64)[:, None] * self.inv_freq[None, :]
        cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
        x1, x2 = x[..., :HEAD_DIM // 2], x[..., HEAD_DIM // 2:]
        return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)

    @staticmethod
    def norm(x):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)

    def mlp(self, b, x):
        h = self.norm(x) @ b["w1"]
        return (h / (1 + np.exp(-h))) @ b["w2"]

    def logits(self, x):
        return self.norm(x) @ self.unembed

    def prefill(self, tokens):
        """Runs the prompt. Returns the fp16 K/V [layers, kv_heads, T, head_dim], the query
        statistics per layer and the normed input of every layer at the last token (the
        "previous token" of the first decode step)."""
        t = len(tokens)
        pos = np.arange(t)
        x = self.embed[tokens]
        group = Q_HEADS // KV_HEADS
        causal = np.triu(np.full((t, t), -np.inf, np.float32), k=1)
        keys = np.empty((self.layers, KV_HEADS, t, HEAD_DIM), np.float16)
        values = np.empty_like(keys)
        stats = {"window_queries": [], "query_sum": [], "query_sq_sum": [], "attention_mass": []}
        last = np.empty((self.layers, D_MODEL), np.float32)
        for l, b in enumerate(self.blocks):
            h = self.norm(x)
            last[l] = h[-1]
            h_prev = np.vstack([np.zeros((1, D_MODEL), np.float32), h[:-1]])
            q_pre = (h @ b["wq"]).reshape(t, Q_HEADS, HEAD_DIM).transpose(1, 0, 2)
            k = h @ b["wk"] + h_prev @ b["wkc"]
            k = self.rope(k.reshape(t, KV_HEADS, HEAD_DIM).transpose(1, 0, 2), pos)
            v = (h @ b["wv"]).reshape(t, KV_HEADS, HEAD_DIM).transpose(1, 0, 2)
            keys[l], values[l] = k, v                      # what the daemon will hold (fp16)
            k32, v32 = keys[l].astype(np.float32), values[l].astype(np.float32)
            q = self.rope(q_pre, pos)
            out = np.empty((Q_HEADS, t, HEAD_DIM), np.float32)
            mass = np.empty((Q_HEADS, t), np.float32)
            for i in range(Q_HEADS):
                s = q[i] @ k32[i // group].T / np.sqrt(HEAD_DIM) + causal
                p = np.exp(s - s.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
                mass[i] = p.sum(axis=0)
                out[i] = p @ v32[i // group]
            x = x + out.transpose(1, 0, 2).reshape(t, -1) @ b["wo"]
            x = x + self.mlp(b, x)
            w = min(WINDOW, t)
            stats["window_queries"].append(q[:, t - w:])
            stats["query_sum"].append(q_pre[:, SINKS:].sum(axis=1, dtype=np.float64))
            stats["query_sq_sum"].append(np.square(q_pre[:, SINKS:], dtype=np.float64).sum(axis=1))
            stats["attention_mass"].append(mass)
        stats = {k: np.stack(v) for k, v in stats.items()}
        stats["query_count"] = t - SINKS
        return keys, values, stats, last

    def step(self, token, position, cache, prev):
        """One decode step over `cache` {(layer, kv_head): [keys, values]} (float32, ragged),
        appending this token's K/V to it; `prev` [layers, d_model] holds the previous token's
        normed layer inputs and is updated. Returns (hidden, new fp16 K/V [layers, kv_heads, 1,
        head_dim] x 2)."""
        group = Q_HEADS // KV_HEADS
        x = self.embed[token][None, :]
        new_k = np.empty((self.layers, KV_HEADS, 1, HEAD_DIM), np.float16)
        new_v = np.empty_like(new_k)
        for l, b in enumerate(self.blocks):
            h = self.norm(x)
            q = self.rope((h @ b["wq"]).reshape(1, Q_HEADS, HEAD_DIM).transpose(1, 0, 2),
                          [position])
            k = h @ b["wk"] + prev[l][None, :] @ b["wkc"]
            k = self.rope(k.reshape(1, KV_HEADS, HEAD_DIM).transpose(1, 0, 2), [position])
            prev[l] = h[0]
            v = (h @ b["wv"]).reshape(1, KV_HEADS, HEAD_DIM).transpose(1, 0, 2)
            new_k[l], new_v[l] = k, v
            out = np.empty((Q_HEADS, HEAD_DIM), np.float32)
            for g in range(KV_HEADS):
                entry = cache[(l, g)]
                entry[0] = np.concatenate([entry[0], new_k[l, g].astype(np.float32)])
                entry[1] = np.concatenate([entry[1], new_v[l, g].astype(np.float32)])
                for i in range(g * group, (g + 1) * group):
                    s = entry[0] @ q[i, 0] / np.sqrt(HEAD_DIM)
                    p = np.exp(s - s.max())
                    out[i] = (p / p.sum()) @ entry[1]
            x = x + out.reshape(1, -1) @ b["wo"]
            x = x + self.mlp(b, x)
        return x[0], new_k, new_v


def build_prompt(length, rng):
    """Motifs with needles (key + values) scattered in, ending by asking the needle keys again."""
    motifs = [rng.integers(FILLER_LO, VOCAB, size=rng.integers(8, 17)) for _ in range(8)]
    tail_len = min(48, length // 4)
    body = []
    while len(body) < length - tail_len:
        body.extend(motifs[rng.integers(len(motifs))])
    body = np.array(body[:length - tail_len])
    n_needles = max(2, min(N_KEYS, len(body) // 48))
    keys = rng.permutation(N_KEYS)[:n_needles]
    slots = np.sort(rng.choice(np.arange(SINKS + 8, len(body) - 8, 8), size=n_needles,
                               replace=False))
    for key, at in zip(keys, slots):
        body[at] = key
        body[at + 1:at + 1 + VALUE_LEN] = rng.integers(N_KEYS, FILLER_LO, size=VALUE_LEN)
    tail = list(rng.integers(FILLER_LO, VOCAB, size=tail_len))
    for j, key in enumerate(keys):  # ..., keys[1], x, keys[0]: the prompt ends with keys[0]
        if 2 * j < tail_len:
            tail[tail_len - 1 - 2 * j] = key
    return np.concatenate([body, np.array(tail)]).astype(np.int64), keys


# ------------------------------------------------------------------------------- the worker
def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


class Run:
    """One sequence in the daemon: prefilled, optionally compressed, then decoded."""

    def __init__(self, session, model_info, model, keys, values, stats, last):
        self.model = model
        self.last = last
        self.seq = session.create_sequence(model_info)
        t = keys.shape[2]
        self.seq.allocate(t)
        self.seq.write_all(keys, values)
        self.seq.commit(t)
        self.seq.put_stats(window_queries=stats["window_queries"],
                           query_sum=stats["query_sum"], query_count=stats["query_count"],
                           query_sq_sum=stats["query_sq_sum"],
                           attention_mass=stats["attention_mass"])
        self.summary = None

    def compress(self, scorer, keep):
        self.summary = self.seq.compress(scorer=scorer, keep_ratio=keep).summary

    def decode(self, inputs, choose_next=None):
        """Teacher-forced decode from the K/V read back from the daemon. `inputs[s]` is the
        token fed at step s, or None to feed choose_next(logits of step s-1)."""
        cache = {key: [k.astype(np.float32), v.astype(np.float32)]
                 for key, (k, v, _) in self.seq.read_all().items()}
        position = self.seq.next_position
        prev = self.last.copy()
        hidden, logits, fed = [], [], []
        for token in inputs:
            if token is None:
                token = choose_next(logits[-1])
            fed.append(token)
            x, new_k, new_v = self.model.step(token, position, cache, prev)
            counts = self.seq.token_counts
            self.seq.allocate(1)
            self.seq.write_all(new_k, new_v, offset=counts)
            self.seq.commit(1)
            hidden.append(x)
            logits.append(self.model.logits(x))
            position += 1
        # The local cache is exactly what the daemon holds.
        for key, (k, v, _) in self.seq.read_all().items():
            if not (np.array_equal(k.astype(np.float32), cache[key][0]) and
                    np.array_equal(v.astype(np.float32), cache[key][1])):
                raise AssertionError(f"head {key}: the daemon's K/V differ from the local cache")
        self.seq.drop()
        return np.array(hidden), np.array(logits), fed


def drift(ref_hidden, ref_logits, hidden, logits):
    rel = lambda a, b: float(np.mean(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)))
    agree = float(np.mean(np.argmax(logits, 1) == np.argmax(ref_logits, 1))) * 100
    kl = []
    for r, p in zip(ref_logits, logits):
        pr, pp = softmax(r), softmax(p)
        kl.append(float(np.sum(pr * (np.log(pr) - np.log(pp)))))
    return rel(hidden, ref_hidden), rel(logits, ref_logits), agree, float(np.mean(kl))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="unix:./kvkeep-data/kvkeepd.sock",
                    help="daemon address (default %(default)s)")
    ap.add_argument("--admin-token-file", default="./kvkeep-data/admin.token",
                    help="admin token: a tenant is created for the run and deleted after")
    ap.add_argument("--token", help="use this tenant token instead (no admin calls)")
    ap.add_argument("--keep", type=float, default=0.10, help="keep ratio (default %(default)s)")
    ap.add_argument("--steps", type=int, default=32, help="decode steps (default %(default)s)")
    ap.add_argument("--prompt-len", type=int, default=1024, help="prompt tokens (default 1024)")
    ap.add_argument("--layers", type=int, default=4, help="model layers (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="weights and prompt seed (default 0)")
    ap.add_argument("--policies", default=",".join(POLICIES),
                    help="comma-separated scorers (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.prompt_len < 2 * (SINKS + WINDOW):
        ap.error(f"--prompt-len must be at least {2 * (SINKS + WINDOW)}")
    if args.steps < 1:
        ap.error("--steps must be at least 1")

    # A worker's process settings: freed heap is kept, so the buffers of one read are reused by
    # the next instead of being faulted in again (docs/api.md "Worker process settings").
    kvkeep.tune_worker_process()
    admin, tenant = None, None
    if args.token:
        token = args.token
    else:
        admin = kvkeep.Admin(args.target, kvkeep.read_token(args.admin_token_file))
        tenant = "generate-" + uuid.uuid4().hex[:8]
        token = admin.create_tenant(tenant).token
    try:
        return run(args, token, tenant)
    finally:
        if admin is not None:
            admin.delete_tenant(tenant, force=True)
            admin.close()


def run(args, token, tenant):
    t0 = time.monotonic()
    model = TinyModel(args.layers, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    prompt, needle_keys = build_prompt(args.prompt_len, rng)
    keys, values, stats, last = model.prefill(prompt)
    # Decode inputs: the needle keys asked again, each followed by the reference's greedy token.
    inputs = [None if s % 2 else int(needle_keys[(s // 2 + 1) % len(needle_keys)])
              for s in range(args.steps)]

    with kvkeep.Client(args.target, token) as client, client.attach("generate-example") as session:
        info = session.register_model(
            "tiny-attention", layers=args.layers, q_heads=Q_HEADS, kv_heads=KV_HEADS,
            head_dim=HEAD_DIM, dtype="float16", tokens_per_page=TOKENS_PER_PAGE,
            rope_theta=ROPE_THETA, wo_grams=model.wo_grams())
        print(f"kvkeep generate: tenant {tenant or session.tenant}, {args.layers} layers x "
              f"{Q_HEADS} q / {KV_HEADS} KV heads x {HEAD_DIM} dims, fp16, RoPE theta "
              f"{ROPE_THETA:g}; prompt {args.prompt_len} tokens ({len(needle_keys)} needles), "
              f"keep {args.keep:.0%}, {args.steps} decode steps. Random weights: the numbers "
              "illustrate the mechanism only.")

        ref = Run(session, info, model, keys, values, stats, last)
        ref_hidden, ref_logits, fed = ref.decode(inputs, choose_next=lambda z: int(np.argmax(z)))
        inputs = fed  # every policy gets exactly the reference's inputs

        header = (f"{'policy':<10} {'kept':>6} {'tokens':>7} {'hidden rel.err':>14} "
                  f"{'logits rel.err':>14} {'top-1 agree':>11} {'KL(ref||p)':>11} "
                  f"{'compress ms':>11}")
        print()
        print(header)
        print("-" * len(header))
        before = args.prompt_len * args.layers * KV_HEADS
        print(f"{'(full)':<10} {1:>6.1%} {before:>7} {0:>14.4f} {0:>14.4f} {100:>10.1f}% "
              f"{0:>11.4f} {'-':>11}")
        for scorer in [p for p in args.policies.split(",") if p]:
            r = Run(session, info, model, keys, values, stats, last)
            r.compress(scorer, args.keep)
            hidden, logits, _ = r.decode(inputs)
            h_err, l_err, agree, kl = drift(ref_hidden, ref_logits, hidden, logits)
            s = r.summary
            print(f"{scorer:<10} {s.tokens_after / s.tokens_before:>6.1%} {s.tokens_after:>7} "
                  f"{h_err:>14.4f} {l_err:>14.4f} {agree:>10.1f}% {kl:>11.4f} "
                  f"{s.seconds * 1e3:>11.2f}")
        print()
        print(f"tokens: kept K/V entries summed over (layer, KV head) before decoding; "
              f"drift averaged over {args.steps} teacher-forced steps; {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except kvkeep.KvkeepError as err:
        print(f"generate.py: {err}", file=sys.stderr)
        sys.exit(1)
    except FileNotFoundError as err:
        print(f"generate.py: {err} (is kvkeepd running? see client/python/README.md)",
              file=sys.stderr)
        sys.exit(1)
