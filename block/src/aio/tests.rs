//! Tests of the AioContext: bottom-half ordering and slices, cross-thread scheduling,
//! the thread pool and the io_uring engine.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::coroutine::co_spawn;
use crate::iov::IoVector;

#[test]
fn bottom_halves_run_in_fifo_order_and_never_inline() {
    let ctx = AioContext::current();
    let log = Rc::new(RefCell::new(Vec::new()));
    for i in 0..5 {
        let log = log.clone();
        ctx.schedule_bh(move || log.borrow_mut().push(i));
    }
    assert!(
        log.borrow().is_empty(),
        "a BH must not run inside schedule_bh"
    );
    ctx.run_until(co_sleep(Duration::from_millis(1)));
    assert_eq!(*log.borrow(), vec![0, 1, 2, 3, 4]);
}

#[test]
fn a_bh_scheduled_by_a_bh_runs_in_a_later_slice() {
    let ctx = AioContext::current();
    let log = Rc::new(RefCell::new(Vec::new()));
    let (l1, l2) = (log.clone(), log.clone());
    let inner = ctx.clone();
    ctx.schedule_bh(move || {
        l1.borrow_mut().push("outer");
        let l3 = l1.clone();
        inner.schedule_bh(move || l3.borrow_mut().push("nested"));
    });
    ctx.schedule_bh(move || l2.borrow_mut().push("second"));
    ctx.run_until(co_sleep(Duration::from_millis(1)));
    assert_eq!(*log.borrow(), vec!["outer", "second", "nested"]);
}

#[test]
fn other_threads_schedule_bhs_that_run_on_the_home_thread() {
    let ctx = AioContext::current();
    let home = std::thread::current().id();
    let ran_on = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let handle = ctx.handle();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (handle, ran_on, done) = (handle.clone(), ran_on.clone(), done.clone());
            std::thread::spawn(move || {
                for _ in 0..100 {
                    let (ran_on, done) = (ran_on.clone(), done.clone());
                    handle.schedule_bh(move || {
                        ran_on.lock().unwrap().push(std::thread::current().id());
                        done.fetch_add(1, Ordering::SeqCst);
                    });
                }
            })
        })
        .collect();
    let waiter = done.clone();
    ctx.run_until(async move {
        while waiter.load(Ordering::SeqCst) < 400 {
            co_sleep(Duration::from_millis(1)).await;
        }
    });
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert!(ran_on.lock().unwrap().iter().all(|&t| t == home));
}

#[test]
fn thread_pool_runs_work_off_thread_and_wakes_the_coroutine_at_home() {
    let ctx = AioContext::current();
    let home = std::thread::current().id();
    let pool = ctx.thread_pool();
    let results = ctx.run_until(async move {
        let futures: Vec<_> = (0..16u64)
            .map(|i| pool.submit(move || (i * 2, std::thread::current().id())))
            .collect();
        let mut out = Vec::new();
        for f in futures {
            out.push(f.await);
        }
        out
    });
    for (i, (value, worker)) in results.into_iter().enumerate() {
        assert_eq!(value, i as u64 * 2);
        assert_ne!(worker, home);
    }
}

#[test]
fn io_uring_reads_and_writes_a_file() {
    use std::os::fd::AsRawFd;
    let ctx = AioContext::current();
    let engine = match ctx.io_uring() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("skipping: io_uring unavailable: {e}");
            return;
        }
    };
    let file = tempfile::tempfile().unwrap();
    let fd = file.as_raw_fd();
    let data = IoVector::from_slice(&[0x5a; 8192]);
    let back = IoVector::alloc(8192);
    let back2 = back.clone();
    let spawner = ctx.clone();
    let n = ctx.run_until(async move {
        // Eight coroutines submit in one loop iteration: one batch reaches the kernel.
        let writes: Vec<_> = (0..8)
            .map(|i| {
                let (engine, part) = (engine.clone(), data.slice(i * 1024, 1024));
                spawner.spawn(async move { engine.pwritev(fd, &part, i as u64 * 1024).await })
            })
            .collect();
        for w in writes {
            assert_eq!(w.await.unwrap(), 1024);
        }
        engine.fdatasync(fd).await.unwrap();
        engine.preadv(fd, &back2, 0).await.unwrap()
    });
    assert_eq!(n, 8192);
    assert!(back.to_vec().iter().all(|&b| b == 0x5a));
}

#[test]
fn co_spawned_coroutines_run_only_when_the_loop_runs() {
    let ctx = AioContext::current();
    let flag = Rc::new(RefCell::new(false));
    let f = flag.clone();
    co_spawn(async move { *f.borrow_mut() = true });
    assert!(!*flag.borrow());
    ctx.run_until(futures_lite::future::yield_now());
    ctx.run_until(co_sleep(Duration::from_millis(1)));
    assert!(*flag.borrow());
}

