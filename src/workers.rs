//! Event-loop threads, one per core by default, the way nginx runs a worker per core: each is a
//! single-threaded tokio runtime that serves the client connections dealt to it, and keeps its own
//! upstream connections (pools are indexed by `current()`). Nothing on the request path crosses
//! threads, so there are no cross-thread wake-ups. The main runtime accepts and deals connections
//! and runs the admin API and the key lifecycle, so a rotation or a scrape never delays a request.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, oneshot};

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// This thread's worker index: 1..=n on the workers, 0 on the main runtime and any other thread.
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// How many event loops `workers` asks for: 0 means one per core.
pub fn count(workers: usize) -> usize {
    match workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
}

/// A connection handed to a worker: the socket, the peer, and what serves it there.
pub type Job =
    Box<dyn FnOnce(tokio::net::TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The worker threads, numbered from 1.
pub struct Workers {
    lanes: Vec<WorkerThread>,
}

struct WorkerThread {
    jobs: mpsc::UnboundedSender<(std::net::TcpStream, Job)>,
    finish: oneshot::Sender<()>,
    exited: oneshot::Receiver<()>,
}

impl Workers {
    /// No threads: connections are served on the caller's runtime (the admin port).
    pub fn none() -> Workers {
        Workers { lanes: Vec::new() }
    }

    /// Start `n` threads, each with its own runtime (built here, so a failure is a startup error).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let mut lanes = Vec::with_capacity(n);
        for index in 1..=n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (jobs, mut inbox) = mpsc::unbounded_channel::<(std::net::TcpStream, Job)>();
            let (finish, finished) = oneshot::channel::<()>();
            let (exit_tx, exited) = oneshot::channel();
            std::thread::Builder::new()
                .name(format!("keyproxy-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
                    runtime.block_on(async move {
                        while let Some((socket, job)) = inbox.recv().await {
                            match tokio::net::TcpStream::from_std(socket) {
                                Ok(stream) => {
                                    tokio::spawn(job(stream));
                                }
                                Err(e) => {
                                    tracing::warn!("worker {index}: cannot adopt a connection: {e}")
                                }
                            }
                        }
                        // No more connections: stay up until the server has drained its own.
                        let _ = finished.await;
                    });
                    // Dropping the runtime ends whatever is left (after the shutdown grace).
                    drop(runtime);
                    let _ = exit_tx.send(());
                })?;
            lanes.push(WorkerThread {
                jobs,
                finish,
                exited,
            });
        }
        Ok(Workers { lanes })
    }
}

impl Workers {
    /// Serve `stream` on the next worker in turn (here, on the caller's runtime, without workers).
    pub fn dispatch(&self, turn: usize, stream: tokio::net::TcpStream, job: Job) {
        if self.lanes.is_empty() {
            tokio::spawn(job(stream));
            return;
        }
        let index = turn % self.lanes.len();
        let lane = &self.lanes[index];
        match stream.into_std() {
            Ok(socket) => {
                if lane.jobs.send((socket, job)).is_err() {
                    tracing::warn!("worker {} has stopped; connection dropped", index + 1);
                }
            }
            Err(e) => tracing::warn!("cannot hand a connection to worker {}: {e}", index + 1),
        }
    }

    /// Let the threads end: their runtimes drop whatever is still open. Waits for them.
    pub async fn finish(self) {
        let mut exits = Vec::with_capacity(self.lanes.len());
        for lane in self.lanes {
            drop(lane.jobs);
            let _ = lane.finish.send(());
            exits.push(lane.exited);
        }
        for exited in exits {
            let _ = exited.await;
        }
    }
}
