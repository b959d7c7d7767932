"""Summarize Lambda: after the Distributed Map, turn ResultWriter output and records into a summary."""
from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer

from ffleet.storage import s3_client
from ffleet.summarize import parse_event, publish_metrics, summarize_event

# Created once per execution environment; settings come from the template's Globals.
logger = Logger()
tracer = Tracer()
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "ffleet")

_s3 = None


def _client():
    # Made on first use, so tests can point it at moto before the first invocation.
    global _s3
    if _s3 is None:
        _s3 = s3_client()
    return _s3


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
def handler(event, context):  # noqa: ARG001
    request = parse_event(event)
    result = summarize_event(request, _client())
    publish_metrics(metrics, result.summary)
    metrics.add_metadata(key="execution_name", value=request.execution_name)
    short = result.short()
    logger.info("run summarized", extra={"summary": short})
    return short
