import pytest

from tierwise.jobs.spec import SpecError, load_spec, parse_spec

BASE = {"input": {"path": "in.parquet"}, "output": {"path": "out"}, "budget": {"amount": 1000}}


def test_defaults_and_example_spec_parse():
    spec = parse_spec(BASE)
    assert spec.policy.kind == "uniform" and spec.policy.n == 1 and spec.budget.unit == "tokens"
    demo = load_spec("jobs/examples/demo.yaml")
    assert demo.model.path == "embedded:tiny-adder" and demo.input.gold_column == "gold"


@pytest.mark.parametrize("patch, field", [
    ({"budget": {"amount": -1}}, "budget.amount"),
    ({"budget": {"amount": 1, "unit": "dollars"}}, "budget.unit"),
    ({"budget": {"amount": 1, "unit": "gpu_hours"}}, "tokens_per_gpu_hour"),
    ({"policy": {"kind": "uniform", "n": 0}}, "policy.uniform.n"),
    ({"policy": {"kind": "nonsense"}}, "policy"),
    ({"replicas": {"count": 0}}, "replicas.count"),
    ({"output": {"path": "o", "part_rows": 0}}, "output.part_rows"),
    ({"input": {"path": "x", "colour": "red"}}, "input.colour"),
    ({"policy": {"kind": "adaptive", "difficulty": {"estimators": ["column"]}}}, "policy.difficulty.column"),
    ({"policy": {"kind": "adaptive", "difficulty": {"estimators": ["pilot"], "feature_columns": ["n"]}}},
     "policy.difficulty.feature_columns"),
    ({"policy": {"kind": "adaptive", "difficulty": {"estimators": ["pilot", "learned"]}}},
     "policy.difficulty.learned"),
    ({"policy": {"kind": "adaptive", "difficulty": {"estimators": ["oracle"]}}}, "policy.adaptive.difficulty"),
    ({"input": {"path": "x", "gold_column": "g"},
      "policy": {"kind": "adaptive", "difficulty": {"estimators": ["pilot", "column"], "column": "g"}}},
     "input.gold_column"),
    ({"policy": {"kind": "adaptive", "objective": "verified_yield", "yield_cap": 0}, "verifier": "v:f"},
     "policy.adaptive.yield_cap"),
    ({"policy": {"kind": "adaptive", "label_confidence": 0.9}}, "structured.choice"),
    ({"policy": {"kind": "adaptive", "label_confidence": 1.5}, "structured": {"choice": ["a"]}},
     "policy.adaptive.label_confidence"),
    ({"policy": {"kind": "adaptive", "planner": "sequential", "label_confidence": 0.9},
      "structured": {"choice": ["a", "b"]}}, "planner 'calibrated'"),
])
def test_invalid_specs_name_the_field(patch, field):
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        parse_spec(BASE | patch)


