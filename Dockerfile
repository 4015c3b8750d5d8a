FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY workers ./workers
COPY piccolo_migrations ./piccolo_migrations
COPY piccolo_conf.py ./
COPY docs ./docs
RUN pip install . && useradd --system --uid 10001 lounges
USER lounges
EXPOSE 8000
CMD ["python", "-m", "server", "serve", "--host", "0.0.0.0", "--port", "8000"]
