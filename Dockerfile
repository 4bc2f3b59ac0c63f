# revproxy as a container image (docs/container.md).
#
# BASE is a Debian bookworm image with python3 and python3-venv. With a registry:
#   podman build --build-arg BASE=docker.io/library/debian:bookworm-slim ...   (apt adds python3)
# Without one (these machines), make it from Debian's packages first:
#   scripts/container-image          # debootstrap --variant=minbase + podman import, then build
ARG BASE=localhost/revproxy-base:bookworm

FROM ${BASE} AS build
# A base without Python (debian:bookworm-slim) gets it from Debian; the local base has it.
RUN if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip' 2>/dev/null; then \
        apt-get update -q && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            python3 python3-venv ca-certificates && \
        rm -rf /var/lib/apt/lists/*; \
    fi
RUN python3 -m venv /opt/revproxy
COPY pyproject.toml README.md /src/
COPY revproxy /src/revproxy
# Wheels made on the host (scripts/container-image) install without a package index;
# without them pip reaches PyPI from inside the build.
COPY container/wheels/ /wheels/
RUN if ls /wheels/*.whl >/dev/null 2>&1; then \
        set -- --no-index --find-links /wheels revproxy; \
    else \
        set -- /src; \
    fi \
    && /opt/revproxy/bin/pip install --no-cache-dir --disable-pip-version-check "$@" \
    && /opt/revproxy/bin/revproxy version

FROM ${BASE}
RUN if ! command -v python3 >/dev/null; then \
        apt-get update -q && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            python3 ca-certificates && \
        rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --system --user-group --uid 10001 --home-dir /var/lib/revproxy \
        --shell /usr/sbin/nologin revproxy \
    && install -d -o revproxy -g revproxy -m 0750 /var/lib/revproxy /run/revproxy \
    && install -d -m 0755 /etc/revproxy
COPY --from=build /opt/revproxy /opt/revproxy
COPY conf/container/ /etc/revproxy/
ENV PATH=/opt/revproxy/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER revproxy
WORKDIR /var/lib/revproxy
EXPOSE 80 443
VOLUME ["/etc/revproxy"]
# The admin socket answers while the instance runs and its listeners are bound.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["revproxy", "ctl", "-s", "/run/revproxy/admin.sock", "show", "info"]
# SIGTERM (docker stop, ECS): stop accepting, let requests in flight finish for up to
# shutdown_timeout (30s), exit 0. Give the container longer: docker run --stop-timeout 35.
STOPSIGNAL SIGTERM
ENTRYPOINT ["revproxy", "run", "-c", "/etc/revproxy"]
