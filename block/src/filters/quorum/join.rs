//! Running one request per child at once and waiting for all of them: QEMU's quorum starts a
//! coroutine for each child and yields until the last one has finished
//! (quorum_co_pwritev, read_quorum_children).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

/// Drives every future until all have finished; their outputs come back in order.
pub async fn join_all<'a, T>(futures: Vec<impl Future<Output = T> + 'a>) -> Vec<T> {
    let mut running: Vec<Option<Pin<Box<dyn Future<Output = T> + 'a>>>> = futures
        .into_iter()
        .map(|f| Some(Box::pin(f) as Pin<Box<dyn Future<Output = T> + 'a>>))
        .collect();
    let mut outputs: Vec<Option<T>> = running.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (slot, output) in running.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, yield_now};

    #[test]
    fn outputs_keep_their_order_whoever_finishes_first() {
        let slow = |n: u32, yields: u32| async move {
            for _ in 0..yields {
                yield_now().await;
            }
            n
        };
        let out = block_on(join_all(vec![slow(1, 3), slow(2, 0), slow(3, 1)]));
        assert_eq!(out, vec![1, 2, 3]);
    }
}
