//! The buffer of a replaying subscription: bounded in messages and in
//! bytes, it makes its reader wait instead of dropping (Kafka keeps the
//! log, so waiting loses nothing).

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// An item of a replaying subscription's buffer, holding its share of the
/// byte bound until the subscription takes it.
#[derive(Debug)]
pub(crate) struct Gated<T> {
    pub(crate) item: T,
    _permit: Option<OwnedSemaphorePermit>,
}

/// The sending side of a replaying subscription's buffer: waits when the
/// buffer is full in messages or in bytes.
#[derive(Debug, Clone)]
pub(crate) struct GatedSender<T> {
    tx: mpsc::Sender<Gated<T>>,
    bytes: Arc<Semaphore>,
    /// The semaphore's size: a larger item waits for all of it.
    max: u32,
}

/// A replaying subscription's buffer of at most `items` messages (at least
/// 1) and `bytes` bytes; a larger item waits for the whole byte bound.
pub(crate) fn gated<T>(items: usize, bytes: usize) -> (GatedSender<T>, mpsc::Receiver<Gated<T>>) {
    let (tx, rx) = mpsc::channel(items.max(1));
    let max = u32::try_from(bytes.min(Semaphore::MAX_PERMITS))
        .unwrap_or(u32::MAX)
        .max(1);
    let bytes = Arc::new(Semaphore::new(max as usize));
    (GatedSender { tx, bytes, max }, rx)
}

impl<T> GatedSender<T> {
    /// Queues `item` (`size` bytes) once it fits; false once the receiver
    /// is gone.
    pub(crate) async fn send(&self, item: T, size: usize) -> bool {
        let want = u32::try_from(size).unwrap_or(u32::MAX).min(self.max);
        let permit = if want == 0 {
            None
        } else {
            match Arc::clone(&self.bytes).acquire_many_owned(want).await {
                Ok(permit) => Some(permit),
                Err(_) => return false,
            }
        };
        self.tx
            .send(Gated {
                item,
                _permit: permit,
            })
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// A replaying subscription's buffer waits (no loss) once its bytes are
    /// taken, and goes on when the subscription takes an item.
    #[tokio::test(flavor = "current_thread")]
    async fn gated_buffer_waits_at_the_byte_bound() {
        let (tx, mut rx) = gated::<u32>(100, 10);
        assert!(tx.send(1, 6).await);
        let second = tx.send(2, 6);
        tokio::pin!(second);
        assert!(
            (&mut second).now_or_never().is_none(),
            "a send past the byte bound did not wait"
        );
        let first = rx.recv().await.expect("first");
        assert_eq!(first.item, 1);
        drop(first);
        assert!(second.await);
        assert_eq!(rx.recv().await.expect("second").item, 2);
        // Larger than the whole bound: waits for all of it, then passes.
        assert!(tx.send(3, 1_000).await);
    }
}
