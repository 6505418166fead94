# hubcluster — every developer and CI command lives here.
GO      ?= go
BIN     ?= bin
PKGS    := ./...

.PHONY: all build run test unit lint fuzz bench clean

all: lint test

build: ## build the node binary into bin/
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/node ./cmd/node

run: build ## one node on :8080 with the embedded broker (override with HUB_* variables)
	HUB_LOG_FORMAT=$${HUB_LOG_FORMAT:-text} ./$(BIN)/node

test: lint unit ## every test

unit: ## unit and package tests, with the race detector
	$(GO) test -race -count=1 $(PKGS)

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

fuzz: ## fuzz the frame decoder for a minute
	$(GO) test -run='^$$' -fuzz=FuzzDecode -fuzztime=60s ./internal/wire

clean:
	rm -rf $(BIN)
