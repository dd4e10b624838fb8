# referral-bot in a container: non-root, state in the /data volume, config and secrets
# mounted read-only. Build: docker build -t referral-bot .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY handlers ./handlers
COPY schemas ./schemas
COPY storage ./storage
RUN pip install . \
    && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin referral-bot \
    && mkdir -p /data /checkpoints \
    && chown referral-bot:referral-bot /data /checkpoints \
    && chmod 0700 /data /checkpoints

USER referral-bot
# credentials.json, the E2EE store and referrals.db. Back it up; losing it loses the keys.
# (With [storage] database = PostgreSQL, all of that is in the database instead.)
VOLUME ["/data"]
# integrity.checkpoint_file: the running records' checkpoints, apart from /data.
VOLUME ["/checkpoints"]

# Needs [http] listen = "127.0.0.1:9108" in the config (loopback inside the container).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4).status == 200 else 1)"]

# SIGTERM: finish the events in hand, send what is queued, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["referral-bot"]
CMD ["run", "-c", "/config/config.toml"]
