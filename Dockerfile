# llm-router: slim, non-root, with a health check. Build: docker build -t llm-router .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router ./router
COPY providers ./providers
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --create-home --uid 10001 router
USER router
WORKDIR /home/router
ENV ROUTER_CONFIG=/etc/llm-router/routing.yaml PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
CMD ["llm-router", "serve", "--host", "0.0.0.0", "--port", "8080", "--workers", "2"]
