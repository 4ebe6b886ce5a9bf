"""S3-staged DynamoDB backfill: export -> transform -> load, with the state in the staging store."""

__version__ = "0.1.0"
