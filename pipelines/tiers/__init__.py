"""Row programs (tiers) and what they need: answers, verifiers, judges, reasoning, search, tasks."""
