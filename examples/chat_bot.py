"""A chat-bot handler, framework-agnostic: one async call per message.

It queues a job, reports progress by editing one message, and handles ``/cancel`` (or the
framework cancelling the handler): the ComfyUI job is then taken off the server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

from dreamgen_async import DreamGenerator, DreamgenError, Event, Executing, Progress


class Message(Protocol):
    """What the bot framework gives us to talk back: a message we can edit."""

    async def edit(self, text: str) -> None: ...


class ImageBot:
    """One generator for the whole bot; at most one running job per chat."""

    def __init__(self, gen: DreamGenerator) -> None:
        self.gen = gen
        self.running: dict[str, asyncio.Task[Path | None]] = {}

    async def on_message(
        self, chat: str, text: str, image: bytes | None, reply: Message
    ) -> Path | None:
        """Handle one message: ``/cancel``, or a prompt (with an image: img2img)."""
        if text.strip() == "/cancel":
            task = self.running.get(chat)
            if task is None:
                await reply.edit("nothing to cancel")
            else:
                task.cancel()
            return None
        task = asyncio.create_task(self._generate(text, image, reply))
        self.running[chat] = task
        this = asyncio.current_task()
        try:
            return await task
        except asyncio.CancelledError:
            await reply.edit("cancelled")
            if this is not None and this.cancelling():
                raise  # the framework cancelled the handler itself: let it know
            return None  # a /cancel from the user
        finally:
            self.running.pop(chat, None)

    async def _generate(self, text: str, image: bytes | None, reply: Message) -> Path | None:
        await reply.edit("queued…")
        status: list[str] = []

        def on_progress(event: Event) -> None:
            if isinstance(event, Progress):
                status.append(f"sampling {event.value:g}/{event.max:g}")
            elif isinstance(event, Executing) and event.node is not None:
                status.append("working…")

        async def pump() -> None:  # edits at most as often as the chat API allows
            shown = ""
            while True:
                if status and status[-1] != shown:
                    shown = status[-1]
                    await reply.edit(shown)
                await asyncio.sleep(0.05)

        editor = asyncio.create_task(pump())
        try:
            if image is not None:
                result = await self.gen.generate_from_image(
                    image, text, 0.6, on_progress=on_progress
                )
            else:
                result = await self.gen.generate_from_prompt(text, on_progress=on_progress)
        except DreamgenError as exc:
            await reply.edit(f"sorry, that failed: {exc}")
            return None
        finally:
            editor.cancel()
        await reply.edit(f"done: {result.path.name} (seed {result.seed})")
        return result.path
