# The project's image for docker-compose.yml: the producer, the Spark job (local[2] inside the
# container), the exchange simulator and the dashboard all run from it. Java runs Spark; the Spark
# Kafka connector's jars are resolved from Maven Central at build time, so containers start offline.
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless maven procps \
    && rm -rf /var/lib/apt/lists/*

ENV MARKET_ANOMALY_CACHE=/opt/market-anomaly/cache \
    MARKET_ANOMALY_HOME=/var/lib/market-anomaly \
    MARKET_ANOMALY_MODEL_PARAMS=/opt/market-anomaly/model_params.json \
    PYTHONUNBUFFERED=1

WORKDIR /opt/market-anomaly
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && market-anomaly setup && rm -rf /root/.m2
COPY model_params.json model_params.model.npz ./

RUN useradd --system --home-dir /var/lib/market-anomaly --create-home market-anomaly
USER market-anomaly
ENTRYPOINT ["market-anomaly"]
CMD ["--help"]
