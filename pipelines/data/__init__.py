"""Rows in and out: input and output Parquet, records, validation, manifests, leases, reports."""
