"""Start Lambda: S3 ObjectCreated under jobs/ or manifests/, or the stack's schedule -> one state machine execution per request."""
from __future__ import annotations

import os

import boto3
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from ffleet.joblimits import StackLimits
from ffleet.request import RequestError
from ffleet import manifest_trigger, trigger

logger = Logger()
tracer = Tracer()
metrics = Metrics()

# Checked at cold start, so a misconfigured stack fails loudly on the first event, naming the variable.
STATE_MACHINE_ARN = os.environ.get("STATE_MACHINE_ARN", "")
RESULTS_BUCKET = os.environ.get("RESULTS_BUCKET", "")
SCHEDULED_REQUEST = os.environ.get("SCHEDULED_REQUEST", "")
# The stack's own buckets: a request naming another is rejected before anything starts.
INPUT_BUCKET = os.environ.get("INPUT_BUCKET", "")
OUTPUT_BUCKET = os.environ.get("OUTPUT_BUCKET", "")
LIMITS = StackLimits.from_env()
# A manifest under manifests/ runs with DEFAULT_REQUEST over keys in INPUT_BUCKET; without them it is rejected, saying why.
DEFAULT_REQUEST = os.environ.get("DEFAULT_REQUEST", "")
_missing = [n for n, v in (("STATE_MACHINE_ARN", STATE_MACHINE_ARN), ("RESULTS_BUCKET", RESULTS_BUCKET)) if not v]
if _missing:
    raise RuntimeError(f"start function: environment variable(s) {', '.join(_missing)} not set (see template.yaml)")

s3 = boto3.client("s3")
sfn = boto3.client("stepfunctions")


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
def handler(event, context):
    if trigger.is_schedule_event(event):
        try:
            outcome = trigger.handle_schedule_event(
                event, SCHEDULED_REQUEST, sfn=sfn, state_machine_arn=STATE_MACHINE_ARN, results_bucket=RESULTS_BUCKET,
                input_bucket=INPUT_BUCKET, output_bucket=OUTPUT_BUCKET, limits=LIMITS,
            )
        except RequestError as exc:
            # nowhere to write a .rejected.json: the log and the metric are the report
            logger.error("scheduled request is invalid", extra={"errors": exc.to_dict()["errors"]})
            metrics.add_metric(name="RequestsRejected", unit=MetricUnit.Count, value=1)
            raise
    else:
        outcome = manifest_trigger.handle_trigger_event(
            event, s3=s3, sfn=sfn, state_machine_arn=STATE_MACHINE_ARN, results_bucket=RESULTS_BUCKET, log=logger,
            input_bucket=INPUT_BUCKET, output_bucket=OUTPUT_BUCKET, limits=LIMITS, default_request=DEFAULT_REQUEST,
        )
    metrics.add_metric(name="RunsStarted", unit=MetricUnit.Count, value=len(outcome.started))
    metrics.add_metric(name="DuplicateEvents", unit=MetricUnit.Count, value=len(outcome.already_running))
    metrics.add_metric(name="RequestsRejected", unit=MetricUnit.Count, value=len(outcome.rejected))
    return outcome.to_dict()
