# A stand-in for prom/prometheus where no image registry is reachable: Debian's prometheus package on the Debian base
# that docker/build-images.sh makes (docker/build-images.sh --prometheus). Same config path and port as the official
# image, so compose only swaps the image name (tests/containers/ does).
ARG BASE=localhost/fedhive-base:bookworm-amd64
FROM ${BASE}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus && chown nobody /prometheus
USER nobody
EXPOSE 9090
HEALTHCHECK --interval=10s --timeout=3s CMD ["/bin/sh", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090"]
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=0.0.0.0:9090"]
