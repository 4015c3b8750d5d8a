"""A thread's title, written after its first exchange (while it still has the default title)."""

from __future__ import annotations

import contextlib
import re

from server.domain.chat.threads import DEFAULT_TITLE
from server.domain.llm.providers import ChatTurn, Prompt, ProviderError, TextDelta, stream_reply
from server.domain.llm.registry import build_providers
from server.domain.tables.chat import ChatThread
from server.foundation.state import AppState

TITLE_CHARS = 60
_INSTRUCTION = "Write a title of at most six words for this conversation. Answer with the title only, no quotes."
_SPACE = re.compile(r"\s+")


def heuristic_title(question: str) -> str:
    """The question's first sentence, shortened on a word boundary."""
    first = re.split(r"(?<=[.!?])\s", _SPACE.sub(" ", question).strip(), maxsplit=1)[0].rstrip(".!?")
    if len(first) <= TITLE_CHARS:
        return first or "Conversation"
    return first[:TITLE_CHARS].rsplit(" ", 1)[0] + "…"


async def model_title(state: AppState, question: str, answer: str) -> str | None:
    """Ask the first provider that is a real model (the offline coach writes no titles)."""
    providers = [p for p in build_providers(state.settings) if p.name != "offline"]
    if not providers:
        return None
    prompt = Prompt(
        system=_INSTRUCTION,
        turns=[ChatTurn(role="user", content=f"Question: {question[:1000]}\n\nAnswer: {answer[:1000]}")],
        max_output_tokens=20,
    )
    parts: list[str] = []
    with contextlib.suppress(ProviderError):
        async with contextlib.aclosing(stream_reply(providers, prompt)) as events:
            async for _, event in events:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
    title = _SPACE.sub(" ", "".join(parts)).strip().strip("\"'").rstrip(".")
    return title[:TITLE_CHARS].strip() or None


async def title_thread(state: AppState, channel: str, question: str, answer: str) -> str | None:
    """Title the thread behind ``channel`` if it still has the default title; returns the new title."""
    thread = await ChatThread.select(ChatThread.id, ChatThread.title).where(ChatThread.channel == channel).first()
    if thread is None or thread["title"] != DEFAULT_TITLE:
        return None
    title = await model_title(state, question, answer) or heuristic_title(question)
    updated = (
        await ChatThread.update({ChatThread.title: title})
        .where(ChatThread.id == thread["id"], ChatThread.title == DEFAULT_TITLE)
        .returning(ChatThread.id)
    )
    return title if updated else None
