//! Bench helpers, above all the **decode floor**: the speed bar of the engine issue says
//! `warroom replay` must finish no later than a plain single-threaded loop that only parses
//! each line with serde_json, checks the required fields and sums paid amounts. That loop is
//! [`floor_sum`], written the way a careful engineer would write it without the engine:
//! typed serde derive with borrowed strings, one pass, no threads.

use std::io::BufRead;

use serde::Deserialize;

#[derive(Deserialize)]
struct Minimal<'a> {
    #[serde(borrow)]
    event_id: &'a str,
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    ts: i64,
    #[serde(borrow)]
    user_id: &'a str,
    #[serde(borrow, default)]
    order_id: Option<&'a str>,
    #[serde(default)]
    amount_cents: Option<u64>,
}

/// What the floor loop saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FloorResult {
    pub lines: u64,
    pub valid: u64,
    pub paid_cents: u64,
}

/// Checks one line the way the floor loop does; returns the paid amount if it is a `pay`.
#[inline]
pub fn floor_line(line: &[u8], r: &mut FloorResult) {
    r.lines += 1;
    let Ok(ev) = serde_json::from_slice::<Minimal<'_>>(line) else { return };
    if ev.event_id.is_empty() || ev.user_id.is_empty() || ev.ts < 0 {
        return;
    }
    r.valid += 1;
    if ev.kind == "pay" && ev.order_id.is_some() {
        r.paid_cents += ev.amount_cents.unwrap_or(0);
    }
}

/// The decode floor over a whole reader.
pub fn floor_sum(mut input: impl BufRead) -> std::io::Result<FloorResult> {
    let mut r = FloorResult::default();
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(r);
        }
        let l = line.strip_suffix(b"\n").unwrap_or(&line);
        floor_line(l, &mut r);
    }
}

/// Creates a topic with `partitions` partitions (the Kafka benches' setup).
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let topics = [NewTopic::new(topic, partitions, TopicReplication::Fixed(1))];
    for r in rt.block_on(admin.create_topics(&topics, &AdminOptions::new())).expect("create_topics") {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// Deletes a topic (the capacity search frees the broker's memory between steps); errors are
/// ignored, as not every broker supports it.
pub fn delete_topic(brokers: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let Ok(admin) = ClientConfig::new().set("bootstrap.servers", brokers).create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    let _ = rt.block_on(admin.delete_topics(&[topic], &AdminOptions::new()));
}
