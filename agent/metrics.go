package agent

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/trackd/trackd/forwarder"
	"github.com/trackd/trackd/spool"
)

// metrics holds trackd's Prometheus registry, served at GET /metrics. Spool
// and forwarder figures are read from their Stats at scrape time, so they are
// never counted twice and cost nothing on the ingest path.
type metrics struct {
	registry    *prometheus.Registry
	handler     http.Handler
	reqs        *prometheus.CounterVec
	trackOK     prometheus.Counter
	identifyOK  prometheus.Counter
	connsRefuse prometheus.Counter
}

func newMetrics(sp func() spool.Stats, fw func() forwarder.Stats) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		registry: reg,
		reqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trackd_http_requests_total",
			Help: "Requests answered by the ingest API, by path and status code.",
		}, []string{"path", "code"}),
		connsRefuse: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "trackd_http_connections_refused_total",
			Help: "Connections answered 503 and closed because the connection cap was reached.",
		}),
	}
	m.trackOK = m.reqs.WithLabelValues(pathTrack, "200")
	m.identifyOK = m.reqs.WithLabelValues(pathIdentify, "200")
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "trackd_build_info",
		Help:        "Always 1; the version label says which trackd is running.",
		ConstLabels: prometheus.Labels{"version": Version},
	})
	build.Set(1)
	reg.MustRegister(m.reqs, m.connsRefuse, build,
		&statsCollector{spool: sp, forwarder: fw},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	return m
}

// requests counts an answered request. Unknown paths share one label value
// so that scanners cannot grow the metric's cardinality.
func (m *metrics) requests(path string, code int) {
	if code == http.StatusOK {
		switch path {
		case pathTrack:
			m.trackOK.Inc()
			return
		case pathIdentify:
			m.identifyOK.Inc()
			return
		}
	}
	switch path {
	case pathTrack, pathIdentify, pathHealthz, pathReadyz, pathMetrics, pathStatus, pathDeadLetters, pathRequeue:
	default:
		path = "other"
	}
	m.reqs.WithLabelValues(path, strconv.Itoa(code)).Inc()
}

type statsCollector struct {
	spool     func() spool.Stats
	forwarder func() forwarder.Stats
}

type metricDesc struct {
	desc  *prometheus.Desc
	vtype prometheus.ValueType
}

func gauge(name, help string, labels ...string) metricDesc {
	return metricDesc{prometheus.NewDesc(name, help, labels, nil), prometheus.GaugeValue}
}

func counter(name, help string, labels ...string) metricDesc {
	return metricDesc{prometheus.NewDesc(name, help, labels, nil), prometheus.CounterValue}
}

var (
	mQueued       = gauge("trackd_spool_queued_events", "Events waiting in the spool to be forwarded.")
	mQueuedBytes  = gauge("trackd_spool_queued_bytes", "Bytes of events waiting in the spool.")
	mDead         = gauge("trackd_spool_dead_letters", "Events kept aside in the dead-letter store.")
	mDeadBytes    = gauge("trackd_spool_dead_letter_bytes", "Bytes of events in the dead-letter store.")
	mFileBytes    = gauge("trackd_spool_file_bytes", "Size of the spool file on disk.")
	mOldestAge    = gauge("trackd_spool_oldest_event_age_seconds", "Age of the oldest queued event; 0 when the spool is empty.")
	mAppended     = counter("trackd_spool_appended_total", "Events stored in the spool since start.")
	mDeleted      = counter("trackd_spool_deleted_total", "Events removed from the spool after delivery since start.")
	mDeadLettered = counter("trackd_spool_dead_lettered_total", "Events moved to the dead-letter store since start.")
	mDropped      = counter("trackd_spool_dropped_total", "Events dropped since start, by reason: a configured policy (max_age, max_bytes) or a record that failed its checksum (checksum).", "reason")
	mSalvaged     = counter("trackd_spool_salvaged_total", "Events carried over at start from a spool file that was unreadable and moved aside.")
	mCompactions  = counter("trackd_spool_compactions_total", "Times the spool file was compacted to give disk space back.")
	mCommits      = counter("trackd_spool_commits_total", "Spool write transactions committed (each one fsync'd).")

	mFwdSent        = counter("trackd_forwarder_requests_total", "Requests sent upstream since start.")
	mFwdDelivered   = counter("trackd_forwarder_delivered_total", "Events upstream accepted since start.")
	mFwdDead        = counter("trackd_forwarder_dead_lettered_total", "Events upstream refused for good since start.")
	mFwdRetried     = counter("trackd_forwarder_retries_total", "Sends that failed in a retryable way and will be tried again.")
	mFwdThrottled   = counter("trackd_forwarder_throttled_total", "429 answers from upstream since start.")
	mFwdRate        = gauge("trackd_forwarder_rate_limit", "Requests per second the forwarder currently allows itself (after adaptation).")
	mFwdInFlight    = gauge("trackd_forwarder_in_flight", "Requests to upstream in flight.")
	mFwdPausedUntil = gauge("trackd_forwarder_paused_until_seconds", "Unix time until which all sending is paused; 0 when not paused.")
)

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []metricDesc{mQueued, mQueuedBytes, mDead, mDeadBytes, mFileBytes, mOldestAge, mAppended, mDeleted,
		mDeadLettered, mDropped, mSalvaged, mCompactions, mCommits, mFwdSent, mFwdDelivered, mFwdDead, mFwdRetried, mFwdThrottled,
		mFwdRate, mFwdInFlight, mFwdPausedUntil} {
		ch <- d.desc
	}
}

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	emit := func(d metricDesc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d.desc, d.vtype, v, labels...)
	}
	if c.spool != nil {
		s := c.spool()
		emit(mQueued, float64(s.Queued))
		emit(mQueuedBytes, float64(s.QueuedBytes))
		emit(mDead, float64(s.Dead))
		emit(mDeadBytes, float64(s.DeadBytes))
		emit(mFileBytes, float64(s.FileBytes))
		age := 0.0
		if !s.Oldest.IsZero() {
			age = time.Since(s.Oldest).Seconds()
		}
		emit(mOldestAge, age)
		emit(mAppended, float64(s.Appended))
		emit(mDeleted, float64(s.Deleted))
		emit(mDeadLettered, float64(s.DeadLettered))
		emit(mDropped, float64(s.DroppedExpired), "max_age")
		emit(mDropped, float64(s.DroppedFull), "max_bytes")
		emit(mDropped, float64(s.DroppedCorrupt), "checksum")
		emit(mSalvaged, float64(s.Salvaged))
		emit(mCompactions, float64(s.Compactions))
		emit(mCommits, float64(s.Commits))
	}
	if c.forwarder != nil {
		f := c.forwarder()
		emit(mFwdSent, float64(f.Sent))
		emit(mFwdDelivered, float64(f.Delivered))
		emit(mFwdDead, float64(f.DeadLettered))
		emit(mFwdRetried, float64(f.Retried))
		emit(mFwdThrottled, float64(f.Throttled))
		emit(mFwdRate, f.RateLimit)
		emit(mFwdInFlight, float64(f.InFlight))
		paused := 0.0
		if f.PausedUntil.After(time.Now()) {
			paused = float64(f.PausedUntil.Unix())
		}
		emit(mFwdPausedUntil, paused)
	}
}
