"""The offline coach: deterministic, no network, clearly labelled.

It lets the product run with no API key (and is the last resort when every
model provider is down). The reply is built from the retrieved passages that
share a word with the question: it quotes the top ones with their numbered
citations (``[n]`` is the passage's number in the prompt) and ends with a
coaching question built from the user's message. Without such passages it
says it is the offline coach and gives a short, generic coaching frame.

The same prompt always gives the same text. It streams one word per delta at
``words_per_second`` (``AI_OFFLINE_WORDS_PER_SECOND``, the pace of a quick
model, so clients can see a stream, cancel it and recover it mid-way; 0 sends
every word at once), and its usage is the four-characters-per-token estimate.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Sequence

from server.domain.llm.providers import (
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
_WORD = re.compile(r"\S+\s*")
_TERM = re.compile(r"[^\W_]{3,}")
_MENTION = re.compile(r"(?<!\w)@coach\b[,:]?\s*", re.IGNORECASE)
# Words too common to make a passage relevant to a question.
_STOPWORDS = frozenset(
    [
        "about",
        "after",
        "again",
        "also",
        "and",
        "any",
        "are",
        "because",
        "been",
        "before",
        "being",
        "but",
        "can",
        "could",
        "did",
        "does",
        "doing",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "into",
        "its",
        "just",
        "like",
        "make",
        "more",
        "most",
        "much",
        "not",
        "now",
        "off",
        "once",
        "only",
        "other",
        "our",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "too",
        "under",
        "until",
        "very",
        "was",
        "way",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
    ]
)
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
    """The latest user message, without a group lounge's "Name: " prefix or the ``@coach`` that asked."""
    for turn in reversed(prompt.turns):
        if turn.role == "user" and turn.content.strip():
            text = _MENTION.sub("", _SPEAKER.sub("", turn.content.strip(), count=1)).strip()
            return _shorten(text, QUESTION_CHARS)
    return ""


def _terms(text: str) -> set[str]:
    return {word for word in _TERM.findall(text.lower()) if word not in _STOPWORDS}


def relevant_passages(prompt: Prompt, question: str) -> list[tuple[int, Passage]]:
    """The prompt's passages (with their 1-based numbers) that share a word with the
    question: retrieval returns its nearest passages even when none is near."""
    wanted = _terms(question)
    return [(n, p) for n, p in enumerate(prompt.passages, start=1) if wanted & _terms(f"{p.title} {p.text}")]


def _pick(options: Sequence[str], seed: str) -> str:
    """A stable choice (the same seed always picks the same option, across processes)."""
    digest = hashlib.sha256(seed.encode()).digest()
    return options[digest[0] % len(options)]


def offline_reply(prompt: Prompt) -> str:
    """The offline coach's full reply to ``prompt`` (deterministic)."""
    question = _question(prompt)
    topic = f"“{question.rstrip('?.! ')}”" if question else "this"
    relevant = relevant_passages(prompt, question)
    if relevant:
        top = relevant[:QUOTED_PASSAGES]
        lines = [LABEL, "", f"Here is what your material says that bears on {topic}:", ""]
        for n, passage in top:
            lines.append(f"- {passage.title} [{n}]: “{_quote(passage)}”")
        lines += ["", _pick(_FOLLOW_UPS, question)]
        if len(relevant) > len(top):
            lines += ["", f"({len(relevant) - len(top)} more related passage(s) were found.)"]
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

    def __init__(self, words_per_second: float = 0.0) -> None:
        self.words_per_second = words_per_second

    def __repr__(self) -> str:
        return f"OfflineProvider(words_per_second={self.words_per_second})"

    async def stream(self, prompt: Prompt) -> AsyncIterator[StreamEvent]:
        text = offline_reply(prompt)
        pause = 1 / self.words_per_second if self.words_per_second > 0 else 0.0
        for n, word in enumerate(_WORD.findall(text)):
            if pause and n:
                await asyncio.sleep(pause)
            yield TextDelta(word)
        yield Usage(input_tokens=estimate_input_tokens(prompt), output_tokens=estimate_text_tokens(text))
