# Image for the hub in compose.yaml. The embedded servers are not used here: compose provides
# PostgreSQL (TimescaleDB), NATS and Redis and the hub runs `tickstock serve`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY hub ./hub
COPY api ./api
COPY store ./store
RUN pip install --no-cache-dir .
USER nobody
EXPOSE 8000
CMD ["tickstock", "serve", "--host", "0.0.0.0", "--port", "8000"]
