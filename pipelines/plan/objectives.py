"""What a job or a replay maximizes per row (one definition for specs, planners and replay).

- ``accuracy``: the selected answer is correct.
- ``coverage``: some sample is correct (a checker would find it).
- ``verified_yield``: verified samples kept per row, up to a cap (synthetic reasoning traces).
"""

from typing import Literal, get_args

Objective = Literal["accuracy", "coverage", "verified_yield"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
