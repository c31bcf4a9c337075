"""Audits: explanation methods of one model scored on a data set (`audit`), by one per-batch function
(`audit_batch`) that the local driver and cluster engines share."""
from .batch import Plan, audit_batch
from .data import Data, Record, read_data
from .run import audit

__all__ = ["Data", "Plan", "Record", "audit", "audit_batch", "read_data"]
