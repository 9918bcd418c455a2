//! The library's log lines, captured: what a person running it would read.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// The events of the library's targets (`sqlacache*`), each as `LEVEL message key=value ..`.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The lines that contain `text`.
    pub fn containing(&self, text: &str) -> Vec<String> {
        self.all().into_iter().filter(|line| line.contains(text)).collect()
    }
}

/// The subscriber of the whole test process, installed once. `ByThread(None)` records an event
/// into the [`Lines`] of the thread that emits it, if that thread is capturing (see
/// [`capture`]). A scoped subscriber per test (`with_default`) is not enough: a callsite first
/// reached on another thread while no subscriber wanted it may stay disabled for all.
/// `ByThread(Some(prefix))` prints the events of INFO and above to standard error after
/// `prefix` instead (for the processes of a fleet, whose output a test shows).
struct ByThread(Option<String>);

thread_local! {
    static CAPTURING: std::cell::RefCell<Option<Lines>> = const { std::cell::RefCell::new(None) };
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl ByThread {
    /// Adds a line to the [`Lines`] of this thread, if it is capturing.
    fn capture(&self, line: String) {
        if self.0.is_some() {
            return;
        }
        CAPTURING.with(|c| {
            if let Some(lines) = &*c.borrow() {
                lines.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
    }
}

impl Subscriber for ByThread {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        // Asked per event: which thread emits it decides.
        if metadata.target().starts_with("sqlacache") {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("sqlacache")
            && match self.0 {
                Some(_) => *metadata.level() <= tracing::Level::INFO,
                None => CAPTURING.with(|c| c.borrow().is_some()),
            }
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        // A span is a line too, `SPAN <name> <fields>`, and a field recorded later `RECORD ..`.
        let mut fields = Fields(format!("SPAN {}", span.metadata().name()));
        span.record(&mut fields);
        self.capture(fields.0);
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut fields = Fields("RECORD".to_owned());
        values.record(&mut fields);
        self.capture(fields.0);
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(event.metadata().level().to_string());
        event.record(&mut fields);
        if let Some(prefix) = &self.0 {
            return eprintln!("{prefix}{}", fields.0);
        }
        self.capture(fields.0);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Runs `test` on a runtime of its own, on this thread only, so that every task it starts (the
/// pool's listeners and heartbeats too) logs into the returned [`Lines`] and no other test's
/// lines mix in.
pub fn capture<F: Future<Output = ()>>(test: impl FnOnce(Lines) -> F) -> Lines {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // Fails only if another global subscriber is set; the tests set none.
        let _ = tracing::subscriber::set_global_default(ByThread(None));
    });
    // A callsite registered while the subscriber was being installed may have kept an old answer.
    tracing::callsite::rebuild_interest_cache();
    let lines = Lines::default();
    CAPTURING.with(|c| *c.borrow_mut() = Some(lines.clone()));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(test(lines.clone()))));
    // The pool's tasks end with the runtime, still captured.
    drop(runtime);
    CAPTURING.with(|c| *c.borrow_mut() = None);
    if let Err(panic) = outcome {
        eprintln!("the log so far:\n{}", lines.all().join("\n"));
        std::panic::resume_unwind(panic);
    }
    lines
}

/// Prints the library's events (INFO and above) of this process to standard error after
/// `prefix`.
pub fn to_stderr(prefix: &str) {
    // Fails only if another global subscriber is set.
    let _ = tracing::subscriber::set_global_default(ByThread(Some(prefix.to_owned())));
}
