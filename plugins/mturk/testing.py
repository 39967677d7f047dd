"""Test helpers for code that calls MTurk: a local fake requester service.

``FakeMTurk`` serves MTurk's JSON API on 127.0.0.1 for a real boto3 client and
simulates workers, time and faults. See ``caqe_mturk.fake_service`` for details.
"""

from caqe_mturk.fake_service import (
    EXTERNAL_SUBMIT_PATH,
    MASTERS_PRODUCTION,
    MASTERS_SANDBOX,
    WORKER_ADULT,
    WORKER_LOCALE,
    WORKER_NUMBER_HITS_APPROVED,
    WORKER_PERCENT_ASSIGNMENTS_APPROVED,
    FakeClock,
    FakeMTurk,
    MTurkServiceError,
    Notification,
    Payment,
    RecordedCall,
    SimulationError,
    WorkerProfile,
    build_answer_xml,
    format_money,
    make_error,
    parse_answer_xml,
)

__all__ = [
    "EXTERNAL_SUBMIT_PATH",
    "MASTERS_PRODUCTION",
    "MASTERS_SANDBOX",
    "WORKER_ADULT",
    "WORKER_LOCALE",
    "WORKER_NUMBER_HITS_APPROVED",
    "WORKER_PERCENT_ASSIGNMENTS_APPROVED",
    "FakeClock",
    "FakeMTurk",
    "MTurkServiceError",
    "Notification",
    "Payment",
    "RecordedCall",
    "SimulationError",
    "WorkerProfile",
    "build_answer_xml",
    "format_money",
    "make_error",
    "parse_answer_xml",
]
