"""Retrieval's Prometheus series: how long the vector search takes and how much it searches
(the asker's notes and the lounge's knowledge files, each part counted up to ``COUNT_CAP``)."""

from __future__ import annotations

from prometheus_client import Histogram

from server.foundation import metrics

SEARCH_SECONDS = Histogram(
    "lounges_retrieval_search_seconds",
    "The vector search of a retrieval (every part side by side), from the question's vector to the merged hits; "
    "when the coach's prompt statement searched small parts itself, that statement's time is included",
    buckets=metrics.FAST_BUCKETS,
)
SEARCHED_CHUNKS = Histogram(
    "lounges_retrieval_searched_chunks",
    "Chunks a retrieval could match (the eligible parts' sizes, each counted up to 20,000)",
    buckets=(0, 10, 100, 1000, 5000, 10000, 20000, 40000, 100000),
)


def searched(seconds: float, chunks: int) -> None:
    if metrics.collecting:
        SEARCH_SECONDS.observe(seconds)
        SEARCHED_CHUNKS.observe(chunks)
