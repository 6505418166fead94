// Package lifecycle stops a node in order, every step bounded by what is left
// of one deadline and logged with its duration.
//
// Steps run one after another. When the deadline passes during a step, that
// step is named as the one that overran, and every later step still runs, but
// with a context that is already done: a step must then do its forced variant
// (cut instead of close, give up instead of wait) and return at once.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Manager holds a node's stop steps. Its methods may be called concurrently.
type Manager struct {
	timeout time.Duration
	log     *slog.Logger

	draining    prometheus.Gauge
	stepSeconds *prometheus.GaugeVec

	mu      sync.Mutex
	steps   []step
	started bool

	err  error // set before done is closed
	done chan struct{}
}

type step struct {
	name string
	fn   func(ctx context.Context) error
}

// New returns a Manager whose Stop takes at most timeout in all.
func New(timeout time.Duration, log *slog.Logger, reg prometheus.Registerer) (*Manager, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		timeout: timeout,
		log:     log.With("component", "lifecycle"),
		draining: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hub_draining", Help: "1 while the node drains.",
		}),
		stepSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hub_drain_step_seconds", Help: "How long each drain step of the last drain took.",
		}, []string{"step"}),
		done: make(chan struct{}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.draining, m.stepSeconds} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// OnStop appends a step; steps run in the order they were added.
func (m *Manager) OnStop(name string, fn func(ctx context.Context) error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.steps = append(m.steps, step{name: name, fn: fn})
}

// Stop runs every step in order. The whole run is bounded by the Manager's
// timeout; ending ctx early (a second signal) forces the steps that remain.
// Stop is idempotent: later calls wait for the first and return its result.
// The error names the step that overran the deadline, if one did.
func (m *Manager) Stop(ctx context.Context) error {
	m.mu.Lock()
	first := !m.started
	m.started = true
	m.mu.Unlock()
	if first {
		m.err = m.stop(ctx)
		close(m.done)
	}
	<-m.done
	return m.err
}

// Finished reports whether Stop has run to its end.
func (m *Manager) Finished() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// ErrOverran is wrapped by Stop's error when the deadline passed.
var ErrOverran = errors.New("lifecycle: drain deadline passed")

func (m *Manager) stop(ctx context.Context) error {
	m.mu.Lock()
	steps := append([]step(nil), m.steps...)
	m.mu.Unlock()

	m.draining.Set(1)
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	m.log.Info("drain started", "timeout", m.timeout.String(), "steps", len(steps))

	overran := ""
	for _, s := range steps {
		forced := dctx.Err() != nil
		t0 := time.Now()
		err := s.fn(dctx)
		took := time.Since(t0)
		m.stepSeconds.WithLabelValues(s.name).Set(took.Seconds())
		if overran == "" && dctx.Err() != nil {
			overran = s.name
			if ctx.Err() != nil {
				m.log.Error("drain interrupted: forcing the remaining steps", "step", s.name, "took", took.String())
			} else {
				m.log.Error("drain step overran the deadline: forcing the remaining steps", "step", s.name, "took", took.String())
			}
		}
		attrs := []any{"step", s.name, "took", took.Round(time.Microsecond).String(), "forced", forced}
		switch {
		case err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled):
			m.log.Warn("drain step failed", append(attrs, "err", err)...)
		default:
			m.log.Info("drain step done", attrs...)
		}
	}
	m.draining.Set(0)
	took := time.Since(start)
	if overran != "" {
		return fmt.Errorf("%w in step %q (after %v)", ErrOverran, overran, took.Round(time.Millisecond))
	}
	m.log.Info("drain finished", "took", took.Round(time.Millisecond).String())
	return nil
}
