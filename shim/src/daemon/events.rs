//! Task events to containerd. Each event is packed into its Any with a fixed
//! type name instead of protobuf reflection, which would build descriptor
//! tables in every shim (hundreds of KB per pod) to look up one name.

use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::Context as _;

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim_sync::{Client, EventsClient};
use containerd_shim::protos::topics::*;
use containerd_shim::protos::ttrpc::context::with_timeout;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::util::{connect, timestamp};
use tracing::{info, warn};

/// An event type with the names containerd knows it by.
pub trait Event: Message {
    const TOPIC: &'static str;
    const TYPE_NAME: &'static str;
}

/// Declares an event type's topic and the name containerd registered it under.
macro_rules! event {
    ($type:ident, $topic:expr) => {
        impl Event for $type {
            const TOPIC: &'static str = $topic;
            const TYPE_NAME: &'static str = concat!("containerd.events.", stringify!($type));
        }
    };
}

event!(TaskCreate, TASK_CREATE_EVENT_TOPIC);
event!(TaskStart, TASK_START_EVENT_TOPIC);
event!(TaskExit, TASK_EXIT_EVENT_TOPIC);
event!(TaskDelete, TASK_DELETE_EVENT_TOPIC);
event!(TaskOOM, TASK_OOM_EVENT_TOPIC);
event!(TaskExecAdded, TASK_EXEC_ADDED_EVENT_TOPIC);
event!(TaskExecStarted, TASK_EXEC_STARTED_EVENT_TOPIC);
event!(TaskPaused, TASK_PAUSED_EVENT_TOPIC);
event!(TaskResumed, TASK_RESUMED_EVENT_TOPIC);

/// Packs a message into an Any under the given type name.
pub fn pack(type_name: &str, message: &impl Message) -> anyhow::Result<Any> {
    Ok(Any { type_url: type_name.to_string(), value: message.write_to_bytes()?, ..Default::default() })
}

/// How long containerd may take to take one event before the connection
/// is dropped and made again.
const FORWARD_DEADLINE: Duration = Duration::from_secs(5);
/// Waits between attempts while containerd is away, growing to the last.
const RETRY_BACKOFF: [u64; 5] = [100, 200, 500, 1000, 2000];

/// Events to containerd, in order and at least once. `publish` only queues:
/// a thread of its own forwards them, so a containerd that stalls or is
/// restarted never holds up an exit, a Wait or a request. That thread
/// reconnects to containerd's ttrpc address (TTRPC_ADDRESS) whenever a
/// forward fails and retries the event until containerd has it.
pub struct Publisher {
    namespace: String,
    queue: Mutex<mpsc::Sender<ForwardRequest>>,
    pending: Arc<Pending>,
}

/// The number of events queued and not yet delivered.
#[derive(Default)]
struct Pending {
    count: Mutex<usize>,
    delivered: Condvar,
}

impl Publisher {
    /// Starts the forwarding thread; it connects when the first event comes.
    pub fn start(namespace: &str) -> anyhow::Result<Self> {
        let address = std::env::var("TTRPC_ADDRESS").map_err(|_| anyhow::anyhow!("TTRPC_ADDRESS is not set"))?;
        let (queue, events) = mpsc::channel();
        let pending = Arc::new(Pending::default());
        let forwarder = Forwarder { address, client: None, pending: pending.clone() };
        std::thread::Builder::new().name("events".into()).spawn(move || forwarder.run(events))?;
        Ok(Publisher { namespace: namespace.to_string(), queue: Mutex::new(queue), pending })
    }

    /// Queues the event, stamped now; a bad event is logged and dropped.
    pub fn publish<E: Event>(&self, event: E) {
        match self.request(&event) {
            Ok(request) => {
                *self.pending.count.lock().unwrap() += 1;
                let _ = self.queue.lock().unwrap().send(request);
            }
            Err(err) => warn!(topic = E::TOPIC, "pack event: {err:#}"),
        }
    }

    /// Waits up to `timeout` for every queued event to reach containerd;
    /// false if some did not.
    pub fn flush(&self, timeout: Duration) -> bool {
        let count = self.pending.count.lock().unwrap();
        let (count, _) = self.pending.delivered.wait_timeout_while(count, timeout, |count| *count > 0).unwrap();
        *count == 0
    }

    fn request<E: Event>(&self, event: &E) -> anyhow::Result<ForwardRequest> {
        let envelope = Envelope {
            timestamp: MessageField::some(timestamp()?),
            namespace: self.namespace.clone(),
            topic: E::TOPIC.to_string(),
            event: MessageField::some(pack(E::TYPE_NAME, event)?),
            ..Default::default()
        };
        Ok(ForwardRequest { envelope: MessageField::some(envelope), ..Default::default() })
    }
}

/// The events thread's side: one connection, made again after any failure.
struct Forwarder {
    address: String,
    client: Option<EventsClient>,
    pending: Arc<Pending>,
}

impl Forwarder {
    fn run(mut self, events: mpsc::Receiver<ForwardRequest>) {
        for request in events {
            self.deliver(&request);
            *self.pending.count.lock().unwrap() -= 1;
            self.pending.delivered.notify_all();
        }
    }

    /// Forwards until containerd has the event, however long it is away.
    fn deliver(&mut self, request: &ForwardRequest) {
        let topic = &request.envelope.topic;
        for attempt in 0usize.. {
            match self.forward(request) {
                Ok(()) if attempt > 0 => return info!(topic, attempt, "event delivered after containerd came back"),
                Ok(()) => return,
                Err(Rejected(err)) => return warn!(topic, "containerd refused the event, dropped: {err}"),
                Err(Failed(err)) => {
                    if attempt == 0 {
                        warn!(topic, "forward event: {err:#}; retrying until containerd takes it");
                    }
                    self.client = None;
                    std::thread::sleep(Duration::from_millis(RETRY_BACKOFF[attempt.min(RETRY_BACKOFF.len() - 1)]));
                }
            }
        }
    }

    fn forward(&mut self, request: &ForwardRequest) -> Result<(), Attempt> {
        if self.client.is_none() {
            let fd = connect(&self.address).with_context(|| format!("connect to {}", self.address)).map_err(Failed)?;
            self.client = Some(EventsClient::new(Client::new(fd).map_err(|err| Failed(err.into()))?));
        }
        let client = self.client.as_ref().expect("connected above");
        match client.forward(with_timeout(FORWARD_DEADLINE.as_nanos() as i64), request) {
            Ok(_) => Ok(()),
            // containerd answered no: trying again would block every later event.
            Err(ttrpc::Error::RpcStatus(status)) if !matches!(status.code(), Code::UNAVAILABLE | Code::DEADLINE_EXCEEDED) => {
                Err(Rejected(status.message().to_string()))
            }
            Err(err) => Err(Failed(err.into())),
        }
    }
}

/// Why a forward did not go through.
enum Attempt {
    /// containerd is away or stalled: connect again and retry.
    Failed(anyhow::Error),
    /// containerd refused the event itself.
    Rejected(String),
}
use Attempt::{Failed, Rejected};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_containerds() {
        assert_eq!(TaskExit::TYPE_NAME, "containerd.events.TaskExit");
        assert_eq!(TaskExecStarted::TOPIC, "/tasks/exec-started");
    }
}
