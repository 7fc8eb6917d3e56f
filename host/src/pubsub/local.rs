//! The broker of a single node: there are no other nodes, so there is
//! nothing to carry and nothing to wait for. Every method returns at once;
//! this is what an app's [`PubSub`](super::PubSub) uses without `[cluster]`,
//! so the in-process path costs one empty virtual call per broadcast.

use super::{BoxFuture, Broker, Ready};
use crate::protocol::Payload;

/// No other nodes.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalBroker;

impl Broker for LocalBroker {
    fn subscribe(&self, _topic: &str) {}

    fn unsubscribe(&self, _topic: &str) {}

    fn ready(&self, _topic: &str) -> Ready {
        Ready::now()
    }

    fn publish(&self, _topic: &str, _event: &str, _payload: &Payload) {}

    fn disconnect<'a>(&'a self, _socket_id: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(std::future::ready(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_single_node_is_always_ready_and_tells_nobody() {
        let broker = LocalBroker;
        broker.subscribe("t");
        broker.ready("t").wait().await;
        broker.publish("t", "e", &Payload::empty());
        assert_eq!(broker.disconnect("users_socket:ada").await, 0);
        broker.unsubscribe("t");
    }
}