#[test]
fn an_event_notifier_set_by_another_thread_wakes_the_sleeping_loop() {
    let ctx = AioContext::current();
    let notifier = Arc::new(notifier::EventNotifier::new().unwrap());
    let setter = notifier.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        setter.set();
    });
    let start = std::time::Instant::now();
    ctx.run_until(async move { notifier.wait().await.unwrap() });
    t.join().unwrap();
    assert!(start.elapsed() >= Duration::from_millis(15));
}

#[test]
fn every_set_is_reported_even_if_the_counter_is_never_cleared() {
    // The virtio-blk kick handler relies on this: it waits for readiness only.
    let ctx = AioContext::current();
    let notifier = Rc::new(notifier::EventNotifier::new().unwrap());
    let woke = Rc::new(std::cell::Cell::new(false));
    ctx.run_until(async {
        notifier.set();
        notifier.readable().await.unwrap();
        // Still readable (never cleared): only a new set may end the next wait.
        let (n, w) = (notifier.clone(), woke.clone());
        co_spawn(async move {
            n.readable().await.unwrap();
            w.set(true);
        });
        co_sleep(Duration::from_millis(20)).await;
        assert!(!woke.get(), "a wait ended without a new set");
        notifier.set();
        for _ in 0..2000 {
            if woke.get() {
                break;
            }
            co_sleep(Duration::from_millis(1)).await;
        }
        assert!(woke.get(), "a new set was not reported");
    });
}

#[test]
fn timers_wake_sleepers_in_deadline_order() {
    let ctx = AioContext::current();
    let log = Rc::new(RefCell::new(Vec::new()));
    let tasks: Vec<_> = [30u64, 10, 20]
        .into_iter()
        .map(|ms| {
            let log = log.clone();
            ctx.spawn(async move {
                co_sleep(Duration::from_millis(ms)).await;
                log.borrow_mut().push(ms);
            })
        })
        .collect();
    ctx.run_until(async move {
        for t in tasks {
            t.await;
        }
    });
    assert_eq!(*log.borrow(), vec![10, 20, 30]);
}

/// A job for the pool tests: logs its number, optionally after waiting for a queue.
struct LogJob {
    n: u32,
    log: Rc<RefCell<Vec<u32>>>,
    wait_for: Option<(Rc<crate::coroutine::CoQueue>, Rc<RefCell<bool>>)>,
}

impl crate::coroutine::PoolJob for LogJob {
    async fn run(self) {
        if let Some((queue, go)) = &self.wait_for {
            queue.wait_while(|| !*go.borrow()).await;
        }
        self.log.borrow_mut().push(self.n);
    }
}

#[test]
fn pooled_coroutines_run_jobs_later_and_in_order() {
    let ctx = AioContext::current();
    let pool = crate::coroutine::CoroutinePool::new();
    let log = Rc::new(RefCell::new(Vec::new()));
    for n in 0..3 {
        let log = log.clone();
        pool.submit(LogJob {
            n,
            log,
            wait_for: None,
        });
    }
    assert!(log.borrow().is_empty(), "a job must not run inside submit");
    ctx.run_until(co_sleep(Duration::from_millis(1)));
    assert_eq!(*log.borrow(), vec![0, 1, 2]);
    // The now idle coroutines take the next jobs.
    pool.submit(LogJob {
        n: 3,
        log: log.clone(),
        wait_for: None,
    });
    ctx.run_until(co_sleep(Duration::from_millis(1)));
    assert_eq!(*log.borrow(), vec![0, 1, 2, 3]);
}

#[test]
fn a_waiting_pooled_job_does_not_hold_up_later_ones() {
    let ctx = AioContext::current();
    let pool = crate::coroutine::CoroutinePool::new();
    let log = Rc::new(RefCell::new(Vec::new()));
    let queue = Rc::new(crate::coroutine::CoQueue::new());
    let go = Rc::new(RefCell::new(false));
    pool.submit(LogJob {
        n: 0,
        log: log.clone(),
        wait_for: Some((queue.clone(), go.clone())),
    });
    pool.submit(LogJob {
        n: 1,
        log: log.clone(),
        wait_for: None,
    });
    ctx.run_until(co_sleep(Duration::from_millis(1)));
    assert_eq!(*log.borrow(), vec![1]);
    *go.borrow_mut() = true;
    queue.restart_all();
    ctx.run_until(co_sleep(Duration::from_millis(1)));
    assert_eq!(*log.borrow(), vec![1, 0]);
}

#[test]
fn a_coroutine_woken_from_another_thread_runs_on_the_home_thread() {
    let ctx = AioContext::current();
    let home = std::thread::current().id();
    let (tx, rx) = std::sync::mpsc::channel::<Waker>();
    let t = std::thread::spawn(move || {
        let waker = rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        waker.wake();
    });
    let task = ctx.spawn(async move {
        let mut tx = Some(tx);
        std::future::poll_fn(|cx| match tx.take() {
            Some(tx) => {
                tx.send(cx.waker().clone()).unwrap();
                Poll::Pending
            }
            None => Poll::Ready(()),
        })
        .await;
        std::thread::current().id()
    });
    assert_eq!(ctx.run_until(task), home);
    t.join().unwrap();
}
