import pytest

from jobs.spec import SpecError, load_spec, parse_spec

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


def test_tiers_of_the_uniform_policy():
    from jobs.runner import policy_tier

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
