"""The baseline: a minimal matrix-nio bot that answers every message with a fixed notice.

    python -m bench.echo_bot --homeserver URL --user @echo:localhost --password-file F --store DIR

Same library, same kind of room (encrypted DM), same reply shape (an `m.notice` replying
to the message) as referral-bot, and nothing else: no database, no parsing, no trust
decisions (it sends with `ignore_unverified_devices=True`). Each message is answered in
its own task, so sends overlap as much as the homeserver allows. Prints READY once synced.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    LoginResponse,
    MatrixRoom,
    RoomMessageText,
    SyncResponse,
)
from nio.store import SqliteStore

NOTICE = "Received."


class EchoBot:
    def __init__(self, homeserver: str, user_id: str, password: str, store: Path) -> None:
        store.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.client = AsyncClient(
            homeserver,
            user_id,
            store_path=str(store),
            config=AsyncClientConfig(
                store=SqliteStore,
                encryption_enabled=True,
                max_limit_exceeded=None,
                max_timeouts=None,
            ),
        )
        self.ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        resp = await self.client.login(self.password, device_name="echo-bot")
        if not isinstance(resp, LoginResponse):
            raise SystemExit(f"echo bot: login failed: {resp}")
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        self.client.add_event_callback(self._on_message, RoomMessageText)
        self.client.add_response_callback(self._on_sync, SyncResponse)
        await self.client.sync_forever(timeout=30_000, full_state=True, loop_sleep_time=0)

    async def _on_sync(self, resp: Any) -> None:
        for room_id in resp.rooms.invite:
            await self.client.join(room_id)
        if not self.ready.is_set():
            self.ready.set()
            print("READY", flush=True)

    async def _on_message(self, room: MatrixRoom, event: RoomMessageText) -> None:
        if event.sender == self.client.user_id or not self.ready.is_set():
            return
        task = asyncio.create_task(self._reply(room.room_id, event.event_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reply(self, room_id: str, event_id: str) -> None:
        await self.client.room_send(
            room_id,
            "m.room.message",
            {
                "msgtype": "m.notice",
                "body": NOTICE,
                "m.relates_to": {"m.in_reply_to": {"event_id": event_id}},
            },
            ignore_unverified_devices=True,
        )


async def _main(args: argparse.Namespace) -> None:
    bot = EchoBot(args.homeserver, args.user, args.password_file.read_text().strip(), args.store)
    runner = asyncio.create_task(bot.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    runner.cancel()
    stopper.cancel()
    await bot.client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="minimal encrypted echo bot (baseline)")
    parser.add_argument("--homeserver", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", type=Path, required=True)
    parser.add_argument("--store", type=Path, required=True)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
