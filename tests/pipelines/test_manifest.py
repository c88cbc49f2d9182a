"""Job identity (pure): the fingerprint, what a diff names, which committed parts are kept."""

from tierwise.pipelines.data.manifest import build_manifest, classify_parts, diff, identity_fields, ids_hash

SPEC = {
    "name": "job", "input": {"path": "in.parquet", "id_column": "id", "storage_options": {"key": "k"}},
    "output": {"path": "out/", "part_rows": 10, "keep_samples": False, "storage_options": {}},
    "model": {"path": "embedded:tiny-adder", "engine_kwargs": {"gpu_memory_utilization": 0.9, "quantization": "fp8"}},
    "replicas": {"count": 2}, "sampling": {"temperature": 0.7, "max_tokens": 200},
    "budget": {"amount": 1e5, "unit": "tokens"}, "policy": {"kind": "uniform", "n": 2},
    "answer_extractor": "arithmetic", "verifier": None,
}
FILES = [{"path": "/data/in.parquet", "size": 21873, "mtime_ns": 1}]


def manifest(spec=SPEC, files=FILES, rows=30, parts=("a", "b", "c")):
    return build_manifest(spec, files, rows, list(parts))


def with_(path: str, value):
    import copy

    spec = copy.deepcopy(SPEC)
    *head, last = path.split(".")
    node = spec
    for k in head:
        node = node[k]
    node[last] = value
    return spec


def test_identity_keeps_answer_fields_and_drops_spending_location_and_tuning():
    f = identity_fields(SPEC)
    assert f["policy.n"] == 2 and f["model.path"] == "embedded:tiny-adder" and f["budget.unit"] == "tokens"
    assert f["model.engine_kwargs.quantization"] == "fp8" and f["verifier"] is None
    for gone in ("budget.amount", "replicas.count", "output.path", "input.path", "input.storage_options.key", "name",
                 "model.engine_kwargs.gpu_memory_utilization"):
        assert gone not in f


def test_same_job_has_no_diff_and_spending_or_tuning_changes_are_not_changes():
    assert diff(manifest(), manifest()) == []
    assert diff(manifest(), manifest(with_("budget.amount", 5e5))) == []
    assert diff(manifest(), manifest(with_("replicas.count", 8))) == []
    assert diff(manifest(), manifest(with_("model.engine_kwargs.gpu_memory_utilization", 0.5))) == []


def test_diff_names_each_change():
    """Issue 16: a new input at the same path, and --set policy.n=4, were both 'resumed'."""
    grown = [{"path": "/data/in.parquet", "size": 22010, "mtime_ns": 2}]
    assert diff(manifest(), manifest(files=grown)) == ["input file in.parquet changed: mtime_ns 1 -> 2, size 21,873 -> 22,010"]
    assert diff(manifest(), manifest(with_("policy.n", 4))) == ["policy.n: 2 -> 4"]
    assert diff(manifest(), manifest(with_("model.path", "Qwen/Qwen2.5-0.5B"))) == [
        "model.path: embedded:tiny-adder -> Qwen/Qwen2.5-0.5B"]
    assert diff(manifest(), manifest(rows=31)) == ["input rows 30 -> 31"]
    two = FILES + [{"path": "/data/more.parquet", "size": 5, "mtime_ns": 3}]
    assert diff(manifest(), manifest(files=two)) == ["input file more.parquet is new"]
    assert diff(manifest(files=two), manifest()) == ["input file more.parquet is gone"]
    assert diff(manifest(), manifest(with_("answer_extractor", "last_line"))) == [
        "answer_extractor: arithmetic -> last_line"]
    assert diff(manifest(), manifest(with_("budget.unit", "usd"))) == ["budget.unit: tokens -> usd"]
    # Unchanged files and fields but different ids in a part: named too.
    assert diff(manifest(), manifest(parts=("a", "x", "c"))) == ["the ids of input part(s) 1 changed"]


def test_ids_hash_is_order_and_content_sensitive():
    assert ids_hash(["a", "b"]) == ids_hash(["a", "b"]) != ids_hash(["b", "a"])
    assert ids_hash(["a,b"]) != ids_hash(["a", "b"])


def summary(rows=10, ok=10, skipped=0):
    return {"rows": rows, "status": {"ok": ok, "skipped_budget": skipped, "error": rows - ok - skipped}}


def test_classify_keeps_matching_parts_and_redoes_the_rest_with_why():
    hashes = ["h0", "h1", "h2", "h3"]
    committed = {0: summary(), 1: summary(), 2: summary(ok=0), 3: summary(ok=0, skipped=10), 7: summary()}
    found = {0: "h0", 1: "tampered", 2: "h2", 3: "h3", 7: "h7"}
    check = classify_parts(committed, found, {2: 10}, hashes, budget_raised=False)
    assert list(check.done) == [0, 3]  # 3: skipped for budget, and the budget was not raised
    assert check.redone() == {"ids_mismatch": [1], "job_errors": [2], "orphans": [7]}
    raised = classify_parts(committed, found, {2: 10}, hashes, budget_raised=True)
    assert list(raised.done) == [0] and raised.budget_skipped == [3]
    # A part only partly skipped keeps its answers: redoing it would pay for them twice.
    part = classify_parts({0: summary(ok=4, skipped=6)}, {0: "h0"}, {}, hashes, budget_raised=True)
    assert list(part.done) == [0]
