"""Planning math: budget ledger, stopping, calibration, curves, allocation, the adaptive planners."""
