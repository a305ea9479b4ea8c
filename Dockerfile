# wagi: a WAGI gateway serving WebAssembly (WASI) modules.
#
#   docker build -t wagi .                       # the example app (spin.toml.example)
#   docker run --rm -p 3000:3000 wagi
#   docker run --rm -p 3000:3000 -v "$PWD/myapp:/app:ro" wagi   # your app: /app/spin.toml
#
# The base image comes from a build argument, so a locally made one can stand in for the
# official image: --build-arg PYTHON_IMAGE=localhost/python-base:bookworm
ARG PYTHON_IMAGE=python:3.12-slim

# ---------------------------------------------------------------- build: the gateway
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/wagi
COPY pyproject.toml README.md LICENSE /src/
COPY gateway /src/gateway
# pip itself is not needed at run time: 25 MB less in the image.
RUN /opt/wagi/bin/pip install /src && /opt/wagi/bin/pip uninstall --yes --quiet pip setuptools

# ---------------------------------------------------------------- build: the app
# The C example apps are compiled with zig's clang (the ziglang package), which only
# this stage has; build commands run `python -m ziglang`, with wagi's own python.
# Then every module is compiled to native code into the compiled-module cache, so that
# a new container serves its first request without compiling.
FROM build AS app
RUN python3 -m venv /opt/tools && /opt/tools/bin/pip install --target /opt/ziglang ziglang
COPY spin.toml.example /app/spin.toml
COPY apps /app/apps
RUN PYTHONPATH=/opt/ziglang /opt/wagi/bin/wagi build -c /app/spin.toml \
 && find /app -name '*.c' -delete \
 && /opt/wagi/bin/wagi compile -c /app/spin.toml --cache-dir /var/cache/wagi

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
RUN (groupadd --system --gid 10001 wagi || addgroup --system --gid 10001 wagi) \
 && (useradd --system --uid 10001 --gid wagi --no-create-home wagi \
     || adduser --system --uid 10001 --ingroup wagi --no-create-home wagi)
COPY --from=build /opt/wagi /opt/wagi
COPY --from=app /app /app
COPY --from=app --chown=wagi:wagi /var/cache/wagi /var/cache/wagi
USER wagi
EXPOSE 3000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["/opt/wagi/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/healthz', timeout=2)"]
# Exec form: wagi is PID 1 and gets SIGTERM itself, to drain before exiting.
ENTRYPOINT ["/opt/wagi/bin/wagi", "serve", "--listen", "0.0.0.0:3000", "--cache-dir", "/var/cache/wagi", "-c", "/app/spin.toml"]
