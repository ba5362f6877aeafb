//! The JSON log format: one object per line with `timestamp`, `level`,
//! `target`, `message`, the event's fields, and the fields of every span the
//! event happened in, all at the top level. `tracing-subscriber`'s own JSON
//! format nests span fields under `span`/`spans`; a log collector filtering
//! on `request_id` wants them flat, beside the event's.
//!
//! Span fields are kept, already converted to JSON values, in the span's
//! extensions when the span is created or records a value, so an event only
//! merges maps.

use std::fmt;
use std::io::Write;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// A layer writing each event as one JSON line to `W`.
pub struct JsonLines<W> {
    writer: W,
}

impl<W> JsonLines<W> {
    pub fn new(writer: W) -> Self {
        Self { writer }
    }
}

/// The fields of a span as JSON values.
struct SpanFields(Map<String, Value>);

/// Converts recorded values to JSON: numbers and booleans stay typed,
/// everything else becomes its `Display`/`Debug` text.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::from(format!("{value:?}")));
    }
}

impl<S, W> Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut map = Map::new();
        attrs.record(&mut Fields(&mut map));
        span.extensions_mut().insert(SpanFields(map));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(SpanFields(map)) = ext.get_mut::<SpanFields>() {
            values.record(&mut Fields(map));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".into(), Value::from(meta.level().as_str()));
        event.record(&mut Fields(&mut line));
        if let Some(scope) = ctx.event_scope(event) {
            // Innermost span first: an inner span's field wins over an outer one's.
            for span in scope {
                if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>() {
                    for (k, v) in fields {
                        line.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
        }
        line.insert("target".into(), Value::from(meta.target()));
        let Ok(mut bytes) = serde_json::to_vec(&Value::Object(line)) else {
            return;
        };
        bytes.push(b'\n');
        let _ = self.writer.make_writer_for(meta).write_all(&bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[test]
    fn span_fields_are_flattened_and_typed() {
        let buf = Buf::default();
        let sub = tracing_subscriber::registry().with(JsonLines::new(buf.clone()));
        tracing::subscriber::with_default(sub, || {
            let outer = tracing::error_span!(
                "request",
                request_id = "r-1",
                principal = tracing::field::Empty
            );
            let _o = outer.enter();
            outer.record("principal", "alice");
            let inner = tracing::info_span!("inner", request_id = "inner-wins", n = 3u64);
            let _i = inner.enter();
            tracing::warn!(cause = %"the store is closed", ok = true, "storage unavailable");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let v: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["message"], "storage unavailable");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["cause"], "the store is closed");
        assert_eq!(v["ok"], true);
        assert_eq!(v["n"], 3);
        assert_eq!(v["principal"], "alice");
        assert_eq!(v["request_id"], "inner-wins");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(text.lines().count(), 1);
    }
}
