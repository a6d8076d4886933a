//! The engine's epoch clock. A request's wasm yields to the server at every
//! tick, so a handler that computes without end cannot keep a worker from
//! other requests, and its timeout can cut it. The clock stops while no
//! request is in flight: an idle pod makes no wake-ups.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, Thread};
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::Engine;

/// How often running wasm yields.
pub const TICK: Duration = Duration::from_millis(10);

pub struct Clock {
    in_flight: Arc<AtomicUsize>,
    ticker: Thread,
}

impl Clock {
    /// Starts the ticking thread (after privileges are dropped: it is a thread).
    pub fn start(engine: Engine) -> Result<Arc<Clock>> {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let requests = in_flight.clone();
        let handle = thread::Builder::new()
            .name("epoch".into())
            .spawn(move || loop {
                if requests.load(Ordering::Acquire) == 0 {
                    // `running` unparks; a token left by an early unpark
                    // makes this return at once.
                    thread::park();
                } else {
                    thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .context("start the epoch thread")?;
        Ok(Arc::new(Clock { in_flight, ticker: handle.thread().clone() }))
    }

    /// Keeps the clock running until the returned guard is dropped.
    pub fn running(self: &Arc<Clock>) -> Running {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.ticker.unpark();
        }
        Running(self.clone())
    }
}

pub struct Running(Arc<Clock>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
