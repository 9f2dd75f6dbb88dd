use std::sync::{Arc, Mutex};

use super::*;

fn at() -> String {
    "2026-12-02T10:00:00Z".into()
}

#[test]
fn lines_are_numbered_in_order_and_batches_take_the_oldest() {
    let mut pending = Pending::default();
    for i in 0..1500 {
        assert_eq!(
            pending.push(LogStream::Stdout, &format!("line {i}"), at()),
            i
        );
    }
    let first = pending.batch();
    assert_eq!(first.len(), MAX_BATCH_LINES);
    assert_eq!(first[0].seq, 0);
    pending.accepted(first.len());
    let second = pending.batch();
    assert_eq!(
        second.iter().map(|l| l.seq).collect::<Vec<_>>(),
        (1000..1500).collect::<Vec<_>>()
    );
    pending.accepted(second.len());
    assert!(pending.is_empty());
    assert_eq!(pending.first_unaccepted(), 1500);
}

#[test]
fn a_batch_stays_under_its_byte_cap_and_long_lines_are_cut() {
    let mut pending = Pending::default();
    let long = "é".repeat(MAX_LINE_BYTES); // two bytes each: cut inside a character
    for _ in 0..20 {
        pending.push(LogStream::Stderr, &long, at());
    }
    let batch = pending.batch();
    let bytes: usize = batch
        .iter()
        .map(|l| serde_json::to_string(l).unwrap().len())
        .sum();
    assert!(bytes <= MAX_BATCH_BYTES, "{bytes}");
    assert!(batch[0].text.len() <= MAX_LINE_BYTES);
    assert!(batch[0].text.ends_with(" [line cut]"));
}

/// Records batches; optionally refuses from some batch on.
#[derive(Clone, Default)]
struct Recorder {
    batches: Arc<Mutex<Vec<LogBatch>>>,
    refuse_from: Option<usize>,
}

impl Sink for Recorder {
    async fn deliver(&self, batch: &LogBatch) -> Result<(), BackendError> {
        // A slow backend: lines pile up behind the batch in flight.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut batches = self.batches.lock().unwrap();
        if self.refuse_from.is_some_and(|n| batches.len() >= n) {
            return Err(BackendError::Status {
                what: "POST logs".into(),
                status: 403,
                message: "run ended".into(),
            });
        }
        batches.push(batch.clone());
        Ok(())
    }
}

#[tokio::test]
async fn the_forwarder_delivers_every_line_once_in_order_with_contiguous_seqs() {
    let recorder = Recorder::default();
    let forwarder = Forwarder::start(recorder.clone(), LogPart::Worker);
    for i in 0..6000 {
        forwarder
            .send(LogStream::Stdout, &format!("line {i}"))
            .await;
    }
    let delivery = forwarder.flush(Duration::from_secs(60)).await;
    assert_eq!(
        delivery,
        Delivery {
            accepted: 6000,
            lost: 0,
            refused: None
        }
    );
    let batches = recorder.batches.lock().unwrap();
    assert!(batches.len() > 1, "{} batches", batches.len());
    let lines: Vec<_> = batches.iter().flat_map(|b| b.lines.iter()).collect();
    assert!(batches.iter().all(|b| b.part == LogPart::Worker));
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(
            (line.seq, line.text.as_str()),
            (i as u64, format!("line {i}").as_str())
        );
    }
    assert_eq!(lines.len(), 6000);
}

#[tokio::test]
async fn a_refused_batch_is_reported_and_does_not_block_the_producer() {
    let recorder = Recorder {
        refuse_from: Some(1),
        ..Recorder::default()
    };
    let forwarder = Forwarder::start(recorder.clone(), LogPart::Init);
    forwarder.send(LogStream::System, "first").await;
    assert_eq!(forwarder.flush(Duration::from_secs(10)).await.accepted, 1);
    for i in 0..5000 {
        forwarder
            .send(LogStream::System, &format!("later {i}"))
            .await;
    }
    let delivery = forwarder.flush(Duration::from_secs(10)).await;
    assert_eq!(delivery.lost, 5000);
    assert!(delivery.refused.unwrap().contains("run ended"));
}
