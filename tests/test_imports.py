"""pipelines/ must import without Ray or vLLM (lazy heavy engines)."""

import os
import subprocess
import sys

IMPORTS = """
import tierwise.pipelines.data.io, tierwise.pipelines.plan.budget, tierwise.pipelines.tiers.base, tierwise.pipelines.data.validation, tierwise.pipelines.tiers.answers
import tierwise.pipelines.data.records, tierwise.pipelines.data.report, tierwise.pipelines.tiers.verifiers, tierwise.pipelines.tiers.judge, tierwise.jobs.spec
print('ok')
"""


def test_pipelines_import_without_ray_or_vllm(tmp_path):
    # Shadow the heavy packages with ones that fail on import.
    for name in ("ray", "vllm", "torch"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked in this test')")
    env = os.environ | {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}"}
    out = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
