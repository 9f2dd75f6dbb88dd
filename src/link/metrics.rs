//! Prometheus metrics of the link. One [`LinkMetrics`] serves every link of a process; the
//! `link` label is the pool ULID (or `backend` for the reference backend's link).

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// The link's counters and gauges.
#[derive(Clone)]
pub struct LinkMetrics {
    received: IntCounterVec,
    dropped: IntCounterVec,
    duplicates: IntCounterVec,
    published: IntCounterVec,
    publishes_refused: IntCounterVec,
    abandoned: IntCounterVec,
    shrunk: IntCounterVec,
    connection_attempts: IntCounterVec,
    connected: IntGaugeVec,
}

impl std::fmt::Debug for LinkMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkMetrics")
    }
}

impl LinkMetrics {
    /// Creates the metrics and registers them with `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self::unregistered()?;
        registry.register(Box::new(metrics.received.clone()))?;
        registry.register(Box::new(metrics.dropped.clone()))?;
        registry.register(Box::new(metrics.duplicates.clone()))?;
        registry.register(Box::new(metrics.published.clone()))?;
        registry.register(Box::new(metrics.publishes_refused.clone()))?;
        registry.register(Box::new(metrics.abandoned.clone()))?;
        registry.register(Box::new(metrics.shrunk.clone()))?;
        registry.register(Box::new(metrics.connection_attempts.clone()))?;
        registry.register(Box::new(metrics.connected.clone()))?;
        Ok(metrics)
    }

    /// Creates the metrics without registering them anywhere (for callers that do not export
    /// metrics, and for tests).
    pub fn unregistered() -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        Ok(Self {
            received: counter(
                "workerpool_link_messages_received_total",
                "Messages received and handed to the handler, by type.",
                &["link", "type"],
            )?,
            dropped: counter(
                "workerpool_link_messages_dropped_total",
                "Inbound payloads dropped because they were oversized, malformed, of an unknown version or type, or on the wrong topic.",
                &["link", "reason"],
            )?,
            duplicates: counter(
                "workerpool_link_messages_duplicate_total",
                "Inbound messages acknowledged without reaching the handler because an earlier copy did.",
                &["link"],
            )?,
            published: counter(
                "workerpool_link_messages_published_total",
                "Messages queued for publishing, by type.",
                &["link", "type"],
            )?,
            publishes_refused: counter(
                "workerpool_link_publishes_refused_total",
                "Publishes the broker acknowledged with an error reason (e.g. not authorized).",
                &["link"],
            )?,
            abandoned: counter(
                "workerpool_link_messages_abandoned_total",
                "Inbound messages whose handling failed for good (e.g. an answer that cannot be sent, a request the API server refuses); acknowledged anyway, so that none holds one of the link's in-flight slots. By type and error.",
                &["link", "type", "error"],
            )?,
            shrunk: counter(
                "workerpool_link_reports_shrunk_total",
                "Reports whose texts were cut further to fit the payload cap, by type.",
                &["link", "type"],
            )?,
            connection_attempts: counter(
                "workerpool_link_connection_attempts_total",
                "Connection attempts to the broker, by result (success, failure).",
                &["link", "result"],
            )?,
            connected: IntGaugeVec::new(
                Opts::new(
                    "workerpool_link_connected",
                    "1 while the link is connected and subscribed, else 0.",
                ),
                &["link"],
            )?,
        })
    }

    pub(crate) fn received(&self, link: &str, kind: &str) {
        self.received.with_label_values(&[link, kind]).inc();
    }

    pub(crate) fn dropped(&self, link: &str, reason: &str) {
        self.dropped.with_label_values(&[link, reason]).inc();
    }

    pub(crate) fn duplicate(&self, link: &str) {
        self.duplicates.with_label_values(&[link]).inc();
    }

    pub(crate) fn published(&self, link: &str, kind: &str) {
        self.published.with_label_values(&[link, kind]).inc();
    }

    pub(crate) fn publish_refused(&self, link: &str) {
        self.publishes_refused.with_label_values(&[link]).inc();
    }

    pub(crate) fn abandoned(&self, link: &str, kind: &str, error: &str) {
        self.abandoned.with_label_values(&[link, kind, error]).inc();
    }

    pub(crate) fn shrunk(&self, link: &str, kind: &str) {
        self.shrunk.with_label_values(&[link, kind]).inc();
    }

    /// Messages of `kind` that `link`'s handler gave up on with `error`, acknowledged anyway.
    pub fn abandoned_count(&self, link: &str, kind: &str, error: &str) -> u64 {
        self.abandoned.with_label_values(&[link, kind, error]).get()
    }

    /// Reports of `kind` cut further to fit the payload cap on `link`.
    pub fn shrunk_count(&self, link: &str, kind: &str) -> u64 {
        self.shrunk.with_label_values(&[link, kind]).get()
    }

    pub(crate) fn connection_attempt(&self, link: &str, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.connection_attempts
            .with_label_values(&[link, result])
            .inc();
    }

    pub(crate) fn set_connected(&self, link: &str, connected: bool) {
        self.connected
            .with_label_values(&[link])
            .set(i64::from(connected));
    }

    /// Dropped payloads of `link` for `reason` (a [`crate::protocol::DropReason`] label).
    pub fn dropped_count(&self, link: &str, reason: &str) -> u64 {
        self.dropped.with_label_values(&[link, reason]).get()
    }

    /// Duplicates of `link` acknowledged without reaching the handler.
    pub fn duplicate_count(&self, link: &str) -> u64 {
        self.duplicates.with_label_values(&[link]).get()
    }

    /// Messages of `kind` handed to the handler of `link`.
    pub fn received_count(&self, link: &str, kind: &str) -> u64 {
        self.received.with_label_values(&[link, kind]).get()
    }
}
