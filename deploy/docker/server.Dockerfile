# The monitor API: no torch, non-root, healthcheck on /healthz.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY client ./client
COPY monitor ./monitor
COPY dashboard ./dashboard
COPY entmon ./entmon
RUN pip install --no-cache-dir ".[server]" && useradd --uid 10001 --create-home entmon
USER entmon
ENV ENTMON_DATA_DIR=/home/entmon/data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["entmon", "serve", "--host", "0.0.0.0", "--port", "8000"]
