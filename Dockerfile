# pushtwisted: docker build -t pushtwisted . && docker run -p 8080:8080 -p 8081:8081 \
#   -e SIMPLEPUSH_ENDPOINT_PUBLIC_URL=https://push.example.com -v pushtwisted:/var/lib/pushtwisted pushtwisted
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE requirements.lock ./
COPY pushtwisted ./pushtwisted
COPY twisted ./twisted
# Install at the exact versions of requirements.lock (reproducible; `bash .ci/lock`
# regenerates it), then write twisted/plugins/dropin.cache now: the runtime user cannot.
RUN pip install -c requirements.lock . \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && cd / && rm -rf /src

RUN useradd --system --user-group --home-dir /var/lib/pushtwisted --no-create-home pushtwisted \
    && mkdir -p /var/lib/pushtwisted \
    && chown pushtwisted:pushtwisted /var/lib/pushtwisted \
    && chmod 0700 /var/lib/pushtwisted

# Every config key can be set as SIMPLEPUSH_<SECTION>_<KEY> (see config.sample.toml);
# set SIMPLEPUSH_ENDPOINT_PUBLIC_URL to the URL application servers reach.
ENV SIMPLEPUSH_STORAGE_PATH=/var/lib/pushtwisted \
    SIMPLEPUSH_WEBSOCKET_LISTEN=tcp:8080:interface=0.0.0.0 \
    SIMPLEPUSH_ENDPOINT_LISTEN=tcp:8081:interface=0.0.0.0

VOLUME /var/lib/pushtwisted
WORKDIR /var/lib/pushtwisted
USER pushtwisted
EXPOSE 8080 8081

# Healthy while GET /health on the endpoint listener answers 200 (503 when storage
# does not answer).  The slim image has no curl: Python asks.  If you move the
# endpoint listener (SIMPLEPUSH_ENDPOINT_LISTEN), change the port here too.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request\ntry:\n    urllib.request.urlopen('http://127.0.0.1:8081/health', timeout=8)\nexcept Exception as e:\n    sys.exit(f'unhealthy: {e}')"]

# JSON-lines logs on stdout, honouring [server] log_level.
CMD ["twistd", "-n", "--pidfile=", "--logger=pushtwisted.logs.json_observer", "simplepush"]
