"""Runs a job on a 3-node ``ray.cluster_utils.Cluster`` and removes the worker node
hosting the replica mid-run. Prints one JSON line for the test to check.

    python tests/support/multinode_job.py INPUT.parquet OUTPUT_DIR
"""

import json
import sys
import threading
import time
from pathlib import Path

if __name__ == "__main__":
    import ray
    from ray.cluster_utils import Cluster

    from tierwise.jobs.runner import run_job, start_pool
    from tierwise.jobs.spec import parse_spec
    from tierwise.ray_cluster.cluster import WORKER_ENV

    inp, out = sys.argv[1], Path(sys.argv[2])
    # Head: the driver and the ledger only. Two worker nodes, one replica slot each.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "env_vars": WORKER_ENV})
    workers = [cluster.add_node(num_cpus=1, env_vars=WORKER_ENV) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": WORKER_ENV})
    removed = []

    def remove_replica_node():
        t0 = time.monotonic()
        while len(list(out.glob("part-*.parquet"))) < 2:
            if time.monotonic() - t0 > 400:
                return
            time.sleep(0.2)
        node_id = next(iter(pool.info().values()))["node"]
        victim = next(w for w in workers if w.node_id == node_id)
        cluster.remove_node(victim, allow_graceful=False)
        removed.append(node_id)

    spec = parse_spec({
        "input": {"path": inp, "gold_column": "gold"},
        "output": {"path": str(out), "part_rows": 10},
        "model": {"max_model_len": 256}, "sampling": {"max_tokens": 200},
        "replicas": {"count": 1, "num_cpus": 1, "parts_per_replica": 1},
        "budget": {"amount": 1e7}, "policy": {"n": 2}, "answer_extractor": "arithmetic",
    })
    pool = start_pool(spec)
    threading.Thread(target=remove_replica_node, daemon=True).start()
    report = run_job(spec, show_progress=False, pool=pool)
    pool.shutdown()
    print("RESULT " + json.dumps({"removed": removed, "complete": report["complete"], "status": report["status"],
                      "spent": report["spent"]}))
    ray.shutdown()
    cluster.shutdown()
