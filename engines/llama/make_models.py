#!/usr/bin/python3
"""Writes small Llama-architecture GGUF models with random weights, for kvkeep-llama and its tests.

Uses the GGUF writer bundled with the pinned llama.cpp (deploy/install-llama-deps puts it in
$KVKEEP_DEPS_DIR/llama-cpp-3.21.1/gguf-py). Deterministic: the same shape and seed give the same
bytes. Pretrained weights cannot be fetched here; random weights exercise the same engine code.

    /usr/bin/python3 engines/llama/make_models.py --out /tmp/models            # every shape
    /usr/bin/python3 engines/llama/make_models.py --out /tmp/m --shape gqa4-d64 --seed 7
    /usr/bin/python3 engines/llama/make_models.py --list

Needs numpy (/usr/bin/python3 has it). The tokenizer is a byte-fallback SentencePiece vocabulary:
every printable ASCII character is a token, anything else falls back to its bytes.
"""
import argparse
import os
import sys

import numpy as np

# name: (layers, embedding, q heads, kv heads, head dim, feed-forward, rope base)
SHAPES = {
    "gqa2-d64": (2, 256, 4, 2, 64, 512, 10000.0),
    "gqa4-d64": (3, 512, 8, 2, 64, 768, 500000.0),
    "mha-d64": (2, 256, 4, 4, 64, 512, 10000.0),
    "gqa2-d128": (2, 512, 4, 2, 128, 768, 1000000.0),
    "gqa4-d128-l4": (4, 512, 8, 2, 128, 768, 500000.0),
}
DEFAULT_DEPS = os.path.join(os.path.expanduser("~"), ".cache", "kvkeep-deps")


def import_gguf():
    deps = os.environ.get("KVKEEP_DEPS_DIR", DEFAULT_DEPS)
    path = os.path.join(deps, "llama-cpp-3.21.1", "gguf-py")
    if not os.path.isdir(path):
        sys.exit(f"make_models: {path} is missing; run deploy/install-deps (or install-llama-deps)")
    sys.path.insert(0, path)
    import gguf  # noqa: E402
    return gguf


def vocabulary(gguf):
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [
        gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(gguf.TokenType.BYTE)
    pieces = ["\u2581"] + [chr(c) for c in range(33, 127)]
    pieces += ["\u2581" + w for w in ("the", "a", "of", "and", "to", "in", "is", "kv", "cache")]
    for i, p in enumerate(pieces):
        tokens.append(p)
        scores.append(-1.0 - i * 0.01 if len(p) == 1 else -0.5)
        types.append(gguf.TokenType.NORMAL)
    return tokens, scores, types


def write_model(gguf, path, shape, seed):
    layers, embd, q_heads, kv_heads, head_dim, ff, rope_base = SHAPES[shape]
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocabulary(gguf)
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(f"kvkeep-random-{shape}-seed{seed}")
    w.add_context_length(4096)
    w.add_embedding_length(embd)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(q_heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)

    def mat(rows, cols, gain=1.0):
        # ggml's [cols, rows] is numpy's (rows, cols): out = W x with x of length cols.
        return (rng.standard_normal((rows, cols)) * (gain / np.sqrt(cols))).astype(np.float32)

    w.add_tensor("token_embd.weight", rng.standard_normal((n_vocab, embd)).astype(np.float32))
    for il in range(layers):
        w.add_tensor(f"blk.{il}.attn_norm.weight", np.ones(embd, np.float32))
        # Sharper attention than a plain Gaussian init (gain 2 on Q and K): scores differ by token.
        w.add_tensor(f"blk.{il}.attn_q.weight", mat(q_heads * head_dim, embd, 2.0))
        w.add_tensor(f"blk.{il}.attn_k.weight", mat(kv_heads * head_dim, embd, 2.0))
        w.add_tensor(f"blk.{il}.attn_v.weight", mat(kv_heads * head_dim, embd))
        w.add_tensor(f"blk.{il}.attn_output.weight", mat(embd, q_heads * head_dim))
        w.add_tensor(f"blk.{il}.ffn_norm.weight", np.ones(embd, np.float32))
        w.add_tensor(f"blk.{il}.ffn_gate.weight", mat(ff, embd))
        w.add_tensor(f"blk.{il}.ffn_up.weight", mat(ff, embd))
        w.add_tensor(f"blk.{il}.ffn_down.weight", mat(embd, ff))
    w.add_tensor("output_norm.weight", np.ones(embd, np.float32))
    w.add_tensor("output.weight", mat(n_vocab, embd, 4.0))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="folder for <shape>.gguf files")
    ap.add_argument("--shape", action="append", choices=sorted(SHAPES),
                    help="shape to write (repeatable; default: all)")
    ap.add_argument("--seed", type=int, default=1, help="weights seed (default 1)")
    ap.add_argument("--list", action="store_true", help="print the shapes and exit")
    args = ap.parse_args()
    if args.list:
        for name, (l, e, qh, kh, hd, ff, base) in SHAPES.items():
            print(f"{name}: layers {l}, embedding {e}, q heads {qh}, kv heads {kh}, head_dim {hd}, "
                  f"ffn {ff}, rope base {base:g}")
        return
    if not args.out:
        ap.error("--out is required")
    gguf = import_gguf()
    os.makedirs(args.out, exist_ok=True)
    for shape in args.shape or sorted(SHAPES):
        path = os.path.join(args.out, f"{shape}.gguf")
        write_model(gguf, path + ".tmp", shape, args.seed)
        os.replace(path + ".tmp", path)
        print(path)


if __name__ == "__main__":
    main()