def test_overrides_apply_before_validation(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("input: {path: a}\noutput: {path: b}\nbudget: {amount: 5}\n")
    assert load_spec(p, {"budget.amount": 7, "policy.n": 3}).policy.n == 3
    with pytest.raises(SpecError, match="budget.amount"):
        load_spec(p, {"budget.amount": "lots"})


def test_unreadable_spec_file():
    with pytest.raises(SpecError, match="cannot read"):
        load_spec("/nonexistent/spec.yaml")


JUDGE = {"kind": "llm_judge", "mode": "agree"}


def test_judge_verifier_parses_with_mode_defaults():
    spec = parse_spec(BASE | {"verifier": JUDGE, "policy": {"n": 4, "select": "verifier"},
                              "sampling": {"max_tokens": 120}})
    cfg = spec.verifier.config(spec.model.path, spec.sampling.max_tokens)
    assert (cfg.mode, cfg.template, cfg.model, cfg.max_tokens, cfg.temperature) == ("agree", "{prompt}", None, 120, 0.0)
    score = parse_spec(BASE | {"verifier": {"kind": "llm_judge", "mode": "score", "reason": True,
                                            "model": "Qwen/Qwen2.5-0.5B-Instruct"}}).verifier.config("m", 100)
    assert score.max_tokens == 256 and score.model == "Qwen/Qwen2.5-0.5B-Instruct" and "{response}" in score.template
    assert "from 0 to 5." in parse_spec(BASE | {"verifier": {"kind": "llm_judge", "mode": "score", "score_max": 5}}
                                        ).verifier.config("m", 100).template
    yes = parse_spec(BASE | {"verifier": {"kind": "llm_judge", "mode": "yes_prob", "model": "embedded:tiny-adder",
                                          "yes_tokens": ["Y"]}}).verifier.config("embedded:tiny-adder", 100)
    # A judge model equal to the job's is the job's own engine.
    assert yes.max_tokens == 1 and yes.model is None and yes.yes_tokens == ("Y",)
    assert parse_spec(BASE | {"verifier": "arithmetic_steps"}).verifier == "arithmetic_steps"


@pytest.mark.parametrize("judge, message", [
    ({"mode": "score", "template": "{prompt} rate it"}, r"template must contain \{response\} in mode 'score'"),
    ({"mode": "yes_prob", "template": "{prompt}?"}, r"template must contain \{response\} in mode 'yes_prob'"),
    ({"mode": "agree", "template": "{prompt} {response}"}, r"template must not contain \{response\} in mode 'agree'"),
    ({"mode": "score", "template": "{response} only"}, r"template must contain \{prompt\}"),
    ({"mode": "agree", "reason": True}, r"reason applies only to mode 'score'"),
    ({"mode": "yes_prob", "max_tokens": 8}, r"max_tokens must be 1"),
    ({"mode": "score", "score_pattern": "Score: ("}, r"score_pattern is not a valid regex"),
    ({"mode": "score", "score_pattern": r"Score: \d+"}, r"score_pattern needs a capture group"),
    ({"mode": "score", "score_max": 0}, r"verifier\.llm_judge\.score_max"),
    ({"mode": "yes_prob", "yes_tokens": []}, r"verifier\.llm_judge\.yes_tokens"),
    ({"mode": "yes_prob", "yes_tokens": [" "]}, r"yes_tokens must not hold empty"),
    ({"mode": "vote"}, r"verifier\.llm_judge\.mode"),
    ({}, r"verifier\.llm_judge\.mode: Field required"),
    ({"mode": "agree", "kind": "judge"}, r"verifier\.llm_judge\.kind"),
    ({"mode": "agree", "temprature": 1}, r"verifier\.llm_judge\.temprature"),
])
def test_invalid_judge_specs_name_the_field_and_rule(judge, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(BASE | {"verifier": {"kind": "llm_judge"} | judge})


def test_unknown_verifier_name_fails_at_the_spec():
    with pytest.raises(SpecError, match=r"verifier: .*unknown verifier 'steps'"):
        parse_spec(BASE | {"verifier": "steps"})


def test_tiers_of_the_uniform_policy():
    from tierwise.jobs.row_programs import policy_tier

    assert parse_spec(BASE).policy.tier == "sample"
    think = parse_spec(BASE | {"policy": {"n": 4, "tier": "think"}, "sampling": {"max_tokens": 50}})
    tier = policy_tier(think.policy, think.sampling)
    assert (tier.name, tier.n, tier.max_tokens) == ("think", 4, 200)  # default: 4 x sampling.max_tokens
    spec = parse_spec(BASE | {"verifier": "arithmetic_steps",
                              "policy": {"tier": "search", "search": {"beam_width": 2, "max_steps": 9}}})
    tier = policy_tier(spec.policy, spec.sampling)
    assert (tier.name, tier.beam_width, tier.expansions, tier.max_steps, tier.step_stop, tier.allocate) == (
        "search", 2, 4, 9, "\n", "by_score")
    assert policy_tier(parse_spec(BASE).policy, spec.sampling).name == "single"


@pytest.mark.parametrize("patch, message", [
    ({"policy": {"tier": "search"}}, r"policy.tier 'search' needs a `verifier`"),
    ({"policy": {"tier": "deep"}}, r"policy.uniform.tier"),
    ({"policy": {"think_max_tokens": 500}}, r"policy.think_max_tokens applies only with policy.tier 'think'"),
    ({"policy": {"tier": "think", "think_max_tokens": 10}}, r"policy.think_max_tokens \(10\) must be at least"),
    ({"policy": {"search": {}}, "verifier": "v:f"}, r"policy.search applies only with policy.tier 'search'"),
    ({"policy": {"tier": "search", "n": 4}, "verifier": "v:f"}, r"policy.n does not apply to policy.tier 'search'"),
    ({"policy": {"tier": "search", "search": {"beam_width": 0}}, "verifier": "v:f"},
     r"policy.uniform.search.beam_width"),
    ({"policy": {"tier": "search", "search": {"step_stop": ""}}, "verifier": "v:f"},
     r"policy.uniform.search.step_stop"),
    ({"policy": {"tier": "search", "search": {"allocate": "greedy"}}, "verifier": "v:f"},
     r"policy.uniform.search.allocate"),
    ({"policy": {"tier": "search"}, "verifier": "v:f", "sampling": {"temperature": 0}},
     r"needs sampling.temperature > 0"),
])
def test_invalid_tier_settings_name_the_field(patch, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(BASE | patch)


def test_verified_yield_needs_a_verifier():
    with pytest.raises(SpecError, match=r"policy.objective 'verified_yield' needs a `verifier`"):
        parse_spec(BASE | {"policy": {"kind": "adaptive", "objective": "verified_yield"}})
    spec = parse_spec(BASE | {"policy": {"kind": "adaptive", "objective": "verified_yield", "yield_cap": 2},
                              "verifier": "arithmetic_steps"})
    assert spec.policy.objective == "verified_yield" and spec.policy.yield_cap == 2
    assert parse_spec(BASE | {"policy": {"kind": "adaptive"}}).policy.yield_cap == 4


def test_adaptive_driver_passes_yield_cap_to_the_plan_config():
    from tierwise.jobs.adaptive_driver import AdaptiveDriver
    from tierwise.pipelines.data.io import Part

    spec = parse_spec(BASE | {"policy": {"kind": "adaptive", "objective": "verified_yield", "yield_cap": 3},
                              "verifier": "arithmetic_steps"})
    driver = AdaptiveDriver(spec, [Part(i, "in.parquet", 10 * i, 10) for i in range(4)], {})
    assert driver.config.yield_cap == 3


def test_abort_failed_steps_resolves_per_policy_and_verifier():
    from tierwise.jobs.spec import aborts_failed_steps

    adaptive = {"kind": "adaptive", "select": "verifier"}
    # Adaptive: on when the verifier has a prefix check; uniform (the plain baseline): off unless asked.
    assert aborts_failed_steps(parse_spec(BASE | {"policy": adaptive, "verifier": "arithmetic_steps"}))
    assert not aborts_failed_steps(parse_spec(BASE | {"policy": {"kind": "adaptive"}}))
    assert not aborts_failed_steps(parse_spec(BASE | {"policy": adaptive | {"abort_failed_steps": False},
                                                      "verifier": "arithmetic_steps"}))
    assert not aborts_failed_steps(parse_spec(BASE | {"policy": {"n": 4}, "verifier": "arithmetic_steps"}))
    assert aborts_failed_steps(parse_spec(BASE | {"policy": {"n": 4, "abort_failed_steps": True},
                                                  "verifier": "arithmetic_steps"}))
    # A user verifier has a prefix check only as its attribute `prefix_ok`.
    assert not aborts_failed_steps(parse_spec(BASE | {"policy": adaptive, "verifier": "math:isclose"}))
    with pytest.raises(SpecError, match=r"policy.abort_failed_steps: verifier 'math:isclose' has no prefix check"):
        aborts_failed_steps(parse_spec(BASE | {"policy": {"abort_failed_steps": True}, "verifier": "math:isclose"}))
    with pytest.raises(SpecError, match=r"policy.abort_failed_steps needs a `verifier` with a prefix check"):
        parse_spec(BASE | {"policy": {"n": 2, "abort_failed_steps": True}})


def test_max_samples_per_row_defaults_to_four_k_and_is_at_least_k():
    pol = parse_spec(BASE | {"policy": {"kind": "adaptive", "calibration_samples": 10}}).policy
    assert pol.sample_cap == 40
    assert parse_spec(BASE | {"policy": {"kind": "adaptive", "max_samples_per_row": 12}}).policy.sample_cap == 12
    with pytest.raises(SpecError, match=r"policy.max_samples_per_row must be at least policy.calibration_samples"):
        parse_spec(BASE | {"policy": {"kind": "adaptive", "max_samples_per_row": 8}})


@pytest.mark.parametrize("extra, named", [
    ({"ladder": ["skip", "think"]}, "ladder"),
    ({"calibration_from": "s3://b/samples.parquet"}, "calibration_from"),
    ({"difficulty": {"estimators": ["pilot", "learned"], "learned": "m.json"}}, "learned"),
])
def test_sequential_planner_refuses_what_only_the_calibrated_one_runs(extra, named):
    base = {"input": {"path": "x"}, "output": {"path": "y"}, "budget": {"amount": 1}}
    assert parse_spec(base | {"policy": {"kind": "adaptive", "planner": "sequential"}}).policy.planner == "sequential"
    with pytest.raises(SpecError, match=named):
        parse_spec(base | {"policy": {"kind": "adaptive", "planner": "sequential"} | extra})
    parse_spec(base | {"policy": {"kind": "adaptive", "planner": "calibrated"} | extra})
