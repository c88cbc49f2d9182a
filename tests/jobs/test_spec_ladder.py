"""The adaptive policy's ladder (``policy.ladder``): defaults, the rungs' settings, and the rules."""

import pytest

from tierwise.jobs.row_programs import rung_tiers
from tierwise.jobs.rung_calibration import rung_parts
from tierwise.jobs.spec import SpecError, parse_spec
from tierwise.pipelines.data import io

BASE = {"input": {"path": "in.parquet"}, "output": {"path": "out"}, "budget": {"amount": 1000}}


def adaptive(**policy) -> dict:
    return BASE | {"policy": {"kind": "adaptive"} | policy}


def test_default_ladder_is_the_sampling_rung_alone():
    pol = parse_spec(adaptive()).policy
    assert pol.ladder is None and pol.rungs == () and pol.sampling_rung
    assert rung_tiers(parse_spec(adaptive())) == ()


def test_ladder_with_think_and_search_builds_their_row_programs():
    spec = parse_spec(adaptive(ladder=["best_of_n", "think", "search"], select="verifier", think_max_tokens=600,
                               search={"beam_width": 2, "expansions": 3}) | {"verifier": "arithmetic_steps",
                                                                              "sampling": {"max_tokens": 150}})
    assert spec.policy.rungs == ("think", "search") and spec.policy.sampling_rung
    think, search = rung_tiers(spec)
    assert (think.name, think.n, think.max_tokens, think.temperature) == ("think", 1, 600, 0.0)  # one greedy pass
    assert (search.name, search.beam_width, search.expansions, search.max_tokens) == ("search", 2, 3, 150)
    only = parse_spec(adaptive(ladder=["skip", "think"], think_samples=3, select="verifier") | {"verifier": "v:f"})
    assert only.policy.rungs == ("think",) and not only.policy.sampling_rung
    think = rung_tiers(only)[0]
    assert (think.n, think.temperature, think.weighted) == (3, 0.7, True)
    assert rung_tiers(parse_spec(adaptive(ladder=["think"])))[0].max_tokens == 4 * 256


@pytest.mark.parametrize("patch, message", [
    (adaptive(ladder=["think", "ponder"]), r"policy\.adaptive\.ladder\.1"),
    (adaptive(ladder=[]), r"policy\.adaptive\.ladder"),
    (adaptive(ladder=["vote", "think", "vote"]), r"policy\.ladder lists \['vote'\] more than once"),
    (adaptive(ladder=["skip"]), r"policy\.ladder needs a rung beyond 'skip'"),
    (adaptive(ladder=["best_of_n"]), r"policy\.ladder: 'best_of_n' .* needs policy\.select 'verifier'"),
    (adaptive(ladder=["vote"], select="verifier") | {"verifier": "v:f"}, r"policy\.ladder: .* is 'best_of_n'"),
    (adaptive(think_max_tokens=900), r"policy\.think_max_tokens / policy\.think_samples apply only"),
    (adaptive(ladder=["vote"], think_samples=2), r"policy\.think_max_tokens / policy\.think_samples apply only"),
    (adaptive(ladder=["think"], search={"beam_width": 2}), r"policy\.search applies only"),
    (adaptive(ladder=["search"]), r"policy\.ladder 'search' needs a `verifier`"),
    (adaptive(ladder=["search"]) | {"verifier": "v:f", "sampling": {"temperature": 0}},
     r"needs sampling\.temperature > 0"),
    (adaptive(ladder=["think"], calibration_from="old.parquet"), r"cannot be planned from policy\.calibration_from"),
    (adaptive(ladder=["think"], think_max_tokens=100), r"policy\.think_max_tokens \(100\) must be at least"),
    (adaptive(ladder=["think"], rung_calibration_rows=2), r"policy\.adaptive\.rung_calibration_rows"),
    (adaptive(ladder=["vote"], rung_chat_template_kwargs={"think": {"enable_thinking": True}}),
     r"names rungs \['think'\] that policy\.ladder does not have"),
    (adaptive(ladder=["think"], rung_chat_template_kwargs={"vote": {}}), r"rung_chat_template_kwargs\.vote"),
    (adaptive(ladder=["think"], rung_chat_template_kwargs={"think": {"enable_thinking": True}})
     | {"prompt": {"chat": False}}, r"rung_chat_template_kwargs needs the chat template"),
])
def test_invalid_ladders_name_the_field(patch, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(patch)


def test_thinking_on_off_rungs_read_their_own_prompt_rendering():
    """A hybrid model's short mode for the pilot and sampling rungs (the job's chat_template_kwargs) and its long
    mode for the think rung (the rung's own over them): the think rung's requests name its rendering."""
    from tierwise.jobs.spec import prompt_config
    from tierwise.pipelines.tiers.base import RowState

    spec = parse_spec(adaptive(ladder=["vote", "think"], rung_chat_template_kwargs={"think": {"enable_thinking": True}})
                      | {"prompt": {"chat_template_kwargs": {"enable_thinking": False, "x": 1}}})
    cfg = prompt_config(spec)
    assert cfg.chat_template_kwargs == {"enable_thinking": False, "x": 1}
    assert cfg.variant_kwargs() == {"think": {"enable_thinking": True, "x": 1}}
    (think,) = rung_tiers(spec)
    assert think.next_request(RowState("r", 3), 7).prompt_variant == "think"
    plain = parse_spec(adaptive(ladder=["vote", "think"]))
    assert rung_tiers(plain)[0].next_request(RowState("r", 3), 7).prompt_variant is None
    assert prompt_config(plain).variants == {}


def test_rung_rows_come_from_every_calibration_part_in_proportion():
    parts = [io.Part(7, "a.parquet", 0, 20), io.Part(3, "b.parquet", 40, 20), io.Part(9, "b.parquet", 60, 10)]
    sub = rung_parts(parts, 10)
    assert [(p.part_id, p.file, p.start, p.length) for p in sub] == [
        (0, "a.parquet", 0, 4), (1, "b.parquet", 40, 4), (2, "b.parquet", 60, 2)]
    assert sum(p.length for p in rung_parts(parts, 500)) == 50
