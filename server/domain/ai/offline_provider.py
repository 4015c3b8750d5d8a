"""The offline coach: deterministic, no network, clearly labelled.

It lets the product run with no API key (and is the last resort when every
model provider is down). The reply is built from the retrieved passages: it
quotes the top ones with their numbered citations ``[1]``, ``[2]``, ... and
ends with a coaching question built from the user's message. Without passages
it says it is the offline coach and gives a short, generic coaching frame.

The same prompt always gives the same text; it streams a few words per delta
without any delay, and its usage is the four-characters-per-token estimate.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Sequence

from server.domain.ai.providers import (
    Passage,
    Prompt,
    StreamEvent,
    TextDelta,
    Usage,
    estimate_input_tokens,
    estimate_text_tokens,
)

NAME = "offline"
MODEL = "lounges-offline-1"
LABEL = "(Offline coach — no AI model is connected, so this answer is assembled from your material.)"
QUOTED_PASSAGES = 3
QUOTE_CHARS = 240
QUESTION_CHARS = 160
WORDS_PER_DELTA = 3

_WORD = re.compile(r"\S+\s*")
_SPACE = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_SPEAKER = re.compile(r"^[^:\n]{1,60}:\s+")  # "Name: " before a group-lounge message

_FOLLOW_UPS = (
    "Which of these points fits your situation best, and what is one small step you could take this week?",
    "What would change for you if you applied one of these ideas tomorrow, and what might get in the way?",
    "Which idea here feels most doable right now, and how will you know it worked?",
)
_FRAMES = (
    (
        "1. What outcome would you like, in one sentence?\n"
        "2. What have you already tried, and what happened?\n"
        "3. What is one small step you could take in the next 48 hours?"
    ),
    (
        "1. Why does this matter to you right now?\n"
        "2. What is within your control here, and what is not?\n"
        "3. What would a first, low-risk experiment look like?"
    ),
    (
        "1. What would success look like a month from now?\n"
        "2. What is the biggest obstacle between here and there?\n"
        "3. Who or what could help you with it this week?"
    ),
)


def _one_line(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut at a word boundary to at most ``limit`` characters (… when cut)."""
    text = _one_line(text)
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:-–—")
    return cut + "…"


def _quote(passage: Passage) -> str:
    """The passage's opening sentences, up to :data:`QUOTE_CHARS` characters."""
    text = _one_line(passage.text)
    sentences = _SENTENCE_END.split(text)
    quote = ""
    for sentence in sentences:
        candidate = f"{quote} {sentence}".strip()
        if quote and len(candidate) > QUOTE_CHARS:
            break
        quote = candidate
    return _shorten(quote, QUOTE_CHARS)


def _question(prompt: Prompt) -> str:
    """The latest user message (without a group lounge's "Name: " prefix)."""
    for turn in reversed(prompt.turns):
        if turn.role == "user" and turn.content.strip():
            return _shorten(_SPEAKER.sub("", turn.content.strip(), count=1), QUESTION_CHARS)
    return ""


def _pick(options: Sequence[str], seed: str) -> str:
    """A stable choice (the same seed always picks the same option, across processes)."""
    digest = hashlib.sha256(seed.encode()).digest()
    return options[digest[0] % len(options)]


def offline_reply(prompt: Prompt) -> str:
    """The offline coach's full reply to ``prompt`` (deterministic)."""
    question = _question(prompt)
    topic = f"“{question.rstrip('?.! ')}”" if question else "this"
    if prompt.passages:
        top = prompt.passages[:QUOTED_PASSAGES]
        lines = [LABEL, "", f"Here is what your material says that bears on {topic}:", ""]
        for n, passage in enumerate(top, start=1):
            lines.append(f"- {passage.title} [{n}]: “{_quote(passage)}”")
        lines += ["", _pick(_FOLLOW_UPS, question)]
        if len(prompt.passages) > len(top):
            lines += ["", f"({len(prompt.passages) - len(top)} more related passage(s) were found.)"]
        return "\n".join(lines)
    return "\n".join(
        [
            LABEL,
            "",
            "I am the offline coach: I can't give you a tailored answer right now, "
            f"and none of your notes or the lounge's files matched {topic}. "
            "These questions usually help to move forward:",
            "",
            _pick(_FRAMES, question),
            "",
            "Write down your answers (a note works well): I will quote your notes when they match your question.",
        ]
    )


class OfflineProvider:
    """The built-in provider: name ``offline``, model ``lounges-offline-1``, never fails."""

    name = NAME
    model = MODEL

    def __repr__(self) -> str:
        return "OfflineProvider()"

    async def stream(self, prompt: Prompt) -> AsyncIterator[StreamEvent]:
        text = offline_reply(prompt)
        words = _WORD.findall(text)
        for start in range(0, len(words), WORDS_PER_DELTA):
            yield TextDelta("".join(words[start : start + WORDS_PER_DELTA]))
        yield Usage(input_tokens=estimate_input_tokens(prompt), output_tokens=estimate_text_tokens(text))
