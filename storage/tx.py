"""The one transaction type: every domain's statements over one shared connection.

Like Synapse's `DataStore`, composed from one store per concern. Each method lives in the
module of its domain; this class only puts them together.
"""

from __future__ import annotations

from storage.attachments import AttachmentStore
from storage.checkpoints import CheckpointStore
from storage.device_files import DeviceFileStore
from storage.inbox import InboxStore
from storage.integrity import IntegrityStore
from storage.kv import KvStore
from storage.meetings import MeetingStore
from storage.metrics import MetricsStore
from storage.outbox import OutboxStore
from storage.record import RecordStore
from storage.referrals import ReferralStore
from storage.reports import ReportStore
from storage.retention import RetentionStore


class Tx(
    MetricsStore,
    OutboxStore,
    IntegrityStore,
    RetentionStore,
    KvStore,
    RecordStore,
    InboxStore,
    ReferralStore,
    MeetingStore,
    CheckpointStore,
    AttachmentStore,
    ReportStore,
    DeviceFileStore,
):
    """Statements inside one open transaction. Obtain it from `Store.transaction()`."""
