"""Measure the tiny adder's difficulty regimes with vLLM (CPU is fine).

For a held-out set (``--n`` problems per digit count, seed distinct from training) it
generates greedily (temperature 0) and ``--samples`` samples at ``--temperature``, and
reports per digit count: greedy accuracy, pass@k, majority-vote@k accuracy, mean
step-checker score of the greedy traces, mean output tokens and generated tokens/s.
Results go to ``<model-dir>/regimes.json`` and the regimes are checked against:

* easy band (``EASY_DIGITS``): greedy >= 0.95
* headroom band (``HEADROOM_DIGITS``): 0.3 <= greedy <= 0.8 and pass@k >= greedy + 0.15
* hopeless band (``HOPELESS_DIGITS``): pass@k <= 0.05

Usage::

    .venv/bin/python models/eval_regimes.py [--model-dir models/tiny-adder] [--n 200]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tierwise.pipelines.tiers.answers import vote  # noqa: E402
from tierwise.pipelines.tiers.tasks.arithmetic import (  # noqa: E402
    DEFAULT_MODEL_DIR,
    EASY_DIGITS,
    HEADROOM_DIGITS,
    HOPELESS_DIGITS,
    check_steps,
    extract_answer,
    generate_dataset,
)

EVAL_SEED = 987_654  # training uses random.Random(--seed), default 1234


def check_tokenizer(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    for s in ["123+4567=\n", "3+7+0=10 0\n5+0+1=6 60\nA: 60", "mixed text, ünïcode ✓\n\t"]:
        ids = tok.encode(s, add_special_tokens=True)
        assert ids == list(s.encode("utf-8")), f"tokenizer is not byte-level for {s!r}: {ids}"
        assert tok.decode(ids) == s, f"round trip failed for {s!r}"
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 256, (tok.eos_token, tok.eos_token_id)
    gen = json.loads((model_dir / "generation_config.json").read_text())
    assert gen.get("eos_token_id") == tok.eos_token_id, gen
    print("tokenizer: byte-level round trip ok, eos id", tok.eos_token_id, flush=True)


def verify(results: dict[int, dict], samples: int) -> list[tuple[str, bool, str]]:
    checks = []
    for d in EASY_DIGITS:
        if d in results:
            g = results[d]["greedy_acc"]
            checks.append((f"easy {d}d greedy >= 0.95", g >= 0.95, f"greedy={g:.3f}"))
    for d in HEADROOM_DIGITS:
        if d in results:
            g, p = results[d]["greedy_acc"], results[d][f"pass@{samples}"]
            checks.append((f"headroom {d}d 0.3 <= greedy <= 0.8", 0.3 <= g <= 0.8, f"greedy={g:.3f}"))
            checks.append(
                (f"headroom {d}d pass@{samples} >= greedy + 0.15", p >= g + 0.15, f"pass={p:.3f} greedy={g:.3f}")
            )
    for d in HOPELESS_DIGITS:
        if d in results:
            p = results[d][f"pass@{samples}"]
            checks.append((f"hopeless {d}d pass@{samples} <= 0.05", p <= 0.05, f"pass={p:.3f}"))
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--n", type=int, default=200, help="problems per digit count")
    ap.add_argument("--digits", default="1,2,3,4,5,6,7,8")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--seed", type=int, default=EVAL_SEED)
    ap.add_argument("--out", type=Path, default=None, help="default: <model-dir>/regimes.json")
    args = ap.parse_args(argv)

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    model_dir = args.model_dir.resolve()
    check_tokenizer(model_dir)

    import vllm
    from vllm import LLM, SamplingParams

    digits = [int(x) for x in args.digits.split(",")]
    t_start = time.time()
    llm = LLM(
        model=str(model_dir),
        dtype="float32",
        max_model_len=256,
        enforce_eager=True,
        seed=0,
        max_num_seqs=256,
    )
    print(f"engine up in {time.time() - t_start:.1f}s", flush=True)
    greedy_sp = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    sample_sp = SamplingParams(
        n=args.samples, temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed
    )

    # Warm up so the first digit count's tokens/s is not charged for lazy init.
    llm.generate(["1+2=\n"] * 4, greedy_sp, use_tqdm=False)

    k = args.samples
    results: dict[int, dict] = {}
    for d in digits:
        df = generate_dataset(args.n, [d], seed=args.seed + d)
        prompts, golds = df["prompt"].to_list(), df["gold"].to_list()

        t0 = time.time()
        g_out = llm.generate(prompts, greedy_sp, use_tqdm=False)
        g_s = time.time() - t0
        t0 = time.time()
        s_out = llm.generate(prompts, sample_sp, use_tqdm=False)
        s_s = time.time() - t0

        g_texts = [o.outputs[0].text for o in g_out]
        g_tokens = [len(o.outputs[0].token_ids) for o in g_out]
        g_stop = [o.outputs[0].finish_reason == "stop" for o in g_out]
        s_texts = [[c.text for c in o.outputs] for o in s_out]
        s_tokens = [len(c.token_ids) for o in s_out for c in o.outputs]

        greedy_ok = [extract_answer(t) == g for t, g in zip(g_texts, golds)]
        s_answers = [[extract_answer(t) for t in ts] for ts in s_texts]
        pass_ok = [any(a == g for a in ans) for ans, g in zip(s_answers, golds)]
        maj_ok = [vote(ans)[0] == g for ans, g in zip(s_answers, golds)]
        sample_ok = [a == g for ans, g in zip(s_answers, golds) for a in ans]
        steps = [check_steps(p, t) for p, t in zip(prompts, g_texts)]
        # The step checker never needs the gold answer, yet a fully valid trace
        # must be a correct one: check that agreement while we are here.
        disagree_idx = [i for i, (s, ok) in enumerate(zip(steps, greedy_ok)) if (s == 1.0) != ok]
        disagree = len(disagree_idx)

        n = len(prompts)
        r = {
            "n": n,
            "greedy_acc": sum(greedy_ok) / n,
            f"pass@{k}": sum(pass_ok) / n,
            f"maj@{k}": sum(maj_ok) / n,
            "sample_acc": sum(sample_ok) / len(sample_ok),
            "greedy_step_score": sum(steps) / n,
            "step_checker_disagreements": disagree,
            "step_checker_disagreement_examples": [
                {"prompt": prompts[i], "gold": golds[i], "text": g_texts[i], "step_score": steps[i]}
                for i in disagree_idx[:3]
            ],
            "greedy_stop_rate": sum(g_stop) / n,
            "greedy_mean_tokens": sum(g_tokens) / n,
            "sample_mean_tokens": sum(s_tokens) / len(s_tokens),
            "greedy_tok_s": sum(g_tokens) / g_s,
            "sample_tok_s": sum(s_tokens) / s_s,
            "greedy_seconds": round(g_s, 2),
            "sample_seconds": round(s_s, 2),
        }
        results[d] = r
        print(
            f"{d}d  greedy {r['greedy_acc']:.3f}  pass@{k} {r[f'pass@{k}']:.3f}  maj@{k} {r[f'maj@{k}']:.3f}"
            f"  steps {r['greedy_step_score']:.3f}  stop {r['greedy_stop_rate']:.2f}"
            f"  tok {r['greedy_mean_tokens']:.1f}/{r['sample_mean_tokens']:.1f}"
            f"  tok/s {r['greedy_tok_s']:.0f}/{r['sample_tok_s']:.0f}",
            flush=True,
        )
        if d == digits[0]:
            print("example greedy output:", repr(prompts[0]), "->", repr(g_texts[0]), flush=True)

    checks = verify(results, k)
    print("\nregime checks:")
    for name, ok, detail in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}  ({detail})")
    all_ok = all(ok for _, ok, _ in checks)

    report = {
        "model_dir": model_dir.name,
        "vllm": vllm.__version__,
        "device": "cpu",
        "eval_seed": args.seed,
        "n_per_digit": args.n,
        "samples": k,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "regimes": {
            "easy": list(EASY_DIGITS),
            "headroom": list(HEADROOM_DIGITS),
            "hopeless": list(HOPELESS_DIGITS),
        },
        "checks": [{"name": nm, "ok": ok, "detail": det} for nm, ok, det in checks],
        "all_checks_pass": all_ok,
        "per_digit": {str(d): r for d, r in results.items()},
        "total_seconds": round(time.time() - t_start, 1),
    }
    out = args.out or (model_dir / "regimes.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nall regime checks pass: {all_ok}; wrote {out}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
