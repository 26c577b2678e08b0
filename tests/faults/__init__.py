"""Fault-injection tests: boto3 talks to a real local S3 server through :mod:`.proxy`."""
