"""The storage layer: every SQL statement of the bot, split by domain.

`engine.Store` owns the database file and hands out `tx.Tx` transactions; `Tx` is composed
from one store per concern (kv, inbox, referrals, meetings, record, outbox, metrics,
integrity, retention). Below it only `schemas/`; nothing here imports `handlers` or `bot`.
"""
