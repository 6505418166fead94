# The node image: a static binary on an empty base, running as a non-root user.
# It needs no registry: `make image` builds bin/linux/node (CGO_ENABLED=0) and
# this file only copies it. TLS to Redis (rediss://) uses the system roots when
# a volume provides them, else the roots compiled into the binary.
# No HEALTHCHECK: health is the orchestrator's job; the node serves /healthz
# and /readyz.
FROM scratch
COPY bin/linux/node /node
USER 65532:65532
EXPOSE 8080
ENV HUB_ADDR=:8080
ENTRYPOINT ["/node"]
