# Build stage: the wheel (it carries migrations, TimescaleDB SQL and the example page).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
COPY timescale ./timescale
COPY examples ./examples
RUN pip wheel --no-cache-dir --no-deps -w /dist .

# Runtime stage: the exact locked dependencies, then the wheel (not editable), non-root.
FROM python:3.11-slim
COPY requirements.lock /tmp/requirements.lock
COPY --from=build /dist /tmp/dist
RUN pip install --no-cache-dir -r /tmp/requirements.lock \
 && pip install --no-cache-dir --no-deps /tmp/dist/*.whl \
 && rm -rf /tmp/dist /tmp/requirements.lock \
 && useradd --system --create-home --home-dir /var/lib/vidmetrics vidmetrics
USER vidmetrics
WORKDIR /var/lib/vidmetrics
ENV HOST=0.0.0.0 PORT=3000 LOG_FORMAT=json METRICS_DATA_DIR=/var/lib/vidmetrics/data
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:3000/healthz').status != 200)"
CMD ["vidmetrics", "serve"]
