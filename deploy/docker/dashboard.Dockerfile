# The Streamlit dashboard: talks to the monitor API at ENTMON_URL, never to Redis.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY client ./client
COPY monitor ./monitor
COPY dashboard ./dashboard
COPY entmon ./entmon
RUN pip install --no-cache-dir ".[dashboard]" && useradd --uid 10001 --create-home entmon
USER entmon
EXPOSE 8501
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=2)"
CMD ["python", "-m", "streamlit", "run", "dashboard/app.py", "--server.port", "8501", \
     "--server.address", "0.0.0.0", "--server.headless", "true", "--browser.gatherUsageStats", "false"]
