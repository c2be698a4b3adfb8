"""Skeleton data: readers of raw formats, the Parquet schema, preprocessing transforms."""
