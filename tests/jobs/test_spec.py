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
