package server

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the server's Prometheus series, in a registry of its own so that several
// servers (tests, a service mounting two) do not collide in the default one.
type metrics struct {
	reg      *prometheus.Registry
	running  prometheus.Gauge
	steps    prometheus.Histogram
	requests *prometheus.HistogramVec
	errors   *prometheus.CounterVec
	jobs     *prometheus.CounterVec
	jobTime  prometheus.Histogram
}

func newMetrics(s *Server) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.running = prometheus.NewGauge(prometheus.GaugeOpts{Name: "gosd_jobs_running", Help: "Generations running now."})
	queued := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gosd_queue_depth", Help: "Generations waiting for a worker."},
		func() float64 { return float64(len(s.queue)) })
	queueCap := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gosd_queue_capacity", Help: "Generations that may wait for a worker."},
		func() float64 { return float64(cap(s.queue)) })
	m.steps = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "gosd_step_seconds",
		Help: "Time of one UNet evaluation with its sampler step.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)})
	m.jobTime = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "gosd_job_seconds",
		Help: "Time of a generation from its submission to its end.", Buckets: prometheus.ExponentialBuckets(0.05, 2, 14)})
	m.requests = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "gosd_http_request_seconds",
		Help: "HTTP request latency by route and status code.", Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14)},
		[]string{"route", "code"})
	m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gosd_errors_total",
		Help: "Failed requests by kind of error (invalid_request, queue_full, timeout, cancelled, ...)."}, []string{"kind"})
	m.jobs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gosd_jobs_total",
		Help: "Ended generations by final state."}, []string{"state"})
	m.reg.MustRegister(m.running, queued, queueCap, m.steps, m.jobTime, m.requests, m.errors, m.jobs,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// request records a request's latency and, when it failed, the kind of its error.
func (m *metrics) request(route string, code int, d time.Duration, errKind string) {
	m.requests.WithLabelValues(route, strconv.Itoa(code)).Observe(d.Seconds())
	if errKind != "" {
		m.errors.WithLabelValues(errKind).Inc()
	}
}

func (m *metrics) jobEnded(v jobView) {
	m.jobs.WithLabelValues(string(v.State)).Inc()
	m.jobTime.Observe(v.Finished.Sub(v.Created).Seconds())
}
