"""Train tierwise's embedded default model: a tiny Qwen2 that adds with chain of thought.

Usage (about 8 minutes on a 2-core CPU)::

    .venv/bin/python models/train_tiny_adder.py            # -> models/tiny-adder/
    .venv/bin/python models/eval_regimes.py                # measure regimes with vLLM

The model is a ~1.1M-parameter ``Qwen2ForCausalLM`` (hidden 128, 4 layers, 2 heads of
head_dim 64 -- vLLM's CPU attention rejects head_dim 16 --, MLP 512, tied embeddings)
with a byte-level tokenizer without merges: every byte is one token (ids 0..255 are
the bytes themselves), plus ``<|endoftext|>`` (EOS, id 256) and ``<|pad|>`` (id 257).

The data mix is the difficulty dial: training sees 1..``--max-digits`` digit problems
(weighted by ``--mix``) and never anything longer, so problems one digit past what is
learned well stay partially solved ("headroom") and longer ones are "hopeless".
The task format lives in ``pipelines/tiers/tasks/arithmetic.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tierwise.pipelines.tiers.tasks.arithmetic import (  # noqa: E402
    DEFAULT_MODEL_DIR,
    extract_answer,
    make_problem,
    solution,
)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

# Default training mix (weights per digit count of the larger operand).
DEFAULT_MIX = "1:1,2:1,3:1,4:1.5,5:2.5,6:0.55"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode char map (ByteLevel's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build_tokenizer():
    """Byte-level BPE with no merges: token id == byte value; EOS=256, PAD=257."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    b2u = bytes_to_unicode()
    assert set(b2u.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    vocab = {b2u[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS_TOKEN, PAD_TOKEN])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=256,
        clean_up_tokenization_spaces=False,
    )
    assert hf.convert_tokens_to_ids(EOS_TOKEN) == 256
    assert hf.convert_tokens_to_ids(PAD_TOKEN) == 257
    for s in ["12+345=\n", "5+0+1=6 65\nA: 65", "héllo wörld\t!", " leading space"]:
        ids = hf.encode(s, add_special_tokens=True)
        assert ids == list(s.encode("utf-8")), (s, ids)
        assert hf.decode(ids) == s, (s, hf.decode(ids))
    return hf


def parse_mix(spec: str) -> dict[int, float]:
    mix = {}
    for part in spec.split(","):
        d, w = part.split(":")
        mix[int(d)] = float(w)
    return mix


def encode_example(prompt: str, eos_id: int) -> tuple[list[int], int]:
    """(token ids of prompt + completion + EOS, prompt length)."""
    p = list(prompt.encode("utf-8"))
    c = list(solution(prompt).encode("utf-8")) + [eos_id]
    return p + c, len(p)


def make_batch(rng: random.Random, mix: dict[int, float], batch_size: int, eos_id: int, pad_id: int):
    import torch

    keys = sorted(mix)
    weights = [mix[k] for k in keys]
    seqs = []
    for _ in range(batch_size):
        d = rng.choices(keys, weights)[0]
        prompt, _ = make_problem(rng, d)
        seqs.append(encode_example(prompt, eos_id))
    L = max(len(s) for s, _ in seqs)
    ids = torch.full((batch_size, L), pad_id, dtype=torch.long)
    labels = torch.full((batch_size, L), -100, dtype=torch.long)
    mask = torch.zeros((batch_size, L), dtype=torch.long)
    for i, (s, plen) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, plen : len(s)] = torch.tensor(s[plen:])
    return ids, mask, labels


def quick_eval(model, tok, per_digit: int, digits: list[int], seed: int) -> dict[int, float]:
    """Greedy accuracy with HF generate (a sanity check; eval_regimes.py is the real one)."""
    import torch

    model.eval()
    tok.padding_side = "left"
    rng = random.Random(seed)
    out = {}
    with torch.no_grad():
        for d in digits:
            probs = [make_problem(rng, d) for _ in range(per_digit)]
            enc = tok([p for p, _ in probs], return_tensors="pt", padding=True)
            gen = model.generate(
                **enc,
                max_new_tokens=180,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
            texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out[d] = sum(extract_answer(t) == g for t, (_, g) in zip(texts, probs)) / per_digit
    tok.padding_side = "right"
    model.train()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--steps", type=int, default=1100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--max-digits", type=int, default=6, help="longest problems trained on")
    ap.add_argument("--mix", default=DEFAULT_MIX, help="digit:weight,... (digits > --max-digits dropped)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-minutes", type=float, default=25.0, help="safety stop (the recipe is --steps)")
    ap.add_argument("--quick-eval", type=int, default=25, help="problems per digit for the final HF check (0: skip)")
    args = ap.parse_args(argv)

    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    mix = {d: w for d, w in parse_mix(args.mix).items() if 1 <= d <= args.max_digits and w > 0}
    print(f"training mix: {mix}", flush=True)

    tok = build_tokenizer()
    eos_id, pad_id = tok.eos_token_id, tok.pad_token_id
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        attn_implementation="sdpa",
    )
    model = Qwen2ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params: {n_params / 1e6:.2f}M  head_dim={args.hidden // args.heads}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    model.train()
    t0 = time.time()
    ema = None
    step = 0
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        ids, mask, labels = make_batch(rng, mix, args.batch_size, eos_id, pad_id)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = out.loss.item()
        ema = loss if ema is None else 0.95 * ema + 0.05 * loss
        if step % 50 == 0 or step == args.steps - 1:
            el = time.time() - t0
            print(f"step {step:5d}  loss {loss:.4f}  ema {ema:.4f}  lr {lr_at(step):.2e}  {el:6.1f}s", flush=True)
        if time.time() - t0 > args.max_minutes * 60:
            print(f"time budget hit at step {step}", flush=True)
            break
    train_s = time.time() - t0
    print(f"trained {step + 1} steps in {train_s:.1f}s", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id
    )
    try:
        model.save_pretrained(args.out, safe_serialization=True)
    except TypeError:  # newer transformers: safetensors is the only format
        model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    meta = {
        "params": n_params,
        "steps": step + 1,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "mix": {str(k): v for k, v in mix.items()},
        "train_seconds": round(train_s, 1),
        "final_loss_ema": round(ema, 5),
        "torch": torch.__version__,
        "threads": args.threads,
    }
    if args.quick_eval > 0:
        t1 = time.time()
        acc = quick_eval(model, tok, args.quick_eval, list(range(1, 9)), seed=args.seed + 777)
        print(f"quick greedy eval (HF, {args.quick_eval}/digit, {time.time() - t1:.0f}s): {acc}", flush=True)
        meta["quick_eval_greedy"] = {str(k): v for k, v in acc.items()}
    (args.out / "train_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"saved to {args.out}", flush=True)


if __name__ == "__main__":
    main()
