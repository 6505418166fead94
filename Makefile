# hubcluster — every developer and CI command lives here.
GO      ?= go
BIN     ?= bin
PKGS    := ./...
JS      := clients/js

.PHONY: all build run test unit integration js lint fuzz bench clean image up down logs

# docker compose v2 when present, else Debian's docker-compose v1.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
# REDIS_MODE=cluster runs the compose cluster on a Redis Cluster (three
# primaries, three replicas: docker-compose.cluster.yml) instead of one Redis.
REDIS_MODE ?= standalone
COMPOSE_FILES := -f docker-compose.yml $(if $(filter cluster,$(REDIS_MODE)),-f docker-compose.cluster.yml)

all: lint test

build: ## build the node binary into bin/
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/node ./cmd/node

run: build ## one node on :8080 with the embedded broker and the chat demo (override with HUB_* variables)
	@addr=$${HUB_ADDR:-:8080}; host=$${addr%:*}; \
	  case "$$host" in ""|0.0.0.0|"[::]") host=127.0.0.1;; esac; \
	  if [ "$${HUB_DEMO:-true}" = true ]; then echo "demo: http://$$host:$${addr##*:}/ (open it in two tabs)"; fi; \
	  HUB_DEMO=$${HUB_DEMO:-true} HUB_LOG_FORMAT=$${HUB_LOG_FORMAT:-text} exec ./$(BIN)/node

# The Redis broker tests and the integration tests need redis-server, a Docker
# engine and a Redis image: scripts/docker-env.sh provides them (installing and
# starting them on a fresh Debian machine as root) before any test runs.
test: lint js ## every test: lint, the JavaScript client and browser tests, microbenchmarks once, unit (race) and integration (Docker) tests
	@eval "$$(./scripts/docker-env.sh)" && export HUB_TEST_INTEGRATION=1 && \
	  $(GO) test -run='^$$' -bench=. -benchtime=1x ./internal/... ./cmd/... && \
	  $(GO) test -race -count=1 -timeout=30m ./...

unit: ## the tests that need no Docker, with the race detector
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /test/integration)

integration: ## integration tests only: real Redis in Docker, real node processes
	@eval "$$(./scripts/docker-env.sh)" && export HUB_TEST_INTEGRATION=1 && \
	  $(GO) test -race -count=1 -timeout=30m ./test/integration/...

# The JavaScript client against real node processes (bin/node) on the memory
# broker and on a real redis-server, and the demo page in headless Chromium;
# scripts/browser-env.sh installs redis-server and Chromium when missing.
js: build ## the JavaScript client's tests (node --test) and the browser test; screenshots in artifacts/browser/
	@./scripts/browser-env.sh
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error
	cd $(JS) && HUBCLUSTER_NODE_BIN=$(abspath $(BIN))/node npm test
	@cd $(JS) && npm run --silent size

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

# Benchmarks: Go microbenchmarks of the hot paths, then the hubbench suite
# (Redis and nodes on loopback; several minutes). Not part of make test.
bench: build ## microbenchmarks and the load suite; BENCHMARKS.md records the results
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
	$(GO) test -run='^$$' -bench=. -benchmem -count=1 ./internal/... ./cmd/...
	$(GO) build -o $(BIN)/hubbench ./cmd/hubbench
	./$(BIN)/hubbench -suite -node $(BIN)/node

fuzz: ## fuzz the frame decoder for a minute
	$(GO) test -run='^$$' -fuzz=FuzzDecode -fuzztime=60s ./internal/wire

image: ## the node's container image (hubcluster/node:dev), built without any registry
	GOOS=linux CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/linux/node ./cmd/node
	@./scripts/docker-env.sh >/dev/null
	docker build -t $${NODE_IMAGE:-hubcluster/node:dev} .

up: image ## a three-replica cluster behind HAProxy on 127.0.0.1:8080 (HUB_LB_PORT); REDIS_MODE=cluster: on a Redis Cluster
	@eval "$$(./scripts/docker-env.sh)" && $(COMPOSE) $(COMPOSE_FILES) up -d
	@echo "cluster up ($(REDIS_MODE) Redis): ws://$${HUB_LB_BIND:-127.0.0.1}:$${HUB_LB_PORT:-8080}/ws, demo: http://$${HUB_LB_BIND:-127.0.0.1}:$${HUB_LB_PORT:-8080}/"

down: ## stop the cluster and remove its containers and network (the same REDIS_MODE as up)
	$(COMPOSE) $(COMPOSE_FILES) down --remove-orphans -t 30

logs: ## follow the cluster's logs
	$(COMPOSE) $(COMPOSE_FILES) logs -f

clean:
	rm -rf $(BIN) artifacts
