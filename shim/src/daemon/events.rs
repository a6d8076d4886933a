//! Task events to containerd. Each event is packed into its Any with a fixed
//! type name instead of protobuf reflection, which would build descriptor
//! tables in every shim (hundreds of KB per pod) to look up one name.

use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim_sync::{Client, EventsClient};
use containerd_shim::protos::topics::*;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::util::{connect, timestamp};
use tracing::warn;

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

/// Packs a message into an Any under the given type name.
pub fn pack(type_name: &str, message: &impl Message) -> anyhow::Result<Any> {
    Ok(Any { type_url: type_name.to_string(), value: message.write_to_bytes()?, ..Default::default() })
}

pub struct Publisher {
    client: EventsClient,
    namespace: String,
}

impl Publisher {
    /// Connects to containerd's ttrpc address (TTRPC_ADDRESS, set by containerd).
    pub fn connect(namespace: &str) -> anyhow::Result<Self> {
        let address = std::env::var("TTRPC_ADDRESS")?;
        let client = Client::new(connect(&address)?)?;
        Ok(Publisher { client: EventsClient::new(client), namespace: namespace.to_string() })
    }

    /// Sends the event; a failure is logged, never fatal to the task.
    pub fn publish<E: Event>(&self, event: E) {
        if let Err(err) = self.forward(&event) {
            warn!(topic = E::TOPIC, "publish event: {err:#}");
        }
    }

    fn forward<E: Event>(&self, event: &E) -> anyhow::Result<()> {
        let envelope = Envelope {
            timestamp: MessageField::some(timestamp()?),
            namespace: self.namespace.clone(),
            topic: E::TOPIC.to_string(),
            event: MessageField::some(pack(E::TYPE_NAME, event)?),
            ..Default::default()
        };
        let request = ForwardRequest { envelope: MessageField::some(envelope), ..Default::default() };
        self.client.forward(Context::default(), &request)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_containerds() {
        assert_eq!(TaskExit::TYPE_NAME, "containerd.events.TaskExit");
        assert_eq!(TaskExecStarted::TOPIC, "/tasks/exec-started");
    }
}
